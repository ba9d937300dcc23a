"""`ardiff eval|loss-bands|sample-npz`: score a model or a sample file, a model's training loss by
timestep band, and sample files for evaluation."""

from __future__ import annotations

import json

from ardiff.cli.common import (
    SAMPLING_FLAG_NAMES,
    CommandError,
    add_guidance_interval_flag,
    add_guide_model_flags,
    add_sampling_flags,
    check_guide_flags,
    checked_guidance_interval,
    eval_source,
    existing_dir,
    existing_file,
    feature_spec,
    load_pipeline,
    nonnegative_int,
    output_file,
    positive_int,
    read_model_summary,
    reference_spec,
    write_json,
)


def _print_metrics(result: dict, notes: dict) -> None:
    for key, value in result.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            value = " ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in value)
        line = f"{key:>26}: {value:.4f}" if isinstance(value, float) else f"{key:>26}: {value}"
        print(line + (f"   ({notes[key]})" if key in notes else ""))


def cmd_eval_reference(args) -> int:
    """``ardiff eval SOURCE --reference REF``: a sample file or a model against a named reference."""
    from ardiff.eval.evaluate import evaluate_against_reference

    is_file = args.model_dir.lower().endswith(".npz")
    sampling = (args.cfg, args.steps, args.sampler, args.clip_denoised, args.vae, args.guidance_interval,
                args.history_scale, args.guide_model, args.guide_scale)
    if is_file and any(v is not None for v in sampling):
        raise CommandError("--cfg, --steps, --sampler, --clip-denoised, --guidance-interval, --history-scale, "
                           f"--guide-model, --guide-scale and --vae apply when sampling a model; {args.model_dir} "
                           f"already holds samples")
    source = args.model_dir
    if not is_file:
        read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
        checked_guidance_interval(args)
        check_guide_flags(args)
        source = load_pipeline(args)
    result = evaluate_against_reference(source, args.reference, args.features or "fmnist", num=args.num,
                                        seed=args.seed, classifier_path=args.classifier, save_stats=args.save_stats,
                                        device=args.device, progress=True)
    return _report_metrics(result, result["num_samples"], args.out)


def _report_metrics(result: dict, num: int, out: str | None) -> int:
    """Print the metrics with a warning beside each one that is unreliable at ``num``; write JSON."""
    from ardiff.eval.evaluate import reliability_notes

    notes = reliability_notes(result, num)
    _print_metrics(result, notes)
    if notes:
        result["warnings"] = notes
    if out:
        write_json(out, result)
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
    read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
    checked_guidance_interval(args)
    check_guide_flags(args)

    from ardiff.eval.evaluate import evaluate

    pipe = load_pipeline(args)
    result = evaluate(pipe, num=args.num, seed=args.seed, classifier_path=args.classifier, progress=True,
                      inception_weights=args.inception_weights, i3d_path=args.i3d, real_floor=not args.no_floor)
    return _report_metrics(result, args.num, args.out)


def cmd_loss_bands(args) -> int:
    from ardiff.models import ACDiT
    from ardiff.train.loss_bands import LossBandConfig, loss_band_table, loss_by_band, recorded_splits
    from ardiff.utils.devices import default_device

    directory, _ = read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
    splits = recorded_splits(directory, args.data_root)
    model = ACDiT.from_pretrained(directory, device=default_device(args.device))
    config = LossBandConfig(num=args.num, bands=args.bands, batch_size=args.batch_size, seed=args.seed)
    result = loss_by_band(model, splits, config)
    print("\n".join(loss_band_table(result, model.config.num_train_timesteps)))
    if args.out:
        write_json(args.out, {"model": str(directory), **vars(config), **result})
    return 0


def cmd_sample_npz(args) -> int:
    read_model_summary(args.model_dir)  # a bad model directory fails before torch loads
    interval = checked_guidance_interval(args)
    from ardiff.eval.sample_files import sample_model_to_npz
    from ardiff.generate.settings import describe_interval

    args.flag_names = SAMPLING_FLAG_NAMES
    summary = sample_model_to_npz(args.model_dir, args.out, args.num, seed=args.seed, batch_size=args.batch_size,
                                  vae_dir=args.vae, rgb=args.rgb, device=args.device, progress=not args.no_progress,
                                  cfg_scale=args.cfg, num_steps=args.steps, sampler=args.sampler,
                                  clip_denoised=args.clip_denoised, history_scale=args.history_scale,
                                  guidance_interval=interval)
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


def add_parser(sub) -> None:
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
