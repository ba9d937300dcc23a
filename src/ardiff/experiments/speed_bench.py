"""`ardiff bench`: speed of training and sampling against this machine's matmul peak.

Every ratio is measured in one run on one machine: the fp32 matmul peak first, then the
model's achieved FLOP/s (model FLOPs from :mod:`ardiff.models.flops` over wall time).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import torch

from ardiff.diffusion.schedule import training_loss
from ardiff.generate.pipeline import Pipeline
from ardiff.generate.settings import SamplingSettings
from ardiff.models import ACDiT, ACDiTConfig
from ardiff.models.flops import sampling_flops, training_step_flops


def _timeit(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(sizes=(1024, 2048, 4096), repeats: int = 5) -> dict:
    """Best fp32 GFLOP/s of square matmuls: the machine's own peak."""
    best = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        dt = _timeit(lambda: a @ b, repeats if n < 4096 else 3)
        best[n] = 2 * n**3 / dt / 1e9
    return {"gflops": max(best.values()), "by_size": {str(k): round(v, 1) for k, v in best.items()}}


def bench_config(**overrides) -> ACDiTConfig:
    """Preset S at 28x28x1, patch 2, four 7x7-token tiles, 10 classes."""
    return ACDiTConfig.preset("S", **{"input_size": (28, 28), "in_channels": 1, "patch_size": 2,
                                      "block_layout": "tiles", "block_size": 49, "num_classes": 10,
                                      "attention_backend": "sdpa", **overrides})


def bench_training(batch_size: int = 32, steps: int = 3, compile_blocks: bool = False) -> dict:
    """One AdamW step: forward + backward + update. ``compile_blocks`` compiles each
    transformer layer with ``torch.compile`` (the compile time is reported apart)."""
    torch.manual_seed(0)
    cfg = bench_config()
    model = ACDiT(cfg)
    if compile_blocks:
        for block in model.blocks:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))

    def step():
        loss = training_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    dt = _timeit(step, steps, warmup=1 if compile_blocks else 0)
    flops = training_step_flops(cfg, batch_size)
    out = {"seconds_per_step": dt, "model_gflop_per_step": flops / 1e9, "achieved_gflops": flops / dt / 1e9}
    if compile_blocks:
        out["compile_seconds"] = first - dt
    return out


def bench_sampling(batch_size: int = 8, num_steps: int = 25, cfg_scale: float = 1.5, repeats: int = 2) -> dict:
    torch.manual_seed(0)
    cfg = bench_config()
    pipe = Pipeline(ACDiT(cfg).eval(), SamplingSettings(cfg_scale=cfg_scale, num_steps=num_steps))
    y = torch.arange(batch_size) % 10
    dt = _timeit(lambda: pipe(y, seeds=range(batch_size)), repeats)
    flops = sampling_flops(cfg, batch_size, num_steps, cfg=True)
    return {"seconds": dt, "model_gflop": flops / 1e9, "achieved_gflops": flops / dt / 1e9}


