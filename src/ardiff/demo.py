"""`ardiff demo`: the shipped models, sampled and measured, written up as a small report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ardiff.data.fashion_mnist import FASHION_MNIST_CLASSES
from ardiff.generate.sampler import make_generators, sample
from ardiff.models.acdit import ACDiT

MODELS = Path(__file__).resolve().parent / "assets" / "models"


def builtin_model(name: str) -> Path:
    path = MODELS / name
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"built-in model {name!r} not found in {MODELS}; it ships with the repository "
                                f"(train it again with `ardiff train {name}`)")
    return path


def run_demo(out: Path, num_eval: int = 500, steps: int = 25, cfg_scale: float = 4.0, seed: int = 0) -> Path:
    from ardiff.eval.evaluate import evaluate
    from ardiff.utils.media import save_image_grid

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    model = ACDiT.from_pretrained(builtin_model("fmnist"))
    c = model.config
    print(f"fmnist model: {model.num_parameters() / 1e6:.2f}M parameters, {c.num_blocks} blocks of "
          f"{c.block_size} tokens, {steps} DPM-Solver++ steps per block, CFG {cfg_scale}")

    # A class grid: one row per class.
    per_class = 8
    labels = torch.arange(10).repeat_interleave(per_class)
    t0 = time.perf_counter()
    grid = sample(model, labels, num_steps=steps, cfg_scale=cfg_scale,
                  generator=make_generators(range(seed, seed + len(labels))), progress=True)
    grid_seconds = time.perf_counter() - t0
    save_image_grid(grid, out / "fmnist_classes.png", nrow=per_class)

    # Exactness on the real model: the KV-cached loop equals recomputing the context.
    few = labels[::per_class][:4]
    cached = sample(model, few, num_steps=steps, cfg_scale=cfg_scale, generator=make_generators(range(4)))
    uncached = sample(model, few, num_steps=steps, cfg_scale=cfg_scale, generator=make_generators(range(4)),
                      use_cache=False)
    exact = (cached - uncached).abs().max().item()

    print(f"scoring {num_eval} samples against the Fashion-MNIST test split")
    metrics = evaluate(model, num=num_eval, cfg_scale=cfg_scale, num_steps=steps, seed=seed + 10_000, progress=True)
    total = time.perf_counter() - t_start
    report = {"image_model": {"metrics": metrics, "class_grid": "fmnist_classes.png",
                              "grid_seconds": grid_seconds, "max_abs_diff_cached_vs_uncached": exact},
              "total_seconds": total}
    (out / "report.json").write_text(json.dumps(report, indent=2))

    rows = [("class accuracy (classifier reads the asked class)", f"{100 * metrics['class_accuracy']:.1f}%"),
            ("FID-FMNIST vs test split (classifier features)", f"{metrics['fid_fmnist']:.2f}"),
            ("KID-FMNIST", f"{metrics['kid_fmnist']:.4f}"),
            ("precision / recall", f"{metrics['precision']:.3f} / {metrics['recall']:.3f}"),
            ("IS-FMNIST (classifier logits)", f"{metrics['is_fmnist']:.2f}"),
            ("sampling time per image", f"{1000 * metrics['seconds_per_sample']:.0f} ms"),
            ("max abs diff, KV-cached vs recomputed context", f"{exact:.1e}")]
    md = ["# ardiff demo", "",
          f"Class-conditional ACDiT on Fashion-MNIST ({c.num_blocks} autoregressive blocks of "
          f"{c.tile_side}x{c.tile_side} tokens, {model.num_parameters() / 1e6:.2f}M parameters), "
          f"{steps} steps per block, CFG {cfg_scale}. Rows, top to bottom: "
          + ", ".join(FASHION_MNIST_CLASSES) + ".", "", "![class grid](fmnist_classes.png)", "",
          f"## Metrics ({num_eval} class-balanced samples)", "", "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    md += ["", "FID-FMNIST, KID and IS here use the project's Fashion-MNIST classifier as the feature network: "
           "they compare only with other numbers computed the same way, not with Inception FID.", "",
           f"Total time: {total:.0f} s."]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
