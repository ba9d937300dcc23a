"""Distribution metrics on feature vectors, in float64.

The feature network is the caller's choice (Inception-V3 for numbers comparable to the
literature, our Fashion-MNIST classifier for the offline "FID-FMNIST"): every function
here takes features or logits, never images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# ---------------------------------------------------------------------------
#                          Frechet distance (FID, FVD)
# ---------------------------------------------------------------------------
@dataclass
class FeatureStats:
    mean: torch.Tensor  # (D,)
    cov: torch.Tensor  # (D, D)
    count: int

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FeatureStats":
        f = _as_matrix(features, "features")
        if f.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
        return cls(f.mean(0), torch.cov(f.T), f.shape[0])


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"{name} must be (N, D), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or Inf")
    return x


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(a: torch.Tensor | FeatureStats, b: torch.Tensor | FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

    The trace term uses tr((S_a S_b)^(1/2)) = sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2))): a
    symmetric PSD eigenproblem, exact and free of sqrtm's complex round-off.
    """
    sa = a if isinstance(a, FeatureStats) else FeatureStats.from_features(a)
    sb = b if isinstance(b, FeatureStats) else FeatureStats.from_features(b)
    if sa.mean.shape != sb.mean.shape:
        raise ValueError(f"feature sizes differ: {sa.mean.shape[0]} vs {sb.mean.shape[0]}")
    if torch.equal(sa.mean, sb.mean) and torch.equal(sa.cov, sb.cov):
        return 0.0  # the same distribution: exactly 0, not the eigensolver's round-off
    root_a = _sqrt_psd(sa.cov)
    middle = root_a @ sb.cov @ root_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = sa.mean - sb.mean
    return float(diff @ diff + sa.cov.trace() + sb.cov.trace() - 2 * trace_sqrt)


