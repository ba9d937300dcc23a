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
