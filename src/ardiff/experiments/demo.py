"""`ardiff demo`: the shipped models, sampled and measured, written up as a small report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES
from ardiff.experiments.common import describe_settings, markdown_table
from ardiff.generate.sampler import SamplingSettings, make_generators, sample
from ardiff.models.acdit import ACDiT
from ardiff.models.checkpoint import load_extras
from ardiff.models.resolve import resolve_model_dir


def _settings(model_dir: Path, cfg_scale: float | None, steps: int | None, sampler: str | None,
              clip_denoised: bool | None) -> SamplingSettings:
    """The sampling settings recorded with a shipped model (as tuned), with the caller's overrides."""
    return SamplingSettings.recorded(model_dir).but(cfg_scale=cfg_scale, num_steps=steps, sampler=sampler,
                                                    clip_denoised=clip_denoised)


def run_demo(out: Path, num_eval: int = 300, num_eval_videos: int = 40, steps: int | None = None,
             cfg_scale: float | None = None, video_cfg_scale: float | None = None, seed: int = 0,
             sampler: str | None = None, clip_denoised: bool | None = None) -> Path:
    """Sample both shipped models, score them against the test split, write report.md/.json.

    The class grid and the clips shown are the first of the scored samples, so nothing is
    sampled twice."""
    if num_eval < 10 or num_eval_videos < 1:
        raise ValueError(f"the demo scores at least 10 images (one per class for the class grid) and 1 clip; got "
                         f"num_eval={num_eval}, num_eval_videos={num_eval_videos}")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    image_settings = _settings(resolve_model_dir("fmnist"), cfg_scale, steps, sampler, clip_denoised)
    video_settings = _settings(resolve_model_dir("moving-fmnist"), video_cfg_scale, steps, sampler, clip_denoised)
    image = _image_part(out, num_eval, image_settings, seed)
    video = _video_part(out, num_eval_videos, video_settings, seed)
    total = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps({"image_model": image, "video_model": video,
                                                 "total_seconds": total}, indent=2))
    md = ["# ardiff demo", "", *image.pop("markdown"), "", *video.pop("markdown"), "",
          "FID-FMNIST, KID, IS and the FVD proxy use the project's Fashion-MNIST classifier as the feature "
          "network: they compare only with other numbers computed the same way, not with Inception FID or I3D FVD.",
          "", f"Total time: {total:.0f} s."]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _with_floor(metrics: dict, key: str) -> str:
    """A Frechet distance beside its real-data floor at the same N (real samples scored the same way)."""
    floor = metrics.get(f"{key}_floor")
    return f"{metrics[key]:.2f}" + (f" (real-data floor at this N: {floor:.2f})" if floor is not None else "")


