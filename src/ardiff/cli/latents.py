"""`ardiff encode-latents`: encode a dataset once with a local VAE into a latent cache."""

from __future__ import annotations

from ardiff.cli.common import CommandError, output_dir, positive_int


def cmd_encode_latents(args) -> int:
    from ardiff.data.latents import encode_latent_cache
    from ardiff.train import load_run_config
    from ardiff.train.datasets import build_dataset
    from ardiff.utils.devices import default_device

    run = load_run_config(args.config, list(args.set or []))
    if run.data.name == "latents":
        raise CommandError("the config's data section already names a latent cache; point it at the source "
                           "images/videos, e.g. --set data.name=image_folder --set data.root=DIR")
    dataset = build_dataset(run.data, None)
    meta = encode_latent_cache(dataset, args.vae, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                               device=default_device(args.device), moments=args.moments)
    print(f"wrote {meta['count']} latents of shape {tuple(meta['latent_shape'])} to {args.out}; train on them "
          f"with --set data.name=latents --set data.root={args.out} (model.in_channels/input_size to match)")
    return 0


def add_parser(sub) -> None:
    enc = sub.add_parser("encode-latents", help="encode a dataset once with a local VAE into a latent cache",
                         description="Encode the dataset a run config describes with a local diffusers "
                                     "AutoencoderKL into safetensors shards (posterior means, and with --moments "
                                     "the standard deviations) plus meta.json.")
    enc.add_argument("config", help="run config whose data section describes the source images/videos")
    enc.add_argument("--vae", required=True, help="local diffusers AutoencoderKL directory")
    enc.add_argument("--out", required=True, type=output_dir, help="cache directory to create")
    enc.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    enc.add_argument("--shard-size", type=positive_int, default=1024, help="items per shard")
    enc.add_argument("--batch-size", type=positive_int, default=32, help="items per VAE call")
    enc.add_argument("--moments", action="store_true",
                     help="also store the posterior standard deviations: training then draws a fresh posterior "
                          "sample per item and step (the paper's recipe) instead of reusing the mean")
    enc.add_argument("--device", help="cpu, cuda, ...")
    enc.set_defaults(func=cmd_encode_latents)
