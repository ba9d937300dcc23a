"""`ardiff demo`: the shipped models, sampled and measured, written up as a small report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES
from ardiff.experiments.common import markdown_table
from ardiff.generate.pipeline import Pipeline


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """What ``ardiff demo`` runs: the two models (shipped names or directories), how many samples
    it scores, and overrides of their recorded sampling settings (None keeps a recorded one)."""

    image_model: str = "fmnist"
    video_model: str = "moving-fmnist"
    num_eval: int = 300
    num_eval_videos: int = 40
    seed: int = 0
    num_steps: int | None = None
    sampler: str | None = None
    clip_denoised: bool | None = None
    cfg_scale: float | None = None  # the image model's
    video_cfg_scale: float | None = None

    def __post_init__(self):
        if self.num_eval < 10 or self.num_eval_videos < 1:
            raise ValueError(f"the demo scores at least 10 images (one per class for the class grid) and 1 clip; "
                             f"got num_eval={self.num_eval}, num_eval_videos={self.num_eval_videos}")

    def pipelines(self, device=None) -> tuple[Pipeline, Pipeline]:
        shared = dict(num_steps=self.num_steps, sampler=self.sampler, clip_denoised=self.clip_denoised)
        return (Pipeline.from_pretrained(self.image_model, device=device, cfg_scale=self.cfg_scale, **shared),
                Pipeline.from_pretrained(self.video_model, device=device, cfg_scale=self.video_cfg_scale, **shared))


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), device=None) -> Path:
    """Sample both models, score them against the test split, write report.md/.json and
    overview.png (the class grid beside a strip of clips).

    The class grid and the clips shown are the first of the scored samples, so nothing is
    sampled twice."""
    t_start = time.perf_counter()
    image_pipe, video_pipe = settings.pipelines(device)  # bad models or settings fail before anything is written
    out.mkdir(parents=True, exist_ok=True)
    image = _image_part(out, settings.num_eval, image_pipe, settings.seed)
    video = _video_part(out, settings.num_eval_videos, video_pipe, settings.seed)
    _overview(out)
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


def _image_part(out: Path, num_eval: int, pipe: Pipeline, seed: int) -> dict:
    from ardiff.eval.evaluate import evaluate
    from ardiff.utils.media import save_image_grid

    model, s = pipe.model, pipe.settings
    c = model.config
    print(f"[1/2] image model {pipe.source}: {model.num_parameters() / 1e6:.2f}M parameters, {c.num_blocks} blocks "
          f"of {c.block_size} tokens, {pipe.describe()}")

    # Exactness on the real model: the KV-cached loop equals recomputing the context.
    few = torch.arange(4) % c.num_classes if c.num_classes else None
    cached = pipe(few, seeds=range(4))
    uncached = pipe(few, seeds=range(4), use_cache=False)
    exact = (cached - uncached).abs().max().item()

    print(f"      sampling and scoring {num_eval} samples against the Fashion-MNIST test split")
    m, samples, _ = evaluate(pipe, num=num_eval, seed=seed + 10_000, progress=True, return_samples=True)
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
          f"{model.num_parameters() / 1e6:.2f}M parameters, {s.describe()}. "
          "Rows, top to bottom: " + ", ".join(FASHION_MNIST_CLASSES) + ".", "",
          "![class grid](fmnist_classes.png)", "", f"{num_eval} class-balanced samples:", "",
          *markdown_table(["metric", "value"], rows)]
    return {"metrics": m, "sampling": dataclasses.asdict(s), "class_grid": "fmnist_classes.png",
            "max_abs_diff_cached_vs_uncached": exact, "markdown": md}


def _video_part(out: Path, num_eval: int, pipe: Pipeline, seed: int) -> dict:
    from ardiff.eval.evaluate import evaluate
    from ardiff.utils.media import save_image_grid, save_video_grid

    model, s = pipe.model, pipe.settings
    c = model.config
    frames, h, w = c.input_size
    print(f"[2/2] video model {pipe.source}: {model.num_parameters() / 1e6:.2f}M parameters, {frames} frames of "
          f"{h}x{w}, {c.num_blocks} blocks of {c.block_size / c.tokens_per_frame:g} frames, {pipe.describe()}")
    print(f"      sampling and scoring {num_eval} clips against Moving Fashion-MNIST test clips")
    m, clips, _ = evaluate(pipe, num=num_eval, seed=seed + 10_000, progress=True, return_samples=True)
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
          f"block, {model.num_parameters() / 1e6:.2f}M parameters, {s.describe()}. One clip per class.", "",
          "![clips](moving_fmnist.gif)", "", "![frames](moving_fmnist_frames.png)", "",
          f"{num_eval} class-balanced clips:", "", *markdown_table(["metric", "value"], rows)]
    return {"metrics": m, "sampling": dataclasses.asdict(s), "clips": "moving_fmnist.gif", "markdown": md}


def _overview(out: Path) -> Path:
    """One picture for the front page: the class grid beside a strip of clips (frames left to right)."""
    from PIL import Image

    grid = Image.open(out / "fmnist_classes.png").convert("L")
    strip = Image.open(out / "moving_fmnist_frames.png").convert("L")
    height = max(grid.height, strip.height)
    gap = 8
    canvas = Image.new("L", (grid.width + gap + strip.width, height), 255)
    canvas.paste(grid, (0, (height - grid.height) // 2))
    canvas.paste(strip, (grid.width + gap, (height - strip.height) // 2))
    path = out / "overview.png"
    canvas.save(path)
    return path
