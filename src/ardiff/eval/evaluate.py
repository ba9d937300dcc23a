"""`ardiff eval`: sample from a model and score it against real data.

Built-in data (Fashion-MNIST images, Moving Fashion-MNIST videos) is scored offline with
the project's Fashion-MNIST classifier (:mod:`ardiff.eval.fmnist_classifier`):

- ``fid_fmnist``: Frechet distance of the classifier's 128-d penultimate features,
  generated vs the test split. Comparable only to other FID-FMNIST numbers.
- ``kid_fmnist``, ``precision``, ``recall`` on the same features; ``is_fmnist``: Inception
  Score computed with the classifier's logits; ``class_accuracy``: share of samples
  generated for class c that the classifier reads as c.
- Videos: the same per frame (``fid_fmnist_frames``), ``fvd_proxy_fmnist`` (Frechet distance
  of the concatenated per-frame features of a clip; an offline stand-in for FVD, not
  comparable to I3D FVD), ``frame_consistency`` (mean cosine of consecutive frames'
  features) for generated and real clips, and per-frame class accuracy.
"""

from __future__ import annotations

import time

import torch

from ardiff.eval.fmnist_classifier import FashionMNISTClassifier, classify
from ardiff.eval.metrics import (
    class_accuracy,
    frame_consistency,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from ardiff.generate.sampler import make_generators, sample


def generate(model, num: int, cfg_scale: float, num_steps: int, seed: int = 0, batch_size: int = 100,
             progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced samples (label i % K) and their labels."""
    K = model.config.num_classes
    labels = torch.arange(num) % K
    out = []
    chunks = range(0, num, batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sampling", unit="batch")
    for start in chunks:
        y = labels[start : start + batch_size]
        out.append(sample(model, y, num_steps=num_steps, cfg_scale=cfg_scale,
                          generator=make_generators(range(seed + start, seed + start + len(y)), model.device)).cpu())
    return torch.cat(out), labels


def image_metrics(fake: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
                  classifier: FashionMNISTClassifier) -> dict:
    f_fake, logits = classify(classifier, fake)
    f_real, _ = classify(classifier, real)
    kid, kid_std = kernel_inception_distance(f_real, f_fake, subsets=50, subset_size=min(1000, len(fake)))
    precision, recall = precision_recall(f_real[: len(fake)], f_fake)
    return {
        "fid_fmnist": frechet_distance(f_real, f_fake),
        "kid_fmnist": kid, "kid_fmnist_std": kid_std,
        "precision": precision, "recall": recall,
        "is_fmnist": inception_score(logits)[0],
        "class_accuracy": class_accuracy(logits, labels),
        "num_samples": len(fake), "num_real": len(real),
    }


def video_metrics(fake: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
                  classifier: FashionMNISTClassifier) -> dict:
    """fake/real: (N, 1, F, H, W) clips."""

    def per_frame(clips):
        n, c, f, h, w = clips.shape
        feats, logits = classify(classifier, clips.transpose(1, 2).reshape(n * f, c, h, w))
        return feats.view(n, f, -1), logits.view(n, f, -1)

    ff, fl = per_frame(fake)
    rf, _ = per_frame(real)
    F = ff.shape[1]
    return {
        "fid_fmnist_frames": frechet_distance(rf.flatten(0, 1), ff.flatten(0, 1)),
        "fvd_proxy_fmnist": frechet_distance(rf.flatten(1), ff.flatten(1)),
        "frame_consistency": frame_consistency(ff),
        "frame_consistency_real": frame_consistency(rf),
        "class_accuracy_frames": class_accuracy(fl.flatten(0, 1), labels.repeat_interleave(F)),
        "num_samples": len(fake), "num_real": len(real),
    }


def evaluate(model, num: int = 1000, cfg_scale: float = 1.5, num_steps: int = 25, seed: int = 0,
             classifier_path=None, real: torch.Tensor | None = None, progress: bool = False) -> dict:
    """Sample ``num`` class-balanced samples and score them (see module docstring)."""
    classifier = FashionMNISTClassifier.load(classifier_path)
    t0 = time.perf_counter()
    fake, labels = generate(model, num, cfg_scale, num_steps, seed, progress=progress)
    seconds = time.perf_counter() - t0
    cfg = model.config
    if real is None:
        real = _default_real(cfg)
    if cfg.is_video:
        result = video_metrics(fake, labels, real, classifier)
    else:
        result = image_metrics(fake, labels, real, classifier)
    result.update({"cfg_scale": cfg_scale, "num_steps": num_steps, "seed": seed,
                   "sampling_seconds": seconds, "seconds_per_sample": seconds / num})
    return result


def _default_real(cfg) -> torch.Tensor:
    if cfg.in_channels != 1:
        raise ValueError("the offline metrics read 1-channel Fashion-MNIST data; pass real= for other data")
    if cfg.is_video:
        from ardiff.data.moving_fmnist import MovingFashionMNIST

        frames, h, w = cfg.input_size
        data = MovingFashionMNIST(split="test", num_frames=frames, canvas_size=h, num_videos=1000)
        return torch.stack([data[i][0] for i in range(len(data))])
    from ardiff.data.fashion_mnist import FashionMNIST

    return FashionMNIST(split="test").images.float() / 127.5 - 1
