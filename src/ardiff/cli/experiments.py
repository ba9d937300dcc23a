"""`ardiff represent|analyze`: the paper's representation experiment and analyses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ardiff.cli.common import (
    CommandError,
    nonnegative_int,
    output_dir,
    output_file,
    positive_int,
    read_model_summary,
    represent_data,
    write_json,
)


def cmd_represent(args) -> int:
    read_model_summary(args.model_dir)
    from ardiff.experiments.represent import RepresentSettings, run_represent

    settings = RepresentSettings(mode=args.mode, data=args.data, num_train=args.num_train, num_test=args.num_test,
                                 stream=args.stream, epochs=args.epochs, batch_size=args.batch_size,
                                 from_scratch=args.from_scratch, seed=args.seed)
    result = run_represent(args.model_dir, settings, device=args.device, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['mode']} ({result['init']}, {result['stream']} stream) on {result['data']}: top-1 "
              f"{100 * result['top1']:.2f}% over {result['num_test']} test images, {result['num_train']} for "
              f"training ({result['seconds']:.0f} s)")
    if args.out:
        write_json(args.out, result)
    return 0


def _ar_lengths(text: str) -> tuple[int, ...]:
    try:
        lengths = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated whole numbers, e.g. 1,2,4") from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every length must be >= 1")
    return lengths


def cmd_analyze(args) -> int:
    from ardiff.experiments import analyses

    kwargs = {}
    if args.ar_lengths:
        kwargs["ar_lengths"] = args.ar_lengths
    if args.which == "block-size":
        if args.steps is not None:
            kwargs["steps"] = args.steps
        if args.set:
            kwargs["overrides"] = list(args.set)
    elif args.steps is not None or args.set:
        raise CommandError("--steps and --set apply to block-size only")
    if args.which == "steps":
        if not (args.teacher and args.student):
            raise CommandError("steps needs --teacher and --student (e.g. --teacher fmnist --student fmnist-fast)")
        kwargs.update(teacher=args.teacher, student=args.student, num=args.num, seed=args.seed)
    elif args.teacher or args.student:
        raise CommandError("--teacher and --student apply to steps only")
    analyses.main(args.which, Path(args.out), quick=args.quick, **kwargs)
    return 0


def add_parser(sub) -> None:
    rep = sub.add_parser("represent", help="classify images from a model's features (paper Table 4, any scale)",
                         description="The representation experiment: top-1 classification from the last-layer "
                                     "features of clean images (the clean stream; a single-block DiT: its "
                                     "denoising stream at t = 0, null class). --mode linear: frozen network, "
                                     "logistic-regression probe. --mode finetune: MAE's fine-tuning recipe scaled "
                                     "down (layer-wise lr decay, label smoothing, warm-up + cosine; no "
                                     "mixup/cutmix). --from-scratch: the same network re-initialised.")
    rep.add_argument("model_dir", help="model directory or shipped model name")
    rep.add_argument("--data", required=True, type=represent_data,
                     help="fmnist, or an image folder of class subfolders (train/ and val/ used when present)")
    rep.add_argument("--mode", choices=("linear", "finetune"), required=True)
    rep.add_argument("--num-train", type=nonnegative_int, default=5000, help="class-balanced training images "
                                                                             "(0: all)")
    rep.add_argument("--num-test", type=nonnegative_int, default=2000, help="class-balanced test images (0: all)")
    rep.add_argument("--stream", choices=("auto", "clean", "denoiser"), default="auto",
                     help="features: clean stream, or denoising stream at t = 0 (auto: clean for multi-block models)")
    rep.add_argument("--epochs", type=positive_int, default=3, help="finetune: epochs over the training images")
    rep.add_argument("--batch-size", type=positive_int, default=64, help="finetune: batch size")
    rep.add_argument("--from-scratch", action="store_true", help="re-initialise the network first (the baseline)")
    rep.add_argument("--seed", type=nonnegative_int, default=0)
    rep.add_argument("--json", action="store_true", help="print the result as JSON")
    rep.add_argument("--out", type=output_file(".json"), help="also write the result as JSON")
    rep.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    rep.set_defaults(func=cmd_represent)

    ana = sub.add_parser("analyze", help="the paper's analyses at CPU scale: block-size trade-off, inference time",
                         description="block-size: train the fmnist recipe once per autoregressive length with the "
                                     "same budget and plot FID-FMNIST (paper Fig. 7; ~40 min on 2 cores).\n"
                                     "inference-time: sampling time vs autoregressive length, with and without the "
                                     "KV cache, next to the FLOP model (paper Fig. 8; a few minutes).\n"
                                     "steps: quality against steps, a few-step student at 1, 2 and 4 steps beside "
                                     "its teacher's own solver at 4, 8 and 25 (what distillation buys).")
    ana.add_argument("which", choices=("block-size", "inference-time", "steps"))
    ana.add_argument("--out", type=output_dir, default="out/analysis", help="directory for the JSON and PNG")
    ana.add_argument("--ar-lengths", type=_ar_lengths,
                     help="comma-separated numbers of blocks (default: 1,2,4,8,16,64 / 1..64)")
    ana.add_argument("--steps", type=positive_int, help="block-size: training steps per run (default: 800)")
    ana.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="block-size: extra run-config override for every run (e.g. train.compile=true)")
    ana.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline end to end")
    ana.add_argument("--teacher", help="steps: the teacher (sampled with its own solver at 4, 8 and 25 steps)")
    ana.add_argument("--student", help="steps: its few-step student (sampled at 1, 2 and 4 steps)")
    ana.add_argument("--num", type=positive_int, default=1000, help="steps: samples per point (default: 1000)")
    ana.add_argument("--seed", type=nonnegative_int, default=0, help="steps: first seed (default: 0)")
    ana.set_defaults(func=cmd_analyze)
