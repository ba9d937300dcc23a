"""The shipped models' sampling paths, pinned: samples drawn with fixed seeds equal the
reference tensors in tests/data/sampling_fingerprints.safetensors (written by
``python tests/test_fingerprints.py --write`` from a state whose behaviour was checked, see
scripts/fingerprints.py). A refactoring that changes a number fails here.

The tolerance allows for the last bits of float32 matmuls, which differ between CPUs
(AVX-512 and AVX2 kernels); any change of behaviour moves samples by far more.
"""

import sys
from pathlib import Path

import pytest
import torch

from helpers import HAVE_FMNIST, needs_fmnist

REFERENCE = Path(__file__).parent / "data" / "sampling_fingerprints.safetensors"
TOLERANCE = 2e-3


def image_and_video_samples() -> dict[str, torch.Tensor]:
    """The demo's path: class-balanced samples with the recorded settings (SDE sampler, clipping)."""
    from ardiff.eval.evaluate import sample_for_eval
    from ardiff.generate import Pipeline

    out = {}
    for name, num in (("fmnist", 4), ("moving-fmnist", 2)):
        out[name], _, _ = sample_for_eval(Pipeline.from_pretrained(name, device="cpu"), num, seed=10_000)
    return out


def story_samples(tmp: Path) -> dict[str, torch.Tensor]:
    """ACDC inside the ACDiT block loop (the corrected block enters the KV cache), and the
    rolling KV window past the trained length."""
    from ardiff.experiments.story_benchmark import BenchmarkConfig, StoryBench

    bench = StoryBench(BenchmarkConfig(out=str(tmp), num_stories=2, long_stories=1, long_length=8))
    return {"story_acdc_rule": bench.run_setting("acdc_rule")[0], "story_long_arm": bench.run_setting("long_arm")[0]}


def all_samples(tmp: Path, stories: bool = True) -> dict[str, torch.Tensor]:
    """``stories``: also the story-world samples (their world is drawn from Fashion-MNIST)."""
    torch.set_num_threads(1)  # one reduction order
    drawn = {**image_and_video_samples(), **(story_samples(tmp) if stories else {})}
    return {k: v.float().contiguous() for k, v in drawn.items()}


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    threads = torch.get_num_threads()
    try:
        yield all_samples(tmp_path_factory.mktemp("fingerprints"), stories=HAVE_FMNIST)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["fmnist", "moving-fmnist", pytest.param("story_acdc_rule", marks=needs_fmnist),
                                  pytest.param("story_long_arm", marks=needs_fmnist)])
def test_sampling_path_unchanged(samples, name):
    from safetensors.torch import load_file

    expected = load_file(str(REFERENCE))[name]
    got = samples[name]
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff <= TOLERANCE, f"{name}: samples moved by {diff:.2e} (> {TOLERANCE}) from the pinned reference"


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        save_file(all_samples(Path(tmp)), str(REFERENCE))
    print(f"wrote {REFERENCE}")