# ---------------------------------------------------------------------------
#                    Kernel inception distance (unbiased MMD^2)
# ---------------------------------------------------------------------------
def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Mean and std over random subsets of the unbiased MMD^2 with the cubic polynomial
    kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    x, y = _as_matrix(real, "real features"), _as_matrix(fake, "fake features")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        xs = x[torch.randperm(x.shape[0], generator=g)[:m]]
        ys = y[torch.randperm(y.shape[0], generator=g)[:m]]
        kxx, kyy, kxy = [(p @ q.T / d + 1) ** 3 for p, q in ((xs, xs), (ys, ys), (xs, ys))]
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off - 2 * kxy.mean()))
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------------
#             Precision / recall (k-NN manifolds, Kynkaanniemi et al. 2019)
# ---------------------------------------------------------------------------
def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    dist = torch.cdist(x, x)
    return dist.kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 4096) -> float:
    inside = []
    for i in range(0, points.shape[0], chunk):
        inside.append((torch.cdist(points[i : i + chunk], centres) <= radii[None]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Precision: share of fake samples inside the real manifold; recall: the reverse."""
    x, y = _as_matrix(real, "real features"), _as_matrix(fake, "fake features")
    if min(x.shape[0], y.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set")
    return _coverage(y, x, _knn_radii(x, k)), _coverage(x, y, _knn_radii(y, k))


# ---------------------------------------------------------------------------
#                     Classifier-based scores on generated samples
# ---------------------------------------------------------------------------
def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))), mean and std over ``splits`` (Salimans et al. 2016)."""
    logp = torch.log_softmax(_as_matrix(logits, "logits"), dim=1)
    scores = []
    for part in logp.chunk(splits):
        marginal = torch.logsumexp(part, 0) - torch.log(torch.tensor(float(part.shape[0]), dtype=torch.float64))
        kl = (part.exp() * (part - marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples generated for class c that the classifier reads as c."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels).to(logits.device)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logits for {labels.shape[0]} labels")
    return float((logits.argmax(-1) == labels).double().mean())


def paired_bootstrap(a, b, num: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired items (the same seed, prompt or clip under two settings)
    and its bootstrap interval: items resampled with replacement, ``num`` times. Pairing
    removes what the items share, so a difference between settings resolves at far smaller N
    than two separate intervals would suggest."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1 or len(a) < 2:
        raise ValueError(f"paired_bootstrap needs two 1-d score lists of the same length >= 2, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    d = b - a
    picks = torch.randint(0, len(d), (num, len(d)), generator=torch.Generator().manual_seed(seed))
    means = d[picks].mean(1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(d.mean()), lo, hi


def frechet_drift(clips: torch.Tensor, real: torch.Tensor, split: int) -> float:
    """Frame FID of frames ``split``.. minus frames ..``split``, each half against the same half of
    the real clips: how much further from real frames a generator is past a point (its drift).
    clips (N, F, D) and real (M, F, D): per-frame features of every clip."""
    first = frechet_distance(real[:, :split].flatten(0, 1), clips[:, :split].flatten(0, 1))
    return frechet_distance(real[:, split:].flatten(0, 1), clips[:, split:].flatten(0, 1)) - first


class _ClipSums:
    """Per-clip sums of frame features and of their outer products, for one part of the clips:
    the statistics of any multiset of clips (a bootstrap resample) without copying frames."""

    def __init__(self, features: torch.Tensor):
        f = torch.as_tensor(features).detach().to("cpu", torch.float64)  # (N, frames, D)
        self.frames = f.shape[1]
        self.sums = f.sum(1)  # (N, D)
        self.outer = torch.einsum("nfd,nfe->nde", f, f).flatten(1)  # (N, D * D)

    def stats(self, counts: torch.Tensor) -> FeatureStats:
        """Mean and covariance of the frames of clip k taken ``counts[k]`` times."""
        n = counts.sum() * self.frames
        mean = counts @ self.sums / n
        second = (counts @ self.outer).view(len(mean), len(mean))
        return FeatureStats(mean, (second - n * torch.outer(mean, mean)) / (n - 1), int(n))


def drift_bootstrap(rows: dict[str, torch.Tensor], real: torch.Tensor, split: int, baseline: str | None = None,
                    num: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """:func:`frechet_drift` of every row with a bootstrap interval over clips, and every row's
    drift minus ``baseline``'s with a paired interval.

    rows[name]: (N, F, D) per-frame features; rows of the same N are taken to hold the same clips
    (clip k from the same seed), so one resample of clip indices serves them all and the
    differences are paired. The real clips are resampled too (independently): their own noise is
    part of every drift. Returns {name: {"drift": (value, low, high), "minus_baseline": (value,
    low, high) or None}}; the values are those of the full sample. Resampling with replacement
    repeats clips, which raises every FID a little (fewer distinct frames); a drift is a
    difference of two FIDs at the same N, where most of that cancels.
    """
    if split < 1 or any(x.dim() != 3 or x.shape[1] <= split for x in (*rows.values(), real)):
        raise ValueError(f"drift_bootstrap needs (N, F, D) features with F > split={split} >= 1")
    if baseline is not None and baseline not in rows:
        raise ValueError(f"baseline {baseline!r} is not one of the rows {sorted(rows)}")
    values = {name: frechet_drift(x, real, split) for name, x in rows.items()}
    halves = {name: (_ClipSums(x[:, :split]), _ClipSums(x[:, split:])) for name, x in {**rows, "": real}.items()}

    def drift(name: str, counts: torch.Tensor, real_counts: torch.Tensor) -> float:
        (first, second), (real_first, real_second) = halves[name], halves[""]
        return (frechet_distance(real_second.stats(real_counts), second.stats(counts))
                - frechet_distance(real_first.stats(real_counts), first.stats(counts)))

    g = torch.Generator().manual_seed(seed)
    draws: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(num):
        counts = {n: torch.bincount(torch.randint(0, n, (n,), generator=g), minlength=n).double()
                  for n in sorted({len(x) for x in rows.values()})}
        real_counts = torch.bincount(torch.randint(0, len(real), (len(real),), generator=g),
                                     minlength=len(real)).double()
        for name, x in rows.items():
            draws[name].append(drift(name, counts[len(x)], real_counts))
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64)

    def interval(value: float, samples: list[float]) -> tuple[float, float, float]:
        low, high = torch.quantile(torch.tensor(samples, dtype=torch.float64), q).tolist()
        return value, low, high

    out = {}
    for name in rows:
        paired = baseline is not None and name != baseline and len(rows[name]) == len(rows[baseline])
        diffs = [a - b for a, b in zip(draws[name], draws[baseline])] if paired else None
        out[name] = {"drift": interval(values[name], draws[name]),
                     "minus_baseline": interval(values[name] - values[baseline], diffs) if paired else None}
    return out


def _consecutive_cosines(frame_features: torch.Tensor) -> torch.Tensor:
    """(N, F - 1) cosine similarities of consecutive frames' features; input (N, F, D)."""
    f = torch.as_tensor(frame_features).to(torch.float64)
    if f.dim() != 3 or f.shape[1] < 2:
        raise ValueError(f"frame features must be (N, F >= 2, D), got {tuple(f.shape)}")
    return torch.nn.functional.cosine_similarity(f[:, 1:], f[:, :-1], dim=-1)


def frame_consistency(frame_features: torch.Tensor) -> float:
    """Mean cosine similarity of consecutive frames' features; input (N, F, D)."""
    return float(_consecutive_cosines(frame_features).mean())


def within_class_spread(clip_features: torch.Tensor, labels) -> float:
    """Mean distance between two clips of one class (features averaged over each clip's frames,
    (N, D)), averaged over the classes: a mode-collapse check (a collapsed generator's clips of
    a class look alike, and the value falls below real clips')."""
    labels = torch.as_tensor(labels)
    spreads = []
    for k in labels.unique():
        f = clip_features[labels == k].double()
        if len(f) >= 2:
            d = torch.cdist(f, f)
            spreads.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(spreads).mean()) if spreads else float("nan")


def frame_consistency_by_clip(frame_features: torch.Tensor) -> list[float]:
    """Frame consistency of every clip (for paired comparisons of two settings on the same clips)."""
    return _consecutive_cosines(frame_features).mean(1).tolist()


def frame_consistency_by_pair(frame_features: torch.Tensor) -> list[float]:
    """Frame consistency per pair of consecutive frames (1-2, 2-3, ...): where it is lost,
    e.g. at the boundaries between autoregressive blocks."""
    return _consecutive_cosines(frame_features).mean(0).tolist()
