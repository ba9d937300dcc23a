"""The paper's two analyses of autoregressive length, reproduced at CPU scale.

- :func:`block_size_tradeoff` (paper Fig. 7): the same network trained with the same budget
  on Fashion-MNIST with the 8x8 token grid cut into 1 (DiT), 2, 4, ... 64 (token-wise)
  raster blocks, each scored by FID-FMNIST and class accuracy.
- :func:`inference_time_vs_ar_length` (paper Fig. 8): wall time of one sample for several
  sequence lengths as the autoregressive length grows, with and without the KV cache, next
  to the FLOP model of :mod:`ardiff.models.flops`.

``ardiff analyze block-size|inference-time --out DIR`` writes ``DIR/<name>.json`` and a PNG
plot (matplotlib, the ``plots`` extra). docs/analyses.md records the measured runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ardiff.generate.pipeline import Pipeline
from ardiff.generate.settings import SamplingSettings
from ardiff.models.acdit import ACDiT
from ardiff.models.config import ACDiTConfig
from ardiff.models.flops import sampling_flops


# ---------------------------------------------------------------------------
#                   Inference time vs autoregressive length (Fig. 8)
# ---------------------------------------------------------------------------
def timing_config(num_tokens: int, ar_length: int, depth: int = 6, hidden_size: int = 192,
                  num_heads: int = 3) -> ACDiTConfig:
    """A 1-channel image of ``num_tokens`` 4x4 patches (square grid) in ``ar_length`` raster blocks."""
    side = int(round(num_tokens ** 0.5))
    if side * side != num_tokens or num_tokens % ar_length:
        raise ValueError(f"num_tokens={num_tokens} must be a square and divisible by ar_length={ar_length}")
    return ACDiTConfig.preset("S", input_size=(4 * side, 4 * side), in_channels=1, patch_size=4,
                              block_layout="raster", block_size=num_tokens // ar_length, num_classes=10,
                              depth=depth, hidden_size=hidden_size, num_heads=num_heads, attention_backend="sdpa")


def inference_time_vs_ar_length(seq_lengths=(64, 256, 1024), ar_lengths=(1, 2, 4, 8, 16, 32, 64),
                                batch_size: int = 2, num_steps: int = 5, cfg_scale: float = 1.5,
                                model_kwargs: dict | None = None, progress: bool = True) -> dict:
    """Seconds per sample, cached and uncached, and the FLOP model, for each (L, T).

    The FLOP model predicts time as FLOPs / rate, the rate measured at T = 1 for that
    sequence length (where cached and uncached do the same work): it shows how much of the
    measured curve the arithmetic explains.
    """
    rows = []
    for L in seq_lengths:
        rate = None
        for T in ar_lengths:
            if T > L or L % T:
                continue
            torch.manual_seed(0)
            cfg = timing_config(L, T, **(model_kwargs or {}))
            model = ACDiT(cfg).eval()
            pipe = Pipeline(model, SamplingSettings(cfg_scale=cfg_scale, num_steps=num_steps))
            y = torch.arange(batch_size) % 10
            row = {"seq_len": L, "ar_length": T, "block_tokens": L // T}
            for use_cache in (True, False):
                def run():
                    return pipe(y, seeds=range(batch_size), use_cache=use_cache)
                if not rows or rows[-1]["seq_len"] != L:
                    run()  # warm-up once per sequence length (allocator, kernels)
                t0 = time.perf_counter()
                run()
                seconds = (time.perf_counter() - t0) / batch_size
                flops = sampling_flops(cfg, 1, num_steps, cfg=cfg_scale != 1.0, use_cache=use_cache)
                key = "cached" if use_cache else "uncached"
                row[f"{key}_s"] = seconds
                row[f"{key}_gflop"] = flops / 1e9
            if rate is None:
                rate = row["cached_gflop"] / row["cached_s"]  # GFLOP/s at T = 1
            row["gflops_rate_at_T1"] = rate
            row["cached_flop_model_s"] = row["cached_gflop"] / rate
            row["uncached_flop_model_s"] = row["uncached_gflop"] / rate
            row["measured_speedup"] = row["uncached_s"] / row["cached_s"]
            rows.append(row)
            if progress:
                print(f"L={L:5d} T={T:3d}: cached {row['cached_s']:.3f} s  uncached {row['uncached_s']:.3f} s  "
                      f"(FLOP model {row['cached_flop_model_s']:.3f} / {row['uncached_flop_model_s']:.3f} s)",
                      flush=True)
    probe = timing_config(seq_lengths[0], 1, **(model_kwargs or {}))
    return {"settings": {"batch_size": batch_size, "num_steps": num_steps, "cfg_scale": cfg_scale,
                         "model": {"depth": probe.depth, "hidden_size": probe.hidden_size,
                                   "num_heads": probe.num_heads},
                         "torch": torch.__version__, "threads": torch.get_num_threads()},
            "rows": rows}


def plot_inference_time(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["seq_len"] for r in result["rows"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        rows = [r for r in result["rows"] if r["seq_len"] == L]
        T = [r["ar_length"] for r in rows]
        ax.plot(T, [r["cached_s"] for r in rows], "o-", color="tab:blue", label="KV cache (measured)")
        ax.plot(T, [r["uncached_s"] for r in rows], "s-", color="tab:red", label="no cache (measured)")
        ax.plot(T, [r["cached_flop_model_s"] for r in rows], "--", color="tab:blue", alpha=0.6,
                label="KV cache (FLOP model)")
        ax.plot(T, [r["uncached_flop_model_s"] for r in rows], "--", color="tab:red", alpha=0.6,
                label="no cache (FLOP model)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{L} tokens")
        ax.set_xlabel("autoregressive length (blocks)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("seconds per sample")
    axes[0][0].legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(f"Sampling time vs autoregressive length ({s['num_steps']} steps/block, CFG {s['cfg_scale']}, "
                 f"batch {s['batch_size']}, {s['threads']} CPU threads)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
#                        Block size trade-off (Fig. 7)
# ---------------------------------------------------------------------------
def block_size_tradeoff(out_dir: Path, ar_lengths=(1, 2, 4, 8, 16, 64), steps: int = 800, batch_size: int = 64,
                        num_eval: int = 500, cfg_scale: float = 2.0, eval_steps: int = 25,
                        overrides: list[str] = (), progress: bool = True) -> dict:
    """Train the fmnist recipe (a smaller network, see overrides) once per AR length with the
    same steps, batch and seed, then score each with FID-FMNIST against the test split."""
    from ardiff.eval.evaluate import evaluate
    from ardiff.train.config import load_run_config
    from ardiff.train.trainer import Trainer

    out_dir = Path(out_dir)
    rows = []
    for T in ar_lengths:
        if 64 % T:
            raise ValueError(f"ar_length={T} must divide the 64 tokens of the 8x8 grid")
        run_dir = out_dir / f"T{T:02d}"
        run = load_run_config("fmnist", [
            "model.depth=4", "model.hidden_size=128", "model.num_heads=2", "model.block_layout=raster",
            f"model.block_size={64 // T}", f"train.steps={steps}", f"train.batch_size={batch_size}",
            "train.warmup_steps=100", "train.ema_decay=0.999", f"train.ema_warmup_steps={steps // 4}",
            "train.sample_every=0", f"train.checkpoint_every={steps}", f"train.log_every={max(steps // 10, 1)}",
            "train.tensorboard=false", f"train.out_dir={run_dir}", *overrides,
        ])
        resume = (run_dir / "checkpoints" / "latest").exists()
        t0 = time.perf_counter()
        trainer = Trainer(run, resume=resume, progress=progress)
        trainer.fit()
        train_seconds = time.perf_counter() - t0
        # The same plain settings for every run (not the recipe's recorded ones): DPM-Solver++, every step guided.
        pipe = Pipeline(ACDiT.from_pretrained(run_dir / "model"), SamplingSettings(cfg_scale, eval_steps))
        metrics = evaluate(pipe, num=num_eval, seed=10_000, progress=progress)
        row = {"ar_length": T, "block_tokens": 64 // T, "train_seconds": train_seconds,
               "fid_fmnist": metrics["fid_fmnist"], "class_accuracy": metrics["class_accuracy"],
               "seconds_per_sample": metrics["seconds_per_sample"],
               "final_loss": _final_loss(run_dir)}
        rows.append(row)
        if progress:
            print(f"T={T:3d}: FID-FMNIST {row['fid_fmnist']:.1f}  accuracy {100 * row['class_accuracy']:.1f}%  "
                  f"train {train_seconds:.0f} s", flush=True)
        (out_dir / "block_size.partial.json").write_text(json.dumps(rows, indent=2))
    return {"settings": {"steps": steps, "batch_size": batch_size, "num_eval": num_eval, "cfg_scale": cfg_scale,
                         "eval_steps": eval_steps,
                         "model": "fmnist recipe, depth 4, hidden 128, 2 heads, raster blocks",
                         "overrides": list(overrides), "threads": torch.get_num_threads()},
            "rows": rows}


def _final_loss(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = path.read_text().strip().splitlines()
    return json.loads(lines[-1])["loss"] if lines else None


def plot_block_size(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    T = [r["ar_length"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(T, [r["fid_fmnist"] for r in rows], "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xticks(T, [str(t) for t in T])
    ax.set_xlabel("autoregressive length (blocks; 1 = DiT, 64 = token-wise)")
    ax.set_ylabel("FID-FMNIST (lower is better)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(T, [100 * r["class_accuracy"] for r in rows], "s--", color="tab:orange")
    ax2.set_ylabel("class accuracy of samples (%)", color="tab:orange")
    s = result["settings"]
    ax.set_title(f"Block size trade-off: {s['steps']} steps x batch {s['batch_size']}, CFG {s['cfg_scale']}",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
#         Quality against steps: what few-step distillation buys
# ---------------------------------------------------------------------------
HEADLINE = {False: ("fid_fmnist", "class_accuracy"), True: ("fid_fmnist_frames", "class_accuracy_frames")}


def quality_vs_steps(teacher: str, student: str, student_steps=(1, 2, 4), teacher_steps=(4, 8, 25),
                     num: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """The student at ``student_steps`` and the teacher's own recorded solver (its sampler,
    guidance and interval) at ``teacher_steps``, on the same seeds, each scored like ``ardiff
    eval`` (the real-data floor once, at the same N)."""
    from ardiff.eval.evaluate import evaluate

    rows, floor = [], None
    for role, name, steps_list in (("student", student, student_steps), ("teacher", teacher, teacher_steps)):
        for steps in steps_list:
            pipe = Pipeline.from_pretrained(name, device="cpu", num_steps=steps)
            metrics = evaluate(pipe, num, seed, progress=progress, real_floor=floor is None)
            floor = floor or {k: v for k, v in metrics.items() if k.endswith("_floor")}
            rows.append({"role": role, "model": name, "steps": steps, "settings": pipe.settings.describe(),
                         "evaluations_per_block": pipe.settings.evaluations_per_block(pipe.config),
                         **{k: v for k, v in metrics.items() if not k.endswith("_floor")}})
            if progress:
                fid, acc = HEADLINE[pipe.config.is_video]
                print(f"{name} at {steps} steps ({rows[-1]['evaluations_per_block']} evaluations per block): "
                      f"{fid} {metrics[fid]:.2f}, {acc} {100 * metrics[acc]:.1f}%, "
                      f"{metrics['seconds_per_sample']:.3f} s per sample")
    return {"teacher": teacher, "student": student, "num": num, "seed": seed, "floor": floor, "rows": rows}


def plot_quality_vs_steps(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    video = "fid_fmnist_frames" in rows[0]
    fid, acc = HEADLINE[video]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for role, style in (("teacher", "o-"), ("student", "s-")):
        part = [r for r in rows if r["role"] == role]
        label = f"{part[0]['model']} ({'its own solver' if role == 'teacher' else 'few-step student'})"
        x = [r["evaluations_per_block"] for r in part]
        axes[0].plot(x, [r[fid] for r in part], style, label=label)
        axes[1].plot(x, [100 * r[acc] for r in part], style, label=label)
        for r in part:
            axes[0].annotate(f"{r['steps']}", (r["evaluations_per_block"], r[fid]), textcoords="offset points",
                             xytext=(4, 4), fontsize=8)
    floor = (result.get("floor") or {}).get(f"{fid}_floor")
    if floor is not None:
        axes[0].axhline(floor, color="grey", ls=":", label=f"real-data floor {floor:.1f}")
    for ax, name in ((axes[0], f"{fid} (lower is better)"), (axes[1], f"{acc} (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("model evaluations per block (labels: steps)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Quality against steps: N = {result['num']}, seeds {result['seed']}..", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(which: str, out: Path, quick: bool = False, **kwargs) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if which == "inference-time":
        if quick:
            kwargs = {"seq_lengths": (16, 64), "ar_lengths": (1, 4, 16), "num_steps": 2,
                      "model_kwargs": {"depth": 2, "hidden_size": 64, "num_heads": 1}, **kwargs}
        result = inference_time_vs_ar_length(**kwargs)
        plot = plot_inference_time(result, out / "inference_time.png")
    elif which == "block-size":
        if quick:
            kwargs = {"ar_lengths": (1, 4), "steps": 2, "batch_size": 8, "num_eval": 20, "eval_steps": 2,
                      "overrides": ["model.depth=1", "model.hidden_size=32", "model.num_heads=1"], **kwargs}
        result = block_size_tradeoff(out, **kwargs)
        plot = plot_block_size(result, out / "block_size.png")
    elif which == "steps":
        result = quality_vs_steps(**kwargs)
        plot = plot_quality_vs_steps(result, out / "steps.png")
    else:
        raise ValueError(f"unknown analysis {which!r}; use inference-time, block-size or steps")
    (out / f"{which.replace('-', '_')}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / (which.replace('-', '_') + '.json')} and {plot}")
    return result