def bench_block_latency(blocks=(1, 2, 4, 8, 16), batch_size: int = 8, num_steps: int = 5,
                        cfg_scale: float = 1.5) -> list[dict]:
    """Per-block sampling latency with and without the KV cache, 32x32x1 input, patch 2
    (256 tokens) cut into T raster blocks."""
    rows = []
    for T in blocks:
        torch.manual_seed(0)
        cfg = bench_config(input_size=(32, 32), block_layout="raster", block_size=256 // T)
        pipe = Pipeline(ACDiT(cfg).eval(), SamplingSettings(cfg_scale=cfg_scale, num_steps=num_steps))
        y = torch.arange(batch_size) % 10
        row = {"T": T, "block_tokens": 256 // T}
        for use_cache in (True, False):
            run = lambda: pipe(y, seeds=range(batch_size), use_cache=use_cache)
            dt = _timeit(run, 1)
            key = "cached" if use_cache else "uncached"
            row[f"{key}_ms_per_block"] = 1000 * dt / T
            row[f"{key}_gflop"] = sampling_flops(cfg, batch_size, num_steps, cfg=True, use_cache=use_cache) / 1e9
        row["measured_speedup"] = row["uncached_ms_per_block"] / row["cached_ms_per_block"]
        row["flop_predicted_speedup"] = row["uncached_gflop"] / row["cached_gflop"]
        row["speedup_vs_prediction"] = row["measured_speedup"] / row["flop_predicted_speedup"]
        rows.append(row)
    return rows


def bench_context_pass(batch_size: int = 8, num_steps: int = 25, cfg_scale: float = 1.5) -> dict:
    """Finished block's K/V: riding on the next block's first step vs a separate pass."""
    torch.manual_seed(0)
    pipe = Pipeline(ACDiT(bench_config()).eval(), SamplingSettings(cfg_scale=cfg_scale, num_steps=num_steps))
    y = torch.arange(batch_size) % 10
    out = {}
    for mode in ("ride", "separate"):
        run = lambda: pipe(y, seeds=range(batch_size), context_pass=mode)
        out[f"{mode}_seconds"] = _timeit(run, 2)
    return out


# ---------------------------------------------------------------------------
#            Shipped models: teachers beside their few-step students
# ---------------------------------------------------------------------------
TEACHER_STUDENT_PAIRS = (("fmnist", "fmnist-fast"), ("moving-fmnist", "moving-fmnist-fast"))


def bench_model(name: str, peak_gflops: float, batch_size: int | None = None, repeats: int = 1) -> dict:
    """A model sampled as recorded: evaluations per block, images (or frames) per second, and the
    achieved FLOP/s as a fraction of ``peak_gflops``."""
    from ardiff.generate.pipeline import class_balanced_labels

    pipe = Pipeline.from_pretrained(name, device="cpu")
    cfg, settings = pipe.model.config, pipe.settings
    batch_size = batch_size or (8 if cfg.is_video else 64)
    y = class_balanced_labels(batch_size, cfg.num_classes)
    dt = _timeit(lambda: pipe(y, seeds=range(batch_size)), repeats)
    flops = sampling_flops(cfg, batch_size, settings.num_steps, settings.guided, groups=settings.branches_per_step(cfg))
    frames = cfg.input_size[0] if cfg.is_video else 1
    return {"model": name, "settings": settings.describe(), "evaluations_per_block":
            settings.evaluations_per_block(cfg), "batch_size": batch_size, "seconds": dt,
            "samples_per_s": batch_size / dt, "frames_per_s": batch_size * frames / dt, "video": cfg.is_video,
            "achieved_gflops": flops / dt / 1e9, "fraction_of_peak": flops / dt / 1e9 / peak_gflops}


def bench_teacher_student(peak_gflops: float, pairs=TEACHER_STUDENT_PAIRS, repeats: int = 1) -> list[dict]:
    """Each installed teacher and its student, measured one after the other in this run."""
    from ardiff.models.resolve import resolve_model_dir

    rows = []
    for teacher, student in pairs:
        try:
            resolve_model_dir(teacher), resolve_model_dir(student)
        except FileNotFoundError:
            continue
        a = bench_model(teacher, peak_gflops, repeats=repeats)
        b = bench_model(student, peak_gflops, repeats=repeats)
        rows.append({"teacher": a, "student": b, "speedup": b["samples_per_s"] / a["samples_per_s"]})
    return rows


def run_all(quick: bool = False) -> dict:
    peak = matmul_peak()
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "torch": torch.__version__},
        "matmul_peak": peak,
    }
    train = bench_training(steps=1 if quick else 3)
    train["fraction_of_peak"] = train["achieved_gflops"] / peak["gflops"]
    result["training_S_28x28_p2_4blocks_b32"] = train
    if not quick:
        compiled = bench_training(steps=3, compile_blocks=True)
        compiled["fraction_of_peak"] = compiled["achieved_gflops"] / peak["gflops"]
        result["training_S_28x28_p2_4blocks_b32_compiled"] = compiled
    samp = bench_sampling(repeats=1 if quick else 2)
    samp["fraction_of_peak"] = samp["achieved_gflops"] / peak["gflops"]
    result["sampling_8x4blocks_25steps_cfg1.5"] = samp
    result["block_latency_b8_5steps_cfg1.5"] = bench_block_latency(blocks=(1, 4, 16) if quick else (1, 2, 4, 8, 16))
    if not quick:
        result["context_pass_8x4blocks_25steps"] = bench_context_pass()
    result["teacher_student"] = bench_teacher_student(peak["gflops"])
    return result


