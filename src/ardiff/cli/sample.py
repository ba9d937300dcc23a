"""`ardiff sample`: sample a model to a PNG grid, a GIF/MP4 or a PNG filmstrip."""

from __future__ import annotations

import argparse
from pathlib import Path

from ardiff.cli.common import (
    CommandError,
    add_guidance_interval_flag,
    add_guide_model_flags,
    add_sampling_flags,
    check_guide_flags,
    checked_guidance_interval,
    load_pipeline,
    nonnegative_int,
    output_file,
    positive_int,
    read_model_summary,
)


def parse_classes(text: str | None, num_classes: int) -> list[int] | None:
    if text is None:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise CommandError(f"--classes must be comma-separated class ids, got {text!r}") from None
    if not classes:
        raise CommandError(f"--classes {text!r} names no class; give ids such as 0,7")
    if num_classes == 0:
        raise CommandError("--classes: this model is not class-conditional; drop the flag")
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise CommandError(f"--classes {bad} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return classes


def class_names(config: dict) -> list[str]:
    data = (config.get("_data") or {}).get("name")
    if data in ("fashion_mnist", "moving_fashion_mnist") and config.get("num_classes") == 10:
        from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES

        return list(FASHION_MNIST_CLASSES)
    return [f"class {k}" for k in range(config.get("num_classes", 0))]


def cmd_sample(args) -> int:
    directory, config = read_model_summary(args.model_dir)
    is_video = len(config.get("input_size", ())) == 3
    out = Path(args.out or ("samples.gif" if is_video else "samples.png"))
    if not is_video and out.suffix.lower() != ".png":
        raise CommandError(f"--out {out}: this model makes images; give a .png file")
    classes = parse_classes(args.classes, config.get("num_classes", 0))
    checked_guidance_interval(args)
    check_guide_flags(args)

    import torch

    from ardiff.generate.pipeline import class_balanced_labels
    from ardiff.utils.media import save_media

    pipe = load_pipeline(args, str(directory))
    cfg = pipe.config
    if classes is not None:
        labels = torch.tensor([c for c in classes for _ in range(args.num)])
    else:
        labels = class_balanced_labels(args.num, cfg.num_classes)
    n = len(labels) if labels is not None else args.num
    samples = pipe(labels, seeds=range(args.seed, args.seed + n), use_cache=not args.no_cache, progress=True)
    if not pipe.decodes:
        samples = samples[:, :3].clamp(-4, 4) / 4  # raw latents, squashed into the image range
    names = class_names(config)
    captions = [names[int(k)] for k in labels] if labels is not None and args.labels else None
    scale = args.scale or max(1, 128 // max(cfg.input_size[-2:]))
    nrow = args.num if classes is not None else None  # one row per class
    path = save_media(samples, out, scale=scale, captions=captions, nrow=nrow)
    print(f"wrote {n} {'videos' if cfg.is_video else 'images'} to {path} (seeds {args.seed}..{args.seed + n - 1}, "
          f"{pipe.describe()})")
    return 0


def add_parser(sub) -> None:
    samp = sub.add_parser("sample", help="sample a model to a PNG grid, a GIF/MP4 or a PNG filmstrip",
                          description="Sample a model (a shipped name or a model directory). Images go to a PNG "
                                      "grid; videos to a GIF or MP4 grid, or with --out FILE.png to a filmstrip "
                                      "(one clip per row). Class-conditional samples are captioned with their class.")
    samp.add_argument("model_dir", help="model directory (config.json + model.safetensors) or a shipped model name")
    samp.add_argument("--classes", help="comma-separated class ids; --num samples of each, one row per class")
    samp.add_argument("--num", type=positive_int, default=8, help="samples (per class when --classes is given)")
    add_sampling_flags(samp)
    add_guidance_interval_flag(samp)
    add_guide_model_flags(samp)
    samp.add_argument("--seed", type=nonnegative_int, default=0, help="sample i uses seed + i")
    samp.add_argument("--out", type=output_file(".png", ".gif", ".mp4"),
                      help="output file: .png for images; .gif, .mp4 or .png (filmstrip) for videos (default: "
                           "samples.png / samples.gif)")
    samp.add_argument("--scale", type=positive_int, help="enlarge every sample this many times (default: to about "
                                                        "128 px)")
    samp.add_argument("--labels", action=argparse.BooleanOptionalAction, default=True,
                      help="caption each sample with its class")
    samp.add_argument("--no-cache", action="store_true", help="recompute the context every step (reference path)")
    samp.add_argument("--vae", help="local diffusers AutoencoderKL directory (default: the one recorded by training)")
    samp.add_argument("--no-decode", action="store_true", help="latent models: save the first 3 latent channels")
    samp.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    samp.set_defaults(func=cmd_sample)
