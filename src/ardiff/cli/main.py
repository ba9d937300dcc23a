"""`ardiff` command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

# Sampler names (ardiff.diffusion.SAMPLERS), listed here so that `--help` does not import torch.
SAMPLER_CHOICES = ("dpmsolver++", "sde-dpmsolver++", "ddim", "ddpm")


def _add_clip_flag(parser) -> None:
    parser.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                        help="clip each step's predicted clean sample to [-1, 1] (pixel-space models; default: "
                             "recorded with the model, else off)")


def cmd_demo(args) -> int:
    from ardiff.experiments.demo import run_demo

    path = run_demo(Path(args.out), num_eval=args.num_eval, num_eval_videos=args.num_eval_videos, steps=args.steps,
                    cfg_scale=args.cfg, video_cfg_scale=args.video_cfg, seed=args.seed, sampler=args.sampler,
                    clip_denoised=args.clip_denoised)
    print(f"report: {path}")
    return 0


def cmd_train(args) -> int:
    from ardiff.train import Trainer, load_run_config

    overrides = list(args.set or [])
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    run = load_run_config(args.config, overrides)
    trainer = Trainer(run, resume=args.resume, device=args.device, progress=not args.no_progress)
    last = trainer.fit(max_steps=args.max_steps)
    if trainer.is_main:
        done = trainer.step == run.train.steps
        print(f"{'finished' if done else 'stopped'} at step {trainer.step}: loss {last.get('loss', float('nan')):.4f}; "
              f"checkpoints in {trainer.ckpt_root}" + (f"; model in {trainer.out / 'model'}" if done else ""))
    return 0


def _parse_classes(text: str | None, num_classes: int) -> list[int] | None:
    if text is None:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise SystemExit(f"--classes must be comma-separated integers, got {text!r}") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise SystemExit(f"--classes {bad} out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return classes


def cmd_sample(args) -> int:
    import torch

    from ardiff import ACDiT, SamplingSettings, make_generators, sample
    from ardiff.data.latents import VAERecord
    from ardiff.utils.media import save_media

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ACDiT.from_pretrained(args.model_dir, device=device)
    cfg = model.config
    classes = _parse_classes(args.classes, cfg.num_classes)
    if classes is not None:
        labels = torch.tensor([c for c in classes for _ in range(args.num)])
    elif cfg.num_classes:
        labels = torch.arange(args.num) % cfg.num_classes
    else:
        labels = None
    n = len(labels) if labels is not None else args.num
    settings = SamplingSettings.recorded(args.model_dir).but(cfg_scale=args.cfg, num_steps=args.steps,
                                                             sampler=args.sampler, clip_denoised=args.clip_denoised)
    if labels is None:
        settings = settings.but(cfg_scale=1.0)
    vae_record = VAERecord.recorded(args.model_dir)
    if args.vae:
        vae_record = (dataclasses.replace(vae_record, path=args.vae) if vae_record
                      else VAERecord(args.vae, scaling_factor=1.0))
    if vae_record and settings.clip_denoised:
        raise SystemExit("--clip-denoised clips to the pixel range [-1, 1]; this model generates VAE latents: "
                         "drop the flag (or pass --no-clip-denoised)")
    vae = None
    if vae_record and not args.no_decode:
        try:
            vae = vae_record.load(device)
        except FileNotFoundError as e:
            raise SystemExit(f"{e}\nThis model generates VAE latents: pass --vae DIR, or --no-decode") from None
    out = sample(model, labels, **settings.sample_kwargs(), use_cache=not args.no_cache,
                 generator=make_generators(range(args.seed, args.seed + n), device), batch_size=n, progress=True)
    if vae is not None:
        with torch.no_grad():
            out = vae_record.decode(vae, out)
    elif vae_record:
        out = out[:, :3].clamp(-4, 4) / 4  # raw latents, squashed into the image range
    stem = Path(args.out)
    path = save_media(out.cpu(), stem.with_suffix("") if stem.suffix else stem,
                      video_format=args.format or (stem.suffix.lstrip(".") if stem.suffix in (".gif", ".mp4")
                                                   else "gif"))
    print(f"wrote {n} {'videos' if cfg.is_video else 'images'} to {path}")
    return 0


def cmd_convert_official(args) -> int:
    from ardiff.models.official import convert_official

    out = convert_official(args.checkpoint, args.out_dir, allow_pickle=args.allow_pickle, use_ema=args.ema)
    print(f"wrote {out} (config.json, model.safetensors, official_args.json)")
    return 0


def cmd_encode_latents(args) -> int:
    from ardiff.data.latents import encode_latent_cache
    from ardiff.train import load_run_config
    from ardiff.train.datasets import build_dataset

    run = load_run_config(args.config, list(args.set or []))
    if run.data.name == "latents":
        raise SystemExit("the config's data section already names a latent cache; point it at the source "
                         "images/videos, e.g. --set data.name=image_folder --set data.root=DIR")
    dataset = build_dataset(run.data, None)
    meta = encode_latent_cache(dataset, args.vae, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                               device=args.device or "cpu")
    print(f"wrote {meta['count']} latents of shape {tuple(meta['latent_shape'])} to {args.out}; train on them "
          f"with --set data.name=latents --set data.root={args.out} (model.in_channels/input_size to match)")
    return 0


def cmd_eval(args) -> int:
    import torch

    from ardiff import ACDiT, SamplingSettings
    from ardiff.eval.evaluate import evaluate
    from ardiff.models.checkpoint import load_extras

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ACDiT.from_pretrained(args.model_dir, device=device)
    s = SamplingSettings.recorded(args.model_dir).but(cfg_scale=args.cfg, num_steps=args.steps, sampler=args.sampler,
                                                      clip_denoised=args.clip_denoised)
    result = evaluate(model, num=args.num, cfg_scale=s.cfg_scale, num_steps=s.num_steps, sampler=s.sampler,
                      clip_denoised=s.clip_denoised,
                      seed=args.seed, classifier_path=args.classifier, progress=True,
                      inception_weights=args.inception_weights, i3d_path=args.i3d,
                      data=load_extras(args.model_dir).get("data"))
    for key, value in result.items():
        if isinstance(value, list):
            value = " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0


def cmd_analyze(args) -> int:
    from ardiff.experiments import analyses

    kwargs = {}
    if args.which == "block-size":
        if args.steps is not None:
            kwargs["steps"] = args.steps
        if args.ar_lengths:
            kwargs["ar_lengths"] = tuple(int(t) for t in args.ar_lengths.split(","))
        if args.set:
            kwargs["overrides"] = list(args.set)
    elif args.ar_lengths:
        kwargs["ar_lengths"] = tuple(int(t) for t in args.ar_lengths.split(","))
    analyses.main(args.which, Path(args.out), quick=args.quick, **kwargs)
    return 0


def cmd_bench(args) -> int:
    from ardiff.experiments import speed_bench

    result = speed_bench.main(as_json=args.json, quick=args.quick)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ardiff", description="Autoregressive diffusion on images and video.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: sample the shipped models, score them, write a report")
    demo.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    demo.add_argument("--num-eval", type=int, default=300, help="images scored against the test split")
    demo.add_argument("--steps", type=int, help="denoising steps per block (default: recorded with each model)")
    demo.add_argument("--sampler", choices=SAMPLER_CHOICES, help="sampler for both models (default: recorded with "
                                                                  "each model, as tuned)")
    _add_clip_flag(demo)
    demo.add_argument("--num-eval-videos", type=int, default=40, help="clips scored against test clips")
    demo.add_argument("--cfg", type=float, help="image guidance scale (default: the value tuned for the model)")
    demo.add_argument("--video-cfg", type=float, help="video guidance scale (default: the value tuned for the model)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train an ACDiT from a run config (works under torchrun)",
                           description="Train from a YAML run config (a path or a name in configs/, e.g. fmnist). "
                                       "Multi-GPU: torchrun --nproc_per_node N -m ardiff.cli train CONFIG.")
    train.add_argument("config", help="YAML run config path or built-in name (fmnist, moving-fmnist, "
                                      "imagenet256-B, ...)")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint")
    train.add_argument("--out-dir", help="shortcut for --set train.out_dir=DIR")
    train.add_argument("--max-steps", type=int, help="stop after this many steps of this invocation")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=cmd_train)

    samp = sub.add_parser("sample", help="sample from a model directory to a PNG grid / GIF / MP4")
    samp.add_argument("model_dir", help="directory with config.json and model.safetensors")
    samp.add_argument("--classes", help="comma-separated class ids; --num samples of each")
    samp.add_argument("--num", type=int, default=8, help="samples (per class when --classes is given)")
    samp.add_argument("--cfg", type=float, help="classifier-free guidance scale (default: the value recorded "
                                                "with the model, else 1.5)")
    samp.add_argument("--steps", type=int, help="denoising steps per block (default: recorded with the model, else 25)")
    samp.add_argument("--sampler", choices=SAMPLER_CHOICES, help="default: recorded with the model, else dpmsolver++ "
                                                                  "(the deterministic ODE solver)")
    _add_clip_flag(samp)
    samp.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    samp.add_argument("--out", default="samples", help="output path (.png for images, .gif/.mp4 for videos)")
    samp.add_argument("--format", choices=("gif", "mp4"), help="video format (default from --out, else gif)")
    samp.add_argument("--no-cache", action="store_true", help="recompute the context every step (reference path)")
    samp.add_argument("--vae", help="local diffusers AutoencoderKL directory (default: the one recorded by training)")
    samp.add_argument("--no-decode", action="store_true", help="latent models: save the first 3 latent channels")
    samp.add_argument("--device")
    samp.set_defaults(func=cmd_sample)

    conv = sub.add_parser("convert-official", help="convert a released ACDiT checkpoint to an ardiff model dir")
    conv.add_argument("checkpoint", help="ACDiT-{XL,H}-{img,vid}.pt")
    conv.add_argument("out_dir")
    conv.add_argument("--allow-pickle", action="store_true",
                      help="required: the release is a pickle; it is loaded with weights_only=True and an allow-list")
    conv.add_argument("--ema", action="store_true", help="take the EMA weights when the checkpoint has them")
    conv.set_defaults(func=cmd_convert_official)

    ev = sub.add_parser("eval", help="sample and score a model (FID, KID, precision/recall, IS, accuracy, FVD)",
                        description="Offline metrics with the project's Fashion-MNIST classifier against the test "
                                    "split (images) or Moving Fashion-MNIST test clips (videos). FID-FMNIST is "
                                    "comparable only to other FID-FMNIST numbers, not to Inception FID.")
    ev.add_argument("model_dir")
    ev.add_argument("--num", type=int, default=1000, help="generated samples (class-balanced)")
    ev.add_argument("--cfg", type=float, help="guidance scale (default: the value recorded with the model, else 1.5)")
    ev.add_argument("--steps", type=int, help="denoising steps per block (default: recorded with the model, else 25)")
    ev.add_argument("--sampler", choices=SAMPLER_CHOICES, help="default: recorded with the model, else dpmsolver++")
    _add_clip_flag(ev)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--classifier", help="feature network weights (default: the shipped Fashion-MNIST classifier)")
    ev.add_argument("--inception-weights", help="also score with Inception-V3: torch-fidelity's local weight file "
                                                "pt_inception-2015-12-05-6726825d.pth (FID/KID/IS comparable to "
                                                "papers)")
    ev.add_argument("--i3d", help="videos: also compute FVD with the TorchScript i3d_torchscript.pt at this local path")
    ev.add_argument("--out", help="write the metrics as JSON")
    ev.add_argument("--device")
    ev.set_defaults(func=cmd_eval)

    ana = sub.add_parser("analyze", help="the paper's analyses at CPU scale: block-size trade-off, inference time",
                         description="block-size: train the fmnist recipe once per autoregressive length with the "
                                     "same budget and plot FID-FMNIST (paper Fig. 7; ~40 min on 2 cores). "
                                     "inference-time: sampling time vs autoregressive length, with and without the "
                                     "KV cache, next to the FLOP model (paper Fig. 8; a few minutes).")
    ana.add_argument("which", choices=("block-size", "inference-time"))
    ana.add_argument("--out", default="out/analysis", help="directory for the JSON and PNG")
    ana.add_argument("--ar-lengths", help="comma-separated numbers of blocks (default: 1,2,4,8,16,64 / 1..64)")
    ana.add_argument("--steps", type=int, help="block-size: training steps per run (default 800)")
    ana.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="block-size: extra run-config override for every run (e.g. train.compile=true)")
    ana.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline end to end")
    ana.set_defaults(func=cmd_analyze)

    from ardiff.cli.acdc import add_parser as add_acdc_parser

    add_acdc_parser(sub)
    from ardiff.cli.world import add_parser as add_world_parser

    add_world_parser(sub)

    enc = sub.add_parser("encode-latents", help="encode a dataset once with a local VAE into a latent cache")
    enc.add_argument("config", help="run config whose data section describes the source images/videos")
    enc.add_argument("--vae", required=True, help="local diffusers AutoencoderKL directory")
    enc.add_argument("--out", required=True, help="cache directory to create")
    enc.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    enc.add_argument("--shard-size", type=int, default=1024)
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument("--device")
    enc.set_defaults(func=cmd_encode_latents)

    bench = sub.add_parser("bench", help="training/sampling speed against this machine's matmul peak")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and block counts")
    bench.add_argument("--out", help="also write the JSON results to this file")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
