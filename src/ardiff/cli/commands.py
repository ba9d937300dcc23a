"""`ardiff` command line: argparse only; each command imports the library when it runs.

Expected failures (bad arguments, missing or corrupt files, invalid configs, refused
pickles) end in one line, ``ardiff <command>: error: ...``, and exit status 2; ``--debug``
(or ``ARDIFF_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ardiff.cli.common import (
    SAMPLER_CHOICES,
    CommandError,
    Parser,
    add_guidance_interval_flag,
    add_guide_model_flags,
    add_sampling_flags,
    check_guide_flags,
    check_history_scale,
    checked_guidance_interval,
    eval_source,
    existing_dir,
    existing_file,
    feature_spec,
    guidance_scale,
    leaf_parsers,
    load_guide_model,
    nonnegative_int,
    output_dir,
    output_file,
    positive_int,
    read_model_summary,
    reference_spec,
    represent_data,
    run_command,
)

__all__ = ["SAMPLER_CHOICES", "build_parser", "main"]


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
    if args.resume and trainer.step >= run.train.steps:
        raise CommandError(f"the run in {trainer.out} already finished at step {trainer.step} (model in "
                           f"{trainer.out / 'model'}); nothing was changed. To train on, raise the step count: "
                           f"--set train.steps=N --resume with N > {trainer.step}")
    last = trainer.fit(max_steps=args.max_steps)
    if trainer.is_main:
        done = trainer.step == run.train.steps
        loss = f"loss {last['loss']:.4f}" if "loss" in last else "no step logged"
        print(f"{'finished' if done else 'stopped'} at step {trainer.step}: {loss}; "
              f"checkpoints in {trainer.ckpt_root}" + (f"; model in {trainer.out / 'model'}" if done else ""))
    return 0


# ---------------------------------------------------------------------------
#                                  sample
# ---------------------------------------------------------------------------
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
    interval = checked_guidance_interval(args)
    check_guide_flags(args)

    import torch

    from ardiff import ACDiT, SamplingSettings, make_generators, sample
    from ardiff.data.latents import VAERecord
    from ardiff.generate.settings import describe_interval
    from ardiff.utils.media import save_media

    settings = SamplingSettings.recorded(directory).but(cfg_scale=args.cfg, num_steps=args.steps,
                                                        sampler=args.sampler, clip_denoised=args.clip_denoised,
                                                        history_scale=args.history_scale, guidance_interval=interval)
    check_history_scale(settings.history_scale, config, args.model_dir)
    vae_record = VAERecord.recorded(directory)
    if args.vae:
        vae_record = VAERecord(args.vae, *(vae_record.scaling_factor, vae_record.shift_factor) if vae_record
                               else (1.0,))
    if vae_record and settings.clip_denoised:
        raise CommandError("--clip-denoised clips to the pixel range [-1, 1]; this model generates VAE latents: "
                           "drop the flag (or pass --no-clip-denoised)")
    vae = None
    if vae_record and not args.no_decode:
        try:
            vae = vae_record.load(args.device or "cpu")
        except FileNotFoundError as e:
            raise CommandError(f"{e}; this model generates VAE latents: pass --vae DIR, or --no-decode") from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ACDiT.from_pretrained(directory, device=device)
    cfg = model.config
    if classes is not None:
        labels = torch.tensor([c for c in classes for _ in range(args.num)])
    elif cfg.num_classes:
        labels = torch.arange(args.num) % cfg.num_classes
    else:
        labels = None
        settings = settings.but(cfg_scale=1.0)
    guide, guide_scale = load_guide_model(args, model)
    n = len(labels) if labels is not None else args.num
    samples = sample(model, labels, **settings.sample_kwargs(), guide_model=guide, guide_scale=guide_scale,
                     use_cache=not args.no_cache,
                     generator=make_generators(range(args.seed, args.seed + n), device), batch_size=n, progress=True)
    if vae is not None:
        with torch.no_grad():
            samples = vae_record.decode(vae.to(device), samples)
    elif vae_record:
        samples = samples[:, :3].clamp(-4, 4) / 4  # raw latents, squashed into the image range
    names = class_names(config)
    captions = [names[int(k)] for k in labels] if labels is not None and args.labels else None
    scale = args.scale or max(1, 128 // max(cfg.input_size[-2:]))
    nrow = args.num if classes is not None else None  # one row per class
    path = save_media(samples.cpu(), out, scale=scale, captions=captions, nrow=nrow)
    print(f"wrote {n} {'videos' if cfg.is_video else 'images'} to {path} (seeds {args.seed}..{args.seed + n - 1}, "
          f"{settings.num_steps} {settings.sampler} steps per block, CFG {settings.cfg_scale:g}"
          f"{describe_interval(settings.guidance_interval)}"
          f"{f', autoguided by {args.guide_model} at {guide_scale:g}' if guide is not None else ''}"
          f"{f', history guidance {settings.history_scale:g}' if settings.history_scale != 1 else ''})")
    return 0


def cmd_convert_official(args) -> int:
    from ardiff.models.official import convert_official

    out = convert_official(args.checkpoint, args.out_dir, allow_pickle=args.allow_pickle, use_ema=args.ema)
    print(f"wrote {out} (config.json, model.safetensors, official_args.json)")
    return 0


def cmd_average(args) -> int:
    from ardiff.models import ACDiT
    from ardiff.models.checkpoint import average_pretrained
    from ardiff.models.resolve import resolve_model_dir

    out = average_pretrained(ACDiT, [resolve_model_dir(m) for m in args.models], args.out)
    print(f"wrote {out}: the average of {len(args.models)} models' weights")
    return 0


def cmd_export(args) -> int:
    from ardiff.models.checkpoint import load_extras
    from ardiff.train.export import export_checkpoint

    out = export_checkpoint(args.source, args.out, weights=args.weights, step=args.step, dtype=args.dtype)
    print(f"wrote {out}: the {'EMA' if args.weights == 'ema' else 'raw'} weights of "
          f"{load_extras(out)['exported_from']['checkpoint']} as {args.dtype}")
    return 0


def cmd_encode_latents(args) -> int:
    from ardiff.data.latents import encode_latent_cache
    from ardiff.train import load_run_config
    from ardiff.train.datasets import build_dataset

    run = load_run_config(args.config, list(args.set or []))
    if run.data.name == "latents":
        raise CommandError("the config's data section already names a latent cache; point it at the source "
                           "images/videos, e.g. --set data.name=image_folder --set data.root=DIR")
    dataset = build_dataset(run.data, None)
    meta = encode_latent_cache(dataset, args.vae, args.out, shard_size=args.shard_size, batch_size=args.batch_size,
                               device=args.device or "cpu", moments=args.moments)
    print(f"wrote {meta['count']} latents of shape {tuple(meta['latent_shape'])} to {args.out}; train on them "
          f"with --set data.name=latents --set data.root={args.out} (model.in_channels/input_size to match)")
    return 0


def _print_metrics(result: dict, notes: dict) -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            value = " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        line = f"{key:>26}: {value:.4f}" if isinstance(value, float) else f"{key:>26}: {value}"
        print(line + (f"   ({notes[key]})" if key in notes else ""))


def _write_json(path, result: dict) -> None:
    from ardiff.utils.io import atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result, indent=2)
    print(f"wrote {path}")


def cmd_loss_bands(args) -> int:
    from ardiff.models import ACDiT
    from ardiff.train.loss_bands import LossBandConfig, loss_band_table, loss_by_band, recorded_splits

    directory, _ = read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
    splits = recorded_splits(directory, args.data_root)
    model = ACDiT.from_pretrained(directory, device=args.device or "cpu")
    config = LossBandConfig(num=args.num, bands=args.bands, batch_size=args.batch_size, seed=args.seed)
    result = loss_by_band(model, splits, config)
    print("\n".join(loss_band_table(result, model.config.num_train_timesteps)))
    if args.out:
        _write_json(args.out, {"model": str(directory), **vars(config), **result})
    return 0


def cmd_eval_reference(args) -> int:
    """``ardiff eval SOURCE --reference REF``: a sample file or a model against a named reference."""
    from ardiff.eval.evaluate import evaluate_against_reference

    is_file = args.model_dir.lower().endswith(".npz")
    if not is_file:
        read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
    elif any(v is not None for v in (args.cfg, args.steps, args.sampler, args.clip_denoised, args.vae,
                                     args.guidance_interval)):
        raise CommandError("--cfg, --steps, --sampler, --clip-denoised, --guidance-interval and --vae apply when "
                           f"sampling a model; {args.model_dir} already holds samples")
    interval = checked_guidance_interval(args)
    if args.guide_model or args.guide_scale is not None or args.history_scale is not None:
        raise CommandError("--guide-model, --guide-scale and --history-scale apply when ardiff eval samples a model "
                           "against its built-in reference (without --reference)")
    result = evaluate_against_reference(
        args.model_dir, args.reference, args.features or "fmnist", num=args.num, seed=args.seed, cfg_scale=args.cfg,
        num_steps=args.steps, sampler=args.sampler, clip_denoised=args.clip_denoised, vae_dir=args.vae,
        classifier_path=args.classifier, save_stats=args.save_stats, device=args.device, progress=True,
        guidance_interval=interval)
    return _report_metrics(result, result["num_samples"], args.out)


def _report_metrics(result: dict, num: int, out: str | None) -> int:
    """Print the metrics with a warning beside each one that is unreliable at ``num``; write JSON."""
    from ardiff.eval.evaluate import reliability_notes

    notes = reliability_notes(result, num)
    _print_metrics(result, notes)
    if notes:
        result["warnings"] = notes
    if out:
        _write_json(out, result)
    return 0


def cmd_eval(args) -> int:
    if args.reference is not None:
        return cmd_eval_reference(args)
    for flag, value in (("--features", args.features), ("--save-stats", args.save_stats), ("--vae", args.vae)):
        if value is not None:
            raise CommandError(f"{flag} goes with --reference REF (e.g. --reference fmnist-test); without it the "
                               f"model is scored with the built-in networks and reference")
    if args.model_dir.lower().endswith(".npz"):
        raise CommandError(f"{args.model_dir} holds samples: give the reference to score them against, "
                           f"--reference (fmnist-test, a folder, or an .npz)")
    directory, config = read_model_summary(args.model_dir)
    interval = checked_guidance_interval(args)
    check_guide_flags(args)

    import torch

    from ardiff import ACDiT, SamplingSettings
    from ardiff.eval.evaluate import evaluate
    from ardiff.models.checkpoint import load_extras

    s = SamplingSettings.recorded(directory).but(cfg_scale=args.cfg, num_steps=args.steps, sampler=args.sampler,
                                                 clip_denoised=args.clip_denoised, history_scale=args.history_scale,
                                                 guidance_interval=interval)
    check_history_scale(s.history_scale, config, args.model_dir)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = ACDiT.from_pretrained(directory, device=device)
    guide, guide_scale = load_guide_model(args, model)
    result = evaluate(model, num=args.num, cfg_scale=s.cfg_scale, num_steps=s.num_steps, sampler=s.sampler,
                      clip_denoised=s.clip_denoised, history_scale=s.history_scale, seed=args.seed,
                      classifier_path=args.classifier, progress=True, guidance_interval=s.guidance_interval,
                      guide_model=guide, guide_scale=guide_scale,
                      inception_weights=args.inception_weights, i3d_path=args.i3d,
                      data=load_extras(directory).get("data"), real_floor=not args.no_floor)
    if guide is not None:
        result["guide_model"] = str(args.guide_model)
    return _report_metrics(result, args.num, args.out)


def cmd_sample_npz(args) -> int:
    _, config = read_model_summary(args.model_dir)
    check_history_scale(args.history_scale, config, args.model_dir)
    interval = checked_guidance_interval(args)
    from ardiff.eval.sample_files import sample_model_to_npz
    from ardiff.generate.settings import describe_interval

    summary = sample_model_to_npz(args.model_dir, args.out, args.num, seed=args.seed, cfg_scale=args.cfg,
                                  num_steps=args.steps, sampler=args.sampler, clip_denoised=args.clip_denoised,
                                  history_scale=args.history_scale, guidance_interval=interval,
                                  batch_size=args.batch_size, vae_dir=args.vae,
                                  rgb=args.rgb, device=args.device, progress=not args.no_progress)
    if summary["rank"] == 0:
        job = summary["job"]
        if summary["already_finished"]:
            print(f"{args.out} already holds this job's {job['num']} samples; nothing to do")
        else:
            resumed = f", {summary['chunks_skipped']} resumed from an earlier run" if summary["chunks_skipped"] else ""
            print(f"wrote {job['num']} samples to {args.out} (seeds {job['seed']}..{job['seed'] + job['num'] - 1}, "
                  f"{job['num_steps']} {job['sampler']} steps per block, CFG {job['cfg_scale']:g}"
                  f"{describe_interval(job.get('guidance_interval'))}; "
                  f"{summary['chunks_drawn']} batches drawn on rank 0 of {summary['world_size']}{resumed}; "
                  f"{summary['seconds']:.0f} s)")
    return 0


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
        _write_json(args.out, result)
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
    analyses.main(args.which, Path(args.out), quick=args.quick, **kwargs)
    return 0


def cmd_bench(args) -> int:
    from ardiff.experiments import speed_bench

    result = speed_bench.main(as_json=args.json, quick=args.quick)
    if args.out:
        from ardiff.utils.io import atomic_write_json

        atomic_write_json(args.out, result, indent=2)
    return 0


# ---------------------------------------------------------------------------
#                                  The parser
# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ardiff", description="Autoregressive diffusion on images and video: ACDiT (block-wise "
                    "autoregressive diffusion), ACDC (diffusion correction of autoregressive generators) and the "
                    "two joined.\n\nShipped models: fmnist, moving-fmnist, moving-fmnist-16, moving-fmnist-16-dit, "
                    "story-arm, story-corrector (a name or a model directory works wherever a model is asked for).")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (or set "
                                                             "ARDIFF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the main job: sample the shipped models, score them, write a report",
                          description="Sample the shipped image and video models, check that KV-cached sampling "
                                      "equals recomputing the context, score the samples against the Fashion-MNIST "
                                      "test split, and write report.md / report.json (about 3 minutes on 2 cores).")
    demo.add_argument("--out", type=output_dir, default="out/demo", help="output directory")
    demo.add_argument("--num-eval", type=positive_int, default=300, help="images scored against the test split "
                                                                         "(at least 10)")
    demo.add_argument("--num-eval-videos", type=positive_int, default=40, help="clips scored against test clips")
    demo.add_argument("--steps", type=positive_int, help="denoising steps per block (default: recorded with each "
                                                         "model)")
    demo.add_argument("--sampler", choices=SAMPLER_CHOICES, help="sampler for both models (default: recorded with "
                                                                  "each model, as tuned)")
    demo.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                      help="clip predicted clean samples to [-1, 1] (default: recorded with each model)")
    demo.add_argument("--cfg", type=guidance_scale, help="image guidance scale (default: recorded with the model)")
    demo.add_argument("--video-cfg", type=guidance_scale, help="video guidance scale (default: recorded with the "
                                                               "model)")
    demo.add_argument("--seed", type=nonnegative_int, default=0)
    demo.set_defaults(func=cmd_demo)

    train = sub.add_parser("train", help="train an ACDiT from a run config (works under torchrun)",
                           description="Train from a YAML run config (a path or a name in configs/, e.g. fmnist). "
                                       "Checkpoints are written atomically; --resume continues exactly.\n"
                                       "Multi-GPU: torchrun --nproc_per_node N -m ardiff.cli train CONFIG.")
    train.add_argument("config", help="YAML run config path or built-in name (fmnist, moving-fmnist, "
                                      "imagenet256-B, ...)")
    train.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint")
    train.add_argument("--out-dir", type=output_dir, help="shortcut for --set train.out_dir=DIR")
    train.add_argument("--max-steps", type=positive_int, help="stop after this many steps of this invocation")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)

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

    conv = sub.add_parser("convert-official", help="convert a released ACDiT checkpoint to an ardiff model dir",
                          description="Convert ACDiT-{XL,H}-{img,vid}.pt from the official release into an ardiff "
                                      "model directory (safetensors + JSON). The release is a pickle: it is read "
                                      "with torch.load(weights_only=True) and an allow-list, and only with "
                                      "--allow-pickle.")
    conv.add_argument("checkpoint", type=existing_file, help="ACDiT-{XL,H}-{img,vid}.pt")
    conv.add_argument("out_dir", type=output_dir, help="model directory to write")
    conv.add_argument("--allow-pickle", action="store_true",
                      help="required: the release is a pickle; it is loaded with weights_only=True and an allow-list")
    conv.add_argument("--ema", action="store_true", help="take the EMA weights when the checkpoint has them")
    conv.set_defaults(func=cmd_convert_official)

    avg = sub.add_parser("average", help="average the weights of models of one architecture (a model soup)",
                         description="Write the uniform average of the weights of two or more model directories "
                                     "(or shipped names) of one architecture, e.g. the EMA weights of consecutive "
                                     "training stages. The first model's recorded sampling and data go with it.")
    avg.add_argument("models", nargs="+", help="model directories or shipped model names, two or more")
    avg.add_argument("--out", required=True, type=output_dir, help="model directory to write")
    avg.set_defaults(func=cmd_average)

    exp = sub.add_parser("export", help="a model directory from a training checkpoint (EMA or raw weights, fp16)",
                         description="Write a model directory (config.json + model.safetensors, with the run's "
                                     "recorded sampling and data) from a checkpoint of `ardiff train`: the newest "
                                     "or --step N, its EMA weights or the raw ones, stored as float32, float16 or "
                                     "bfloat16 (half the bytes; loaded into float32 parameters). `ardiff train` "
                                     "itself exports the EMA weights of its last step.")
    exp.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                     help="a training run directory (train.out_dir) or one of its checkpoints/step_* directories")
    exp.add_argument("--out", required=True, type=output_dir, help="model directory to write")
    exp.add_argument("--weights", choices=("ema", "model"), default="ema",
                     help="ema: the moving average (default); model: the weights the optimizer last wrote")
    exp.add_argument("--step", type=positive_int, help="that step's checkpoint (default: the newest)")
    exp.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                     help="storage precision of the weights (default float32)")
    exp.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="score a model or a sample file (FID, KID, precision/recall, IS, accuracy, FVD)",
                        description="Without --reference: sample a model and score it offline with the project's "
                                    "Fashion-MNIST classifier against the test split (images) or Moving Fashion-MNIST "
                                    "test clips (videos). FID-FMNIST is comparable only to other FID-FMNIST numbers "
                                    "at the same N: it is printed beside its real-data floor (real training images "
                                    "vs the test split, same N). Metrics that mean little at the N used are "
                                    "flagged.\n\nWith --reference REF: score a sample file (ardiff sample-npz, or "
                                    "ADM/DiT's .npz) or a model's samples against REF (an image folder, an ADM .npz "
                                    "of images or of mu/sigma, fmnist-test, moving-fmnist-test) with --features "
                                    "fmnist | inception:PATH | i3d:PATH. Reference statistics are cached beside "
                                    "REF; the real-data floor is reported when REF holds >= 2N items.")
    ev.add_argument("model_dir", metavar="MODEL_DIR|SAMPLES.npz", type=eval_source,
                    help="model directory, shipped model name, or a sample file (.npz, needs --reference)")
    ev.add_argument("--reference", type=reference_spec,
                    help="image folder, .npz (arr_0 images, or mu/sigma), fmnist-test or moving-fmnist-test")
    ev.add_argument("--features", type=feature_spec,
                    help="with --reference: fmnist (default), inception:PATH (torch-fidelity's FID Inception "
                         "weights) or i3d:PATH (TorchScript I3D, clips)")
    ev.add_argument("--save-stats", type=output_file(".npz"),
                    help="with --reference: also write the reference statistics (mu, sigma, features) here")
    ev.add_argument("--vae", type=existing_dir, help="with --reference, latent models: the AutoencoderKL directory "
                                                     "(default: recorded with the model)")
    ev.add_argument("--num", type=positive_int, default=1000, help="generated samples (class-balanced; models "
                                                                  "only)")
    add_sampling_flags(ev)
    add_guidance_interval_flag(ev)
    add_guide_model_flags(ev)
    ev.add_argument("--seed", type=nonnegative_int, default=0)
    ev.add_argument("--no-floor", action="store_true", help="skip the real-data floor of the Frechet distances")
    ev.add_argument("--classifier", type=existing_file,
                    help="feature network weights (default: the shipped Fashion-MNIST classifier)")
    ev.add_argument("--inception-weights", type=existing_file,
                    help="also score with Inception-V3: torch-fidelity's local weight file "
                         "pt_inception-2015-12-05-6726825d.pth (FID/KID/IS comparable to papers)")
    ev.add_argument("--i3d", type=existing_file,
                    help="videos: also compute FVD with the TorchScript i3d_torchscript.pt at this local path")
    ev.add_argument("--out", type=output_file(".json"), help="write the metrics as JSON")
    ev.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    ev.set_defaults(func=cmd_eval)

    lb = sub.add_parser("loss-bands", help="the training loss by timestep band, training vs held-out data",
                        description="Score a model's training objective (epsilon MSE, condition kept) in bands of "
                                    "timesteps, on items of the split it was trained on and of the held-out split "
                                    "(the same noise draws for both). Low bands are detail and texture, high bands "
                                    "content and layout; held-out about equal to training means more training or "
                                    "capacity helps, held-out well above training means more data does.")
    lb.add_argument("model_dir", metavar="MODEL_DIR", help="model directory or shipped model name")
    lb.add_argument("--num", type=positive_int, default=1000, help="items per split")
    lb.add_argument("--bands", type=positive_int, default=10, help="equal-width bands of training timesteps")
    lb.add_argument("--batch-size", type=positive_int, default=100)
    lb.add_argument("--seed", type=nonnegative_int, default=0)
    lb.add_argument("--data-root", type=existing_dir, help="the dataset's directory (default: the recorded one)")
    lb.add_argument("--out", type=output_file(".json"), help="write the losses as JSON")
    lb.add_argument("--device", help="cpu, cuda, ...")
    lb.set_defaults(func=cmd_loss_bands)

    snpz = sub.add_parser("sample-npz", help="sample a model into an ADM/DiT sample file (.npz) for evaluation",
                          description="Write N class-balanced samples (label i % K, seed SEED + i) as an ADM/DiT "
                                      "sample file: arr_0 uint8 (N, H, W, C) images or (N, F, H, W, C) clips, arr_1 "
                                      "labels. Latent models are decoded with the recorded VAE (or --vae). Under "
                                      "torchrun the batches are shared out over the ranks (same file as one "
                                      "process). Resumable: batches go to OUT.parts/ as they finish; rerunning "
                                      "the same command completes an interrupted job, other settings are refused.\n"
                                      "Multi-GPU: torchrun --nproc_per_node 8 -m ardiff.cli sample-npz MODEL "
                                      "-n 50000 --out s.npz (-n: torchrun's parser mistakes --num for its "
                                      "--numa-binding)")
    snpz.add_argument("model_dir", help="model directory or shipped model name")
    # -n: under torchrun, whose own parser takes --num for an abbreviation of --numa-binding
    snpz.add_argument("--num", "-n", type=positive_int, required=True, help="number of samples (-n under torchrun)")
    snpz.add_argument("--out", type=output_file(".npz"), required=True, help="sample file to write (.npz)")
    add_sampling_flags(snpz)
    add_guidance_interval_flag(snpz)
    snpz.add_argument("--seed", type=nonnegative_int, default=0, help="sample i uses seed + i")
    snpz.add_argument("--batch-size", type=positive_int, default=64, help="samples per batch (a resumable unit)")
    snpz.add_argument("--vae", type=existing_dir, help="local diffusers AutoencoderKL directory (default: the one "
                                                       "recorded by training)")
    snpz.add_argument("--rgb", action="store_true", help="store grey samples with 3 channels (ADM's evaluator "
                                                         "expects RGB)")
    snpz.add_argument("--no-progress", action="store_true", help="no progress bar")
    snpz.add_argument("--device", help="cpu, cuda, ... (default: cuda:LOCAL_RANK when available)")
    snpz.set_defaults(func=cmd_sample_npz)

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
                                     "KV cache, next to the FLOP model (paper Fig. 8; a few minutes).")
    ana.add_argument("which", choices=("block-size", "inference-time"))
    ana.add_argument("--out", type=output_dir, default="out/analysis", help="directory for the JSON and PNG")
    ana.add_argument("--ar-lengths", type=_ar_lengths,
                     help="comma-separated numbers of blocks (default: 1,2,4,8,16,64 / 1..64)")
    ana.add_argument("--steps", type=positive_int, help="block-size: training steps per run (default: 800)")
    ana.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                     help="block-size: extra run-config override for every run (e.g. train.compile=true)")
    ana.add_argument("--quick", action="store_true", help="a tiny run that checks the pipeline end to end")
    ana.set_defaults(func=cmd_analyze)

    from ardiff.cli.acdc import add_parser as add_acdc_parser
    from ardiff.cli.world import add_parser as add_world_parser

    add_acdc_parser(sub)
    add_world_parser(sub)

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

    bench = sub.add_parser("bench", help="training/sampling speed against this machine's matmul peak",
                           description="Measure, in one run: the fp32 matmul peak, a training step, sampling, and "
                                       "per-block latency with and without the KV cache; achieved FLOP/s as a "
                                       "fraction of the peak.")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and block counts")
    bench.add_argument("--out", type=output_file(".json"), help="also write the JSON results to this file")
    bench.set_defaults(func=cmd_bench)

    for leaf in leaf_parsers(parser):
        leaf.set_defaults(prog=leaf.prog)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, args.func)


if __name__ == "__main__":
    sys.exit(main())
