"""`ardiff serve`: the local page (Images, Stream, Story views) on 127.0.0.1."""

from __future__ import annotations

import argparse

from ardiff.cli.common import CommandError, positive_int


def port_number(text: str) -> int:
    port = positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1..65535)")
    return port

DESCRIPTION = """\
Start a local page with three views: Images (a class grid from an image model, with its
recorded steps and guidance), Stream (a video streamed block by block under a prompt schedule
you can edit while it runs, with the first-frame latency, frames per second, optional ACDC
correction and the clip as MP4) and Story (a story-world story by story-arm alone and with
ACDC, the memory's prompts and the story reader's per-frame scores).

The page works offline: its styles and script are in one file served by this command. It loads
the shipped models and model directories under the --models directories only; every request
is bounded (images, steps, frames, story length) and one generation runs at a time, the others
waiting in a queue the page shows. It binds to 127.0.0.1 unless told otherwise. See
docs/serve.md."""


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from ardiff.serve.app import create_app
    except ImportError as e:
        raise CommandError(f"ardiff serve needs FastAPI and uvicorn ({e.name} is missing): pip install "
                           f"'ardiff[serve]' (make setup installs them)") from None
    from ardiff.serve.studio import ModelAccess, RequestError, ServeLimits, Studio
    from ardiff.utils.devices import default_device

    _check_port(args.host, args.port)
    try:
        access = ModelAccess(args.models or ())
    except ValueError as e:
        raise CommandError(str(e)) from None
    limits = ServeLimits(max_images=args.max_images, max_steps=args.max_steps, max_frames=args.max_frames,
                         max_waiting=args.max_waiting)
    studio = Studio(access, limits, device=str(default_device(args.device)))
    try:
        studio.preload(*args.preload)
    except (RequestError, FileNotFoundError, ValueError) as e:
        studio.close()
        raise CommandError(f"--preload: {e}") from None
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"ardiff serve: http://{shown}:{args.port}/ (Ctrl-C stops); models: shipped"
          + "".join(f", {root}" for root in access.roots) + f"; device {studio.device}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: bound to {args.host}: anyone who can reach this machine can use the page", flush=True)
    uvicorn.run(create_app(studio), host=args.host, port=args.port, log_level="warning")
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail in one line, before any model loads, when the address cannot be bound."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CommandError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise CommandError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); give another "
                               f"--port") from None


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="a local page: draw class grids, stream video with live prompts, tell stories "
                                     "with and without ACDC", description=DESCRIPTION)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (another than 127.0.0.1 exposes the page)")
    p.add_argument("--port", type=port_number, default=7860, help="port to listen on (1..65535)")
    p.add_argument("--models", nargs="+", metavar="DIR",
                   help="directories whose model directories (up to 3 levels down) the page may load, besides the "
                        "shipped models")
    p.add_argument("--preload", nargs="*", metavar="MODEL", default=["fmnist-fast", "moving-fmnist"],
                   help="models to load before the first request, so a first frame is not a model load")
    p.add_argument("--max-images", type=positive_int, default=64, help="images in one grid")
    p.add_argument("--max-steps", type=positive_int, default=100, help="solver steps per block")
    p.add_argument("--max-frames", type=positive_int, default=512, help="frames in one stream")
    p.add_argument("--max-waiting", type=positive_int, default=8, help="requests waiting in the queue")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=cmd_serve)