def _image_part(out: Path, num_eval: int, settings: SamplingSettings, seed: int) -> dict:
    from ardiff.eval.evaluate import evaluate
    from ardiff.utils.media import save_image_grid

    model_dir = resolve_model_dir("fmnist")
    model = ACDiT.from_pretrained(model_dir)
    s = settings
    c = model.config
    print(f"[1/2] fmnist image model: {model.num_parameters() / 1e6:.2f}M parameters, {c.num_blocks} blocks of "
          f"{c.block_size} tokens, {describe_settings(s)}")

    # Exactness on the real model: the KV-cached loop equals recomputing the context.
    few = torch.arange(4)
    cached = sample(model, few, **s.sample_kwargs(), generator=make_generators(range(4)))
    uncached = sample(model, few, **s.sample_kwargs(), generator=make_generators(range(4)), use_cache=False)
    exact = (cached - uncached).abs().max().item()

    print(f"      sampling and scoring {num_eval} samples against the Fashion-MNIST test split")
    m, samples, _ = evaluate(model, num=num_eval, cfg_scale=s.cfg_scale, num_steps=s.num_steps, sampler=s.sampler,
                             clip_denoised=s.clip_denoised, history_scale=s.history_scale,
                             guidance_interval=s.guidance_interval, seed=seed + 10_000,
                             progress=True, return_samples=True)
    # The class grid shows scored samples: sample i has class i % 10, so the first 10 x per_class
    # samples, read column by column, give one row per class.
    per_class = min(8, num_eval // 10)
    grid = samples[: 10 * per_class].unflatten(0, (per_class, 10)).transpose(0, 1).flatten(0, 1)
    save_image_grid(grid, out / "fmnist_classes.png", nrow=per_class)
    rows = [("class accuracy (classifier reads the asked class)", f"{100 * m['class_accuracy']:.1f}%"),
            ("FID-FMNIST vs test split (classifier features)", _with_floor(m, "fid_fmnist")),
            ("KID-FMNIST", f"{m['kid_fmnist']:.4f}"),
            ("precision / recall", f"{m['precision_fmnist']:.3f} / {m['recall_fmnist']:.3f}"),
            ("IS-FMNIST (classifier logits)", f"{m['is_fmnist']:.2f}"),
            ("sampling time per image", f"{1000 * m['seconds_per_sample']:.0f} ms"),
            ("max abs diff, KV-cached vs recomputed context", f"{exact:.1e}")]
    md = ["## Images: class-conditional ACDiT on Fashion-MNIST", "",
          f"{c.num_blocks} autoregressive blocks of {c.tile_side}x{c.tile_side} tokens, "
          f"{model.num_parameters() / 1e6:.2f}M parameters, {describe_settings(s)}. "
          "Rows, top to bottom: " + ", ".join(FASHION_MNIST_CLASSES) + ".", "",
          "![class grid](fmnist_classes.png)", "", f"{num_eval} class-balanced samples:", "",
          *markdown_table(["metric", "value"], rows)]
    return {"metrics": m, "sampling": dataclasses.asdict(s), "class_grid": "fmnist_classes.png",
            "max_abs_diff_cached_vs_uncached": exact, "markdown": md}


def _video_part(out: Path, num_eval: int, settings: SamplingSettings, seed: int) -> dict:
    from ardiff.eval.evaluate import evaluate
    from ardiff.utils.media import save_image_grid, save_video_grid

    model_dir = resolve_model_dir("moving-fmnist")
    model = ACDiT.from_pretrained(model_dir)
    data = load_extras(model_dir).get("data")
    s = settings
    c = model.config
    frames, h, w = c.input_size
    print(f"[2/2] moving-fmnist video model: {model.num_parameters() / 1e6:.2f}M parameters, {frames} frames of "
          f"{h}x{w}, {c.num_blocks} blocks of {c.block_size / c.tokens_per_frame:g} frames, {describe_settings(s)}")
    print(f"      sampling and scoring {num_eval} clips against Moving Fashion-MNIST test clips")
    m, clips, _ = evaluate(model, num=num_eval, cfg_scale=s.cfg_scale, num_steps=s.num_steps, sampler=s.sampler,
                           clip_denoised=s.clip_denoised, history_scale=s.history_scale,
                           guidance_interval=s.guidance_interval, seed=seed + 10_000,
                           progress=True, data=data, return_samples=True)
    clips = clips[:10]  # scored clips, one per class (clip i has class i % 10)
    save_video_grid(clips, out / "moving_fmnist.gif", fps=6, nrow=5)
    # A filmstrip for viewers that do not animate GIFs: one row per clip, frames left to right.
    save_image_grid(clips[:5].transpose(1, 2).flatten(0, 1), out / "moving_fmnist_frames.png", nrow=frames)
    rows = [("class accuracy of frames", f"{100 * m['class_accuracy_frames']:.1f}%"),
            ("frame consistency, generated / real clips",
             f"{m['frame_consistency']:.3f} / {m['frame_consistency_real']:.3f}"),
            ("FID-FMNIST of frames", _with_floor(m, "fid_fmnist_frames")),
            ("FVD proxy (concatenated frame features)", _with_floor(m, "fvd_proxy_fmnist")),
            ("sampling time per clip", f"{m['seconds_per_sample']:.2f} s")]
    md = ["## Video: class-conditional ACDiT on Moving Fashion-MNIST", "",
          f"{frames} frames of {h}x{w}, generated {c.block_size / c.tokens_per_frame:g} frames per autoregressive "
          f"block, {model.num_parameters() / 1e6:.2f}M parameters, {describe_settings(s)}. One clip per class.", "",
          "![clips](moving_fmnist.gif)", "", "![frames](moving_fmnist_frames.png)", "",
          f"{num_eval} class-balanced clips:", "", *markdown_table(["metric", "value"], rows)]
    return {"metrics": m, "sampling": dataclasses.asdict(s), "clips": "moving_fmnist.gif", "markdown": md}
