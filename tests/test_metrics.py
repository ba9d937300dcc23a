
import pytest
import torch

from ardiff.eval import (
    class_accuracy,
    frame_consistency,
    frame_consistency_by_pair,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)


def gaussian(n, mean, std, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * std + mean


def test_frechet_closed_form():
    # Same covariances cancel: FD = ||mu_a - mu_b||^2 exactly for identical sample clouds shifted.
    a = gaussian(500, 0.0, 1.0)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, a + 2.0) == pytest.approx(4 * 4.0, rel=1e-9)
    # Isotropic scale: tr(S + s^2 S - 2 s S) = (1 - s)^2 tr(S)
    cov_trace = torch.cov(a.T).trace().item()
    assert frechet_distance(a, 3 * a) == pytest.approx(4 * cov_trace + (a.mean(0) * 2).pow(2).sum().item(), rel=1e-9)


def test_frechet_errors():
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(gaussian(10, 0, 1, d=3), gaussian(10, 0, 1, d=4))
    with pytest.raises(ValueError, match="contain NaN"):
        frechet_distance(torch.full((5, 2), float("nan")), gaussian(5, 0, 1, d=2))


def test_kid_zero_for_same_distribution_and_positive_otherwise():
    a, b = gaussian(400, 0, 1, seed=1), gaussian(400, 0, 1, seed=2)
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    diff, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 and diff > 0.5


def test_precision_recall_extremes():
    real = gaussian(300, 0, 1, seed=3)
    p, r = precision_recall(real, gaussian(300, 0, 1, seed=4))
    assert p > 0.8 and r > 0.8
    p, r = precision_recall(real, gaussian(300, 0, 0.05, seed=5))  # mode collapse: precise, no recall
    assert p > 0.95 and r < 0.2
    p, _ = precision_recall(real, gaussian(300, 50, 1, seed=6))
    assert p == 0.0


def test_inception_score_bounds():
    uniform = torch.zeros(100, 10)
    assert inception_score(uniform, splits=2)[0] == pytest.approx(1.0)
    confident = torch.nn.functional.one_hot(torch.arange(100) % 10, 10).double() * 100
    assert inception_score(confident, splits=2)[0] == pytest.approx(10.0, rel=1e-6)


def test_class_accuracy_and_frame_consistency():
    logits = torch.eye(4)[[0, 1, 2, 2]]
    assert class_accuracy(logits, torch.tensor([0, 1, 2, 3])) == 0.75
    frames = torch.randn(3, 1, 8).repeat(1, 5, 1)
    assert frame_consistency(frames) == pytest.approx(1.0)
    alternating = torch.tensor([[[1.0, 0], [-1.0, 0], [1.0, 0]]])
    assert frame_consistency(alternating) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="frame features must be"):
        frame_consistency(torch.randn(3, 8))


def test_frame_consistency_by_pair_finds_the_cut():
    """A clip that changes item between frames 2 and 3 loses consistency at pair 2 only, and the
    pairs average to the overall consistency."""
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    clips = torch.stack([a, a, b, b]).repeat(5, 1, 1)  # (5 clips, 4 frames, 2)
    assert frame_consistency_by_pair(clips) == pytest.approx([1.0, 0.0, 1.0])
    noisy = torch.randn(6, 5, 8)
    assert sum(frame_consistency_by_pair(noisy)) / 4 == pytest.approx(frame_consistency(noisy))


def test_paired_bootstrap():
    from ardiff.eval import paired_bootstrap

    g = torch.Generator().manual_seed(0)
    a = torch.rand(200, generator=g)
    mean, lo, hi = paired_bootstrap(a, a + 0.1)  # a constant shift: no spread at all
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    # pairing resolves a small shift that the items' own spread (std 0.29) would hide
    b = a + 0.02 + 0.01 * torch.randn(200, generator=g)
    mean, lo, hi = paired_bootstrap(a, b)
    assert 0 < lo < mean < hi and mean == pytest.approx(0.02, abs=0.003)
    assert paired_bootstrap(a, b, seed=1) != (mean, lo, hi)  # its own resampling stream
    unrelated = torch.rand(200, generator=g)
    _, lo, hi = paired_bootstrap(a, unrelated)
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap(a, a[:10])


def test_within_class_spread_is_zero_for_collapsed_clips_and_grows_with_spread():
    from ardiff.eval.metrics import within_class_spread

    labels = torch.tensor([0, 0, 1, 1])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    assert within_class_spread(same, labels) == 0.0
    spread = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 1.0]])
    assert abs(within_class_spread(spread, labels) - 3.0) < 1e-12  # (5 + 1) / 2


def test_drift_bootstrap_finds_drift_and_pairs_rows():
    from ardiff.eval.metrics import FeatureStats, _ClipSums, drift_bootstrap, frechet_distance, frechet_drift

    g = torch.Generator().manual_seed(0)
    real = torch.randn(60, 8, 4, generator=g, dtype=torch.float64)
    steady = torch.randn(40, 8, 4, generator=g, dtype=torch.float64)
    drifting = steady.clone()
    drifting[:, 4:] += 1.5  # the same clips, pushed away from real frames past frame 4
    # The clip-sum statistics of a resample are those of the repeated frames themselves.
    counts = torch.bincount(torch.randint(0, 40, (40,), generator=g), minlength=40)
    repeated = steady[:, :4].repeat_interleave(counts, dim=0).flatten(0, 1)
    stats, direct = _ClipSums(steady[:, :4]).stats(counts.double()), FeatureStats.from_features(repeated)
    assert torch.allclose(stats.mean, direct.mean) and torch.allclose(stats.cov, direct.cov)
    assert frechet_distance(stats, FeatureStats.from_features(real[:, :4].flatten(0, 1))) == pytest.approx(
        frechet_distance(repeated, real[:, :4].flatten(0, 1)))

    out = drift_bootstrap({"steady": steady, "drifting": drifting}, real, 4, baseline="steady", num=200)
    value, low, high = out["drifting"]["drift"]
    assert value == pytest.approx(frechet_drift(drifting, real, 4)) and low < value < high
    assert value > 5 and low > 0  # 4 dimensions shifted by 1.5: FID + 9 past the split
    steady_value, steady_low, steady_high = out["steady"]["drift"]
    assert abs(steady_value) < 1.5 and steady_low < 0 < steady_high
    difference, d_low, d_high = out["drifting"]["minus_baseline"]
    assert difference == pytest.approx(value - steady_value) and 0 < d_low < difference < d_high
    assert out["steady"]["minus_baseline"] is None
    with pytest.raises(ValueError, match="F > split"):
        drift_bootstrap({"a": steady}, real, 8)
    with pytest.raises(ValueError, match="baseline 'arm'"):
        drift_bootstrap({"a": steady}, real, 4, baseline="arm")
