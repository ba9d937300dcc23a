"""`ardiff eval`: sample from a model and score it against real data.

Built-in data (Fashion-MNIST images, Moving Fashion-MNIST videos) is scored offline with
the project's Fashion-MNIST classifier (:mod:`ardiff.eval.fmnist_classifier`):

- ``fid_fmnist``: Frechet distance of the classifier's 128-d penultimate features,
  generated vs the test split. Comparable only to other FID-FMNIST numbers.
- ``kid_fmnist``, ``precision_fmnist``, ``recall_fmnist`` on the same features; ``is_fmnist``: Inception
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

from ardiff.eval.features import FeatureNetwork, FMNISTFeatures, FrameFeatures, I3DFeatures, InceptionFeatures
from ardiff.eval.metrics import (
    class_accuracy,
    frame_consistency,
    frame_consistency_by_clip,
    frame_consistency_by_pair,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    within_class_spread,
)
from ardiff.eval.reference import fmnist_canvas, moving_fmnist_motion, moving_fmnist_test_clips
from ardiff.generate.pipeline import Pipeline, class_balanced_labels
from ardiff.utils.devices import default_device


def image_metrics(fake: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, network: FeatureNetwork) -> dict:
    """FID, KID, precision/recall, IS (when the network has logits) and class accuracy (when its
    logits are Fashion-MNIST classes) of images (N, C, H, W), keys suffixed with the network's name."""
    f_fake, logits = network(fake)
    f_real, _ = network(real)
    name = network.name
    kid, kid_std = kernel_inception_distance(f_real, f_fake, subsets=50, subset_size=min(1000, len(fake), len(real)))
    precision, recall = precision_recall(f_real[: len(fake)], f_fake)
    result = {
        f"fid_{name}": frechet_distance(f_real, f_fake),
        f"kid_{name}": kid, f"kid_{name}_std": kid_std,
        f"precision_{name}": precision, f"recall_{name}": recall,
    }
    if logits is not None:
        result[f"is_{name}"] = inception_score(logits)[0]
    if network.predicts_fmnist_classes:
        result["class_accuracy"] = class_accuracy(logits, labels)
    return result


def video_metrics(fake: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, frame_network: FeatureNetwork,
                  clip_network: FeatureNetwork | None = None, per_clip: bool = False) -> dict:
    """fake/real: (N, C, F, H, W) clips. Frame-wise FID, the concatenated-frame FVD proxy, frame
    consistency (generated and real), per-frame class accuracy, and FVD when a clip network is given.
    ``per_clip``: also each clip's share of frames read as its class (for paired comparisons)."""
    frames = FrameFeatures(frame_network)
    ff, fl = frames.per_frame(fake)
    rf, _ = frames.per_frame(real)
    F = ff.shape[1]
    name = frame_network.name
    result = {
        f"fid_{name}_frames": frechet_distance(rf.flatten(0, 1), ff.flatten(0, 1)),
        f"fvd_proxy_{name}": frechet_distance(rf.flatten(1), ff.flatten(1)),
        "frame_consistency": frame_consistency(ff),
        "frame_consistency_real": frame_consistency(rf),
        "frame_consistency_by_pair": frame_consistency_by_pair(ff),
    }
    if frame_network.predicts_fmnist_classes:
        result["class_accuracy_frames"] = class_accuracy(fl.flatten(0, 1), labels.repeat_interleave(F))
        # Per frame index: where along the clip the class is lost (the first block is drawn
        # from the condition alone, later ones also from the frames before them).
        result["class_accuracy_by_frame"] = [class_accuracy(fl[:, f], labels) for f in range(F)]
        if per_clip:
            right = fl.argmax(-1) == torch.as_tensor(labels).to(fl.device)[:, None]
            result["class_accuracy_by_clip"] = right.double().mean(1).tolist()
    if per_clip:
        result["frame_consistency_by_clip"] = frame_consistency_by_clip(ff)
        result["within_class_spread"] = within_class_spread(ff.mean(1), labels)
    if clip_network is not None:
        result[f"fvd_{clip_network.name}"] = frechet_distance(clip_network(real)[0], clip_network(fake)[0])
    return result