def main(as_json: bool = False, quick: bool = False) -> dict:
    result = run_all(quick=quick)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return result


def _print_table(r: dict) -> None:
    print(f"fp32 matmul peak: {r['matmul_peak']['gflops']:.1f} GFLOP/s  ({r['machine']['threads']} threads)")
    t = r["training_S_28x28_p2_4blocks_b32"]
    print(f"training step (S, 28x28x1, patch 2, 4 blocks, batch 32): {t['seconds_per_step']:.2f} s, "
          f"{t['achieved_gflops']:.1f} GFLOP/s = {100 * t['fraction_of_peak']:.0f}% of peak")
    if "training_S_28x28_p2_4blocks_b32_compiled" in r:
        c = r["training_S_28x28_p2_4blocks_b32_compiled"]
        print(f"  with torch.compile per layer: {c['seconds_per_step']:.2f} s, {c['achieved_gflops']:.1f} GFLOP/s = "
              f"{100 * c['fraction_of_peak']:.0f}% of peak (compile {c['compile_seconds']:.0f} s)")
    s = r["sampling_8x4blocks_25steps_cfg1.5"]
    print(f"sampling (8 x 4 blocks x 25 steps, CFG 1.5): {s['seconds']:.2f} s, "
          f"{s['achieved_gflops']:.1f} GFLOP/s = {100 * s['fraction_of_peak']:.0f}% of peak")
    print("per-block latency (batch 8, 5 steps, CFG 1.5, 256 tokens):")
    print("   T  cached ms  uncached ms  speedup  FLOP-predicted  ratio")
    for row in r["block_latency_b8_5steps_cfg1.5"]:
        print(f"  {row['T']:2d}  {row['cached_ms_per_block']:9.1f}  {row['uncached_ms_per_block']:11.1f}  "
              f"{row['measured_speedup']:7.2f}  {row['flop_predicted_speedup']:14.2f}  "
              f"{row['speedup_vs_prediction']:5.2f}")
    if "context_pass_8x4blocks_25steps" in r:
        c = r["context_pass_8x4blocks_25steps"]
        print(f"context pass: ride {c['ride_seconds']:.2f} s, separate {c['separate_seconds']:.2f} s")
    print_teacher_student(r.get("teacher_student", []))


def print_teacher_student(rows: list[dict]) -> None:
    if not rows:
        return
    print("shipped teachers and their few-step students (as recorded, CPU, one run):")
    print("  model                 evals/block  batch  seconds   images/s  frames/s  % of peak  speed-up")
    for row in rows:
        for role in ("teacher", "student"):
            m = row[role]
            speedup = f"{row['speedup']:7.1f}x" if role == "student" else ""
            print(f"  {m['model']:<20}  {m['evaluations_per_block']:11d}  {m['batch_size']:5d}  {m['seconds']:7.2f}  "
                  f"{'' if m['video'] else format(m['samples_per_s'], '9.1f'):>9}  "
                  f"{format(m['frames_per_s'], '8.1f') if m['video'] else '':>8}  "
                  f"{100 * m['fraction_of_peak']:9.1f}  {speedup}")
