"""Fingerprints of sampled tensors with fixed seeds: the demo's image and video samples, a
4-story benchmark run and a short training run. Written before and after a change that
must not change behaviour; the two JSON files must be identical (wall-clock timings are left
out of the metrics' hash).

    python scripts/fingerprints.py OUT.json [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def demo_samples() -> dict:
    from ardiff.eval.evaluate import generate
    from ardiff.generate.sampler import SamplingSettings
    from ardiff.models.acdit import ACDiT

    try:
        from ardiff.models.resolve import resolve_model_dir
    except ImportError:
        from ardiff.demo import builtin_model as resolve_model_dir
    out = {}
    for name, num in (("fmnist", 20), ("moving-fmnist", 4)):
        directory = resolve_model_dir(name)
        model = ACDiT.from_pretrained(directory)
        s = SamplingSettings.recorded(directory)
        samples, _ = generate(model, num, s.cfg_scale, s.num_steps, seed=10_000, sampler=s.sampler,
                              clip_denoised=s.clip_denoised)
        out[name] = digest(samples)
    return out


def _without_timings(value):
    """Results without wall-clock keys (seconds, s_per_story), which differ run to run."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "second" not in k and not k.startswith("s_per")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def story_benchmark(workdir: Path) -> dict:
    try:
        from ardiff.experiments.story_benchmark import BenchmarkConfig, run_benchmark
        from ardiff.experiments.video_table import VideoBenchConfig
    except ImportError:
        from ardiff.acdc.benchmark import BenchmarkConfig, run_benchmark
        from ardiff.acdc.video_bench import VideoBenchConfig
    from safetensors.torch import load_file

    settings = ("dm_alone", "arm", "acdc_rule", "acdc_raw", "acdc2_rule", "long_arm", "long_acdc_rule", "inpaint",
                "video_arm", "video_acdc")
    config = BenchmarkConfig(out=str(workdir / "bench"), num_stories=4, long_stories=2, settings=settings,
                             video=VideoBenchConfig(clips=3))
    summary = run_benchmark(config, log=lambda *a: None)
    out = {}
    for path in sorted((workdir / "bench" / "settings").glob("*.safetensors")):
        out[path.stem] = {k: digest(v) for k, v in sorted(load_file(str(path)).items())}
    out["metrics"] = hashlib.sha256(json.dumps(_without_timings(summary["results"]), sort_keys=True).encode()
                                    ).hexdigest()[:16]
    return out


def short_training(workdir: Path) -> dict:
    from safetensors.torch import load_file

    from ardiff.train import Trainer, load_run_config

    overrides = [f"train.out_dir={workdir / 'train'}", "train.steps=6", "train.batch_size=8", "train.warmup_steps=2",
                 "train.checkpoint_every=3", "train.sample_every=0", "train.log_every=1"]
    run = load_run_config("fmnist", overrides)
    trainer = Trainer(run, resume=False, device="cpu", progress=False)
    last = trainer.fit()
    weights = load_file(str(workdir / "train" / "model" / "model.safetensors"))
    return {"loss": repr(float(last["loss"])), "weights": digest(torch.cat([v.flatten().float() for _, v in
                                                                          sorted(weights.items())]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    args = parser.parse_args()
    torch.set_num_threads(1)  # thread count can change reduction order; fix it
    workdir = Path(tempfile.mkdtemp())
    try:
        result = {"demo": demo_samples(), "training": short_training(workdir), "benchmark": story_benchmark(workdir)}
    finally:
        shutil.rmtree(workdir)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