def sample_for_eval(pipe: Pipeline, num: int, seed: int = 0, batch_size: int = 100,
                    progress: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """``num`` class-balanced samples (label ``i % K``, seed ``seed + i``), their labels and the
    seconds they took: what every evaluation scores."""
    labels = class_balanced_labels(num, pipe.config.num_classes)
    t0 = time.perf_counter()
    samples = pipe(labels, seeds=range(seed, seed + num), batch_size=batch_size, progress=progress)
    return samples, labels, time.perf_counter() - t0


def sampling_record(pipe: Pipeline, seed: int) -> dict:
    """What a score was sampled with, for its JSON: every setting, the guide, the seed."""
    s = pipe.settings
    record = {"cfg_scale": s.cfg_scale, "num_steps": s.num_steps, "sampler": s.sampler,
              "clip_denoised": s.clip_denoised, "guidance_interval": list(s.guidance_interval or (0.0, 1.0)),
              "evaluations_per_block": s.evaluations_per_block(pipe.config)}
    if s.timesteps is not None:
        record["timesteps"] = s.step_timesteps
    if s.history_scale != 1.0:
        record["history_scale"] = s.history_scale
    if pipe.guide is not None:
        record.update(guide_model=pipe.guide.source, guide_scale=pipe.guide.scale)
    return {**record, "seed": seed}


def evaluate(pipe: Pipeline, num: int = 1000, seed: int = 0, classifier_path=None, real: torch.Tensor | None = None,
             progress: bool = False, inception_weights=None, i3d_path=None, return_samples: bool = False,
             real_floor: bool = True):
    """Sample ``num`` class-balanced samples with ``pipe`` and score them (see module docstring).

    Returns the metrics dict, or with ``return_samples`` ``(metrics, samples, labels)``: sample
    i has label ``i % num_classes`` and seed ``seed + i`` (so a caller can show what was scored).

    Always scored with the offline Fashion-MNIST network for 1-channel models; with
    ``inception_weights`` (images) and ``i3d_path`` (videos) also with Inception-V3 / I3D.
    The data section the model was trained on (``pipe.data``) sets how fast Moving
    Fashion-MNIST reference clips move. ``real_floor``: with the built-in reference data, also
    score ``num`` real samples that are not in the reference set (training images; held-out
    test clips) the same way: the ``*_floor`` keys, what a perfect generator would get at this N.
    """
    cfg = pipe.config
    device = pipe.device
    data = pipe.data
    networks = []
    if cfg.in_channels == 1:
        networks.append(FMNISTFeatures(classifier_path, device=device))
    if inception_weights is not None:
        networks.append(InceptionFeatures(inception_weights, device=device))
    clip_network = I3DFeatures(i3d_path, device=device) if i3d_path is not None else None
    if not networks:
        raise ValueError(f"no feature network for {cfg.in_channels}-channel samples: pass inception_weights= "
                         f"(Inception-V3 weight file) to score them")
    if clip_network is not None and not cfg.is_video:
        raise ValueError("i3d_path scores videos; this model makes images (use inception_weights)")
    floor_samples = None
    if real is None:  # before sampling: a model without a reference set fails in seconds, not after the run
        real = _default_real(cfg, data)
        if real_floor:
            floor_samples = _real_floor_samples(cfg, data, num)
    fake, labels, seconds = sample_for_eval(pipe, num, seed, progress=progress)
    result = {}
    stages = [(False, i, n) for i, n in enumerate(networks)]
    if floor_samples is not None:
        stages += [(True, i, n) for i, n in enumerate(networks)]
    if progress:
        from tqdm.auto import tqdm

        stages = tqdm(stages, desc="scoring", unit="pass")
    for is_floor, i, network in stages:
        samples, sample_labels = floor_samples if is_floor else (fake, labels)
        if cfg.is_video:
            scores = video_metrics(samples, sample_labels, real, network, clip_network if i == 0 else None)
        else:
            scores = image_metrics(samples, sample_labels, real, network)
        if is_floor:
            scores = {f"{k}_floor": v for k, v in scores.items() if k.startswith(("fid_", "fvd_"))}
        result.update(scores)
    result.update({"num_samples": len(fake), "num_real": len(real), **sampling_record(pipe, seed),
                   "sampling_seconds": seconds, "seconds_per_sample": seconds / num})
    return (result, fake, labels) if return_samples else result


def _real_floor_samples(cfg, data: dict | None, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` real samples outside the reference set, class-balanced like the generated ones."""
    if cfg.is_video:
        frames, h, _ = cfg.input_size
        return moving_fmnist_test_clips(num, frames, h, first=1000, **moving_fmnist_motion(data))
    from ardiff.data.fashion_mnist import FashionMNIST

    train = FashionMNIST(split="train", pad_to=fmnist_canvas(cfg.input_size))
    wanted = torch.arange(num) % cfg.num_classes if cfg.num_classes else None
    if wanted is None:
        return train.images[:num].float() / 127.5 - 1, train.labels[:num]
    by_class = {int(c): torch.nonzero(train.labels == c).flatten() for c in wanted.unique()}
    index = torch.stack([by_class[int(c)][k // cfg.num_classes] for k, c in enumerate(wanted)])
    return train.images[index].float() / 127.5 - 1, wanted


def proportion_interval(value: float, num: int) -> float:
    """Half width of the normal-approximation 95% interval of a proportion over ``num`` items."""
    return 1.96 * (max(value * (1 - value), 0.0) / num) ** 0.5


def reliability_notes(result: dict, num: int) -> dict[str, str]:
    """A warning for each metric that means little at the N used, keyed like ``result``."""
    notes = {}
    for key, value in result.items():
        if not isinstance(value, float) or key.endswith("_floor"):
            continue
        if key.startswith(("fid_", "fvd_")):
            floor = result.get(f"{key}_floor")
            floor_text = f"real-data floor at this N: {floor:.2f}" if floor is not None else "no real-data floor"
            bias = f"N={num} is small: biased upwards, compare only at equal N; " if num < 1000 else ""
            notes[key] = f"{bias}{floor_text}"
        elif key.startswith("kid_") and not key.endswith("_std"):
            std = result.get(f"{key}_std", 0.0)
            if std > abs(value) / 2:
                notes[key] = f"spread {std:.4f} is more than half the value: not significant at N={num}"
        elif key.startswith(("precision_", "recall_")) and num < 500:
            notes[key] = f"nearest-neighbour estimate over N={num} < 500: unreliable"
        elif key.startswith("is_") and num < 1000:
            notes[key] = f"N={num} < 1000: rough"
        elif key.startswith("class_accuracy") and num < 400:
            half_width = proportion_interval(value, num)
            notes[key] = f"+-{half_width:.3f} (95% interval at N={num})"
    return notes


def _default_real(cfg, data: dict | None = None) -> torch.Tensor:
    if cfg.in_channels != 1:
        raise ValueError("the offline metrics read 1-channel Fashion-MNIST data; pass real= for other data")
    if cfg.is_video:
        frames, h, w = cfg.input_size
        return moving_fmnist_test_clips(1000, frames, h, **moving_fmnist_motion(data))[0]
    from ardiff.data.fashion_mnist import FashionMNIST

    return FashionMNIST(split="test", pad_to=fmnist_canvas(cfg.input_size)).images.float() / 127.5 - 1


# ---------------------------------------------------------------------------
#                  Sample sets against a named reference (ADM style)
# ---------------------------------------------------------------------------
def evaluate_samples(samples: torch.Tensor, labels: torch.Tensor | None, reference, named, *,
                     save_stats=None, use_cache: bool = True, seed: int = 0) -> dict:
    """Score samples (N, C, H, W) / (N, C, F, H, W) in [-1, 1] against a
    :class:`~ardiff.eval.reference.Reference` with a :class:`~ardiff.eval.reference.NamedNetwork`.

    Frechet distance always; KID, precision/recall and the real-data floor when the reference
    has features (not bare ``mu``/``sigma``); IS from the network's logits; class accuracy with
    the Fashion-MNIST network and labels. The floor: N reference items drawn at random (seeded)
    against the other M - N, reported when M >= 2 N.
    """
    from ardiff.eval.metrics import FeatureStats
    from ardiff.eval.reference import network_pixels, reference_features, sample_features

    samples = network_pixels(named, samples)  # grey stored as RGB reads as grey for the fmnist network
    N = len(samples)
    is_video = samples.dim() == 5
    ref = reference_features(reference, named, tuple(samples.shape[1:]), save_stats=save_stats, use_cache=use_cache)
    feats, logits = sample_features(named, samples)
    feats = feats.float()
    if feats.shape[1] != ref.stats.mean.shape[0]:
        raise ValueError(f"reference {reference.spec} holds statistics of {ref.stats.mean.shape[0]}-d features; "
                         f"the {named.name} network gives {feats.shape[1]}-d: make the reference statistics with "
                         f"the same network (--save-stats)")
    name = named.name
    key = f"fvd_{name}" if named.reads_clips else (f"fvd_proxy_{name}" if is_video else f"fid_{name}")
    result = {key: frechet_distance(ref.stats, FeatureStats.from_features(feats))}
    frames = None
    if is_video and not named.reads_clips:
        F = samples.shape[2]
        frames = (feats.view(N, F, -1), None if ref.features is None else ref.features.view(len(ref.features), F, -1))
        if frames[1] is not None:
            result[f"fid_{name}_frames"] = frechet_distance(frames[1].flatten(0, 1), frames[0].flatten(0, 1))
        result["frame_consistency"] = frame_consistency(frames[0])
        result["frame_consistency_by_pair"] = frame_consistency_by_pair(frames[0])
        if frames[1] is not None:
            result["frame_consistency_real"] = frame_consistency(frames[1])
    if ref.features is not None:
        rf = ref.features.float()
        kid, kid_std = kernel_inception_distance(rf, feats, subsets=50, subset_size=min(1000, N, len(rf)))
        result.update({f"kid_{name}": kid, f"kid_{name}_std": kid_std})
        if min(N, len(rf)) > 3:
            precision, recall = precision_recall(rf[:N], feats)
            result.update({f"precision_{name}": precision, f"recall_{name}": recall})
    if logits is not None and not is_video:
        result[f"is_{name}"] = inception_score(logits)[0]
    if name == "fmnist" and labels is not None:
        if is_video:
            F = samples.shape[2]
            result["class_accuracy_frames"] = class_accuracy(logits.flatten(0, 1), labels.repeat_interleave(F))
        else:
            result["class_accuracy"] = class_accuracy(logits, labels)
    floor = None
    if ref.features is not None and len(ref.features) >= 2 * N:
        perm = torch.randperm(len(ref.features), generator=torch.Generator().manual_seed(seed))
        held, rest = ref.features[perm[:N]].float(), ref.features[perm[N:]].float()
        result[f"{key}_floor"] = frechet_distance(rest, held)
        if frames is not None:
            F = samples.shape[2]
            result[f"fid_{name}_frames_floor"] = frechet_distance(rest.view(-1, rest.shape[1] // F),
                                                                  held.view(-1, held.shape[1] // F))
        floor = {"num": N, "against": len(rest), "what": f"{N} reference items (seeded draw) vs the other "
                                                         f"{len(rest)}: the score of a perfect generator at this N"}
    result.update({
        "num_samples": N, "num_reference": len(ref.features) if ref.features is not None else ref.stats.count,
        "feature_network": named.describe(), "reference": reference.describe(),
        "reference_stats_cached": ref.cached,
        "real_data_floor": floor or f"not computed: the reference needs >= {2 * N} items with features "
                                    f"(has {ref.stats.count}{'' if ref.features is not None else ', statistics only'})",
    })
    return result


def evaluate_against_reference(source: "str | Pipeline", reference: str, features: str = "fmnist", *,
                               num: int = 1000, seed: int = 0, classifier_path=None, save_stats=None,
                               device=None, progress: bool = False, network=None) -> dict:
    """``ardiff eval SOURCE --reference REF --features NAME``: SOURCE is a sample file (.npz) or a
    :class:`Pipeline` sampled here (``num`` class-balanced samples with seeds ``seed + i``,
    decoded by its VAE). ``device``: where a sample file is scored (a pipeline's samples are
    scored on its device). ``network``: a stand-in module for the named network (tests)."""
    from ardiff.eval.reference import build_network, check_compatible, load_reference

    is_file = not isinstance(source, Pipeline)
    device = default_device(device) if is_file else source.device
    named = build_network(features, device=device, classifier_path=classifier_path, network=network)
    if is_file:
        from ardiff.eval.sample_files import load_sample_npz

        file = load_sample_npz(source)
        samples, labels = file.tensors()
        data = (file.job or {}).get("data")
        info = {"samples": str(source), "sampling": file.job}
    else:
        pipe, data = source, source.data
        c = pipe.config
        if pipe.vae_record is None:  # check the reference against the samples' shape before the (long) run
            pixel_shape = (c.in_channels, *c.input_size)
            check_compatible(load_reference(reference, pixel_shape, data), pixel_shape, named)
        samples, labels, seconds = sample_for_eval(pipe, num, seed, progress=progress)
        info = {"model": pipe.source, **sampling_record(pipe, seed),
                "sampling_seconds": seconds}
    ref = load_reference(reference, tuple(samples.shape[1:]), data)
    result = evaluate_samples(samples, labels, ref, named, save_stats=save_stats, seed=seed)
    result.update(info)
    return result
