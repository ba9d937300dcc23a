"""Reference sets and feature networks named on the command line, with cached statistics.

A reference (``--reference``) is one of

- a folder of images (any depth; grey images stay grey, others become RGB; all one size);
- an ADM-style ``.npz``: uint8 images as ``arr_0`` (like a sample file), or statistics
  ``mu``/``sigma`` (ADM's reference batches; our caches add ``features``);
- a built-in set: ``fmnist-test`` (the 10,000 Fashion-MNIST test images, padded to the
  samples' size as training pads them) or ``moving-fmnist-test`` (Moving Fashion-MNIST test
  clips that move like the model's training clips).

A feature network (``--features``) is ``fmnist`` (the shipped classifier), ``inception:PATH``
(torch-fidelity's FID Inception-V3 weights: 2048-d pool features, IS from its logits, ADM /
torch-fidelity conventions) or ``i3d:PATH`` (the TorchScript I3D of the FVD literature).
``fmnist`` reads grey pixels: grey images stored as RGB (3 equal channels, ADM's layout) are
read as grey; colour is refused.

Features of a folder or ``.npz`` reference are computed once and cached beside it as
``REF.<network id>.stats.npz`` (``mu``, ``sigma``, ``features``), keyed by the reference's
size and modification time and by a digest of the network's weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ardiff.eval.metrics import FeatureStats

BUILTIN_REFERENCES = ("fmnist-test", "moving-fmnist-test")
FEATURE_NAMES = ("fmnist", "inception", "i3d")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FMNIST_MIN_SIZE = 28


# ---------------------------------------------------------------------------
#                             Feature networks by name
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class NamedNetwork:
    """A feature network with what a result must say about it."""

    network: object  # a FeatureNetwork: samples -> (features, logits or None)
    name: str  # fmnist, inception, i3d
    weights: str  # the weight file read
    digest: str  # first 16 hex digits of its sha256
    reads_clips: bool  # I3D reads whole clips; image networks read frames

    @property
    def id(self) -> str:
        return f"{self.name}-{self.digest}"

    def describe(self) -> dict:
        return {"name": self.name, "weights": self.weights, "sha256_16": self.digest}


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def split_feature_spec(spec: str) -> tuple[str, str | None]:
    """``fmnist`` | ``inception:PATH`` | ``i3d:PATH`` -> (name, path); ValueError otherwise."""
    name, _, path = spec.partition(":")
    if name not in FEATURE_NAMES:
        raise ValueError(f"unknown feature network {spec!r}: use fmnist, inception:PATH or i3d:PATH")
    if name == "fmnist" and path:
        raise ValueError("fmnist is the shipped classifier and takes no path (use --classifier FILE for another one)")
    if name != "fmnist" and not path:
        raise ValueError(f"{name} needs its local weight file: {name}:PATH (nothing is downloaded)")
    return name, path or None


def build_network(spec: str, device="cpu", classifier_path=None, network=None) -> NamedNetwork:
    """The feature network a spec names. ``network`` replaces the loaded module (tests build
    stand-ins of the same shape and run them through the same wrapper)."""
    from ardiff.eval.features import FMNISTFeatures, I3DFeatures, InceptionFeatures

    name, path = split_feature_spec(spec)
    if name == "fmnist":
        from ardiff.eval.fmnist_classifier import ASSET

        weights = Path(classifier_path) if classifier_path else ASSET
        wrapped = FMNISTFeatures(model=network) if network is not None else FMNISTFeatures(weights, device=device)
        return NamedNetwork(wrapped, "fmnist", str(weights), file_digest(weights), reads_clips=False)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{name} weights {path} not found (a local file; nothing is downloaded)")
    if name == "inception":
        wrapped = InceptionFeatures(path, device=device, net=network)
    else:
        wrapped = I3DFeatures(path, device=device, net=network)
    return NamedNetwork(wrapped, name, str(path), file_digest(path), reads_clips=name == "i3d")


def sample_features(named: NamedNetwork, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Features (N, D) of images or clips and logits (N, K) / per frame (N, F, K), or None.

    Image networks read clips frame by frame, the clip's frame features concatenated (so
    ``features.view(N, F, -1)`` gives the per-frame features)."""
    if samples.dim() == 5 and not named.reads_clips:
        from ardiff.eval.features import FrameFeatures

        feats, logits = FrameFeatures(named.network).per_frame(samples)
        return feats.flatten(1), logits
    if samples.dim() == 4 and named.reads_clips:
        raise ValueError("i3d reads clips (N, C, F, H, W); these samples are images: use inception:PATH or fmnist")
    return named.network(samples)


def network_pixels(named: NamedNetwork, x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, ...) as ``named`` reads it: for the grey Fashion-MNIST network, grey images
    stored as RGB (3 equal channels, the layout ADM's evaluator wants) become 1 channel. Real
    colour is left as it is, for :func:`check_compatible` to refuse."""
    if (named.name == "fmnist" and x.dim() >= 4 and x.shape[1] == 3
            and torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])):
        return x[:, :1]
    return x


# ---------------------------------------------------------------------------
#                                   References
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Reference:
    spec: str
    kind: str  # builtin | folder | npz-images | npz-stats
    samples: torch.Tensor | None = None  # [-1, 1], channel-first (None for statistics)
    stats: FeatureStats | None = None  # statistics-only references
    features: torch.Tensor | None = None  # statistics files that also hold features
    path: Path | None = None

    @property
    def count(self) -> int:
        if self.samples is not None:
            return len(self.samples)
        return self.stats.count if self.stats is not None else 0

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "num": self.count}


def load_reference(spec: str, sample_shape: tuple[int, ...], data: dict | None = None) -> Reference:
    """The reference ``spec`` names, for samples of ``sample_shape`` (C, H, W) or (C, F, H, W).

    ``data``: the generating model's recorded training data (``_data``), which
    ``moving-fmnist-test`` needs for the speed and item count of its clips."""
    if spec == "fmnist-test":
        from ardiff.data.fashion_mnist import FashionMNIST

        if len(sample_shape) != 3:
            raise ValueError("fmnist-test holds images; these samples are clips: use --reference moving-fmnist-test")
        images = FashionMNIST(split="test", pad_to=fmnist_canvas(sample_shape)).images.float() / 127.5 - 1
        return Reference(spec, "builtin", samples=images)
    if spec == "moving-fmnist-test":
        if len(sample_shape) != 4:
            raise ValueError("moving-fmnist-test holds clips; these samples are images: use --reference fmnist-test")
        _, frames, h, w = sample_shape
        if h != w:
            raise ValueError(f"moving-fmnist-test clips are square; the samples are {h}x{w}")
        clips, _ = moving_fmnist_test_clips(1000, frames, h, **moving_fmnist_motion(data))
        return Reference(spec, "builtin", samples=clips)
    path = Path(spec)
    if path.is_dir():
        return Reference(spec, "folder", samples=_read_image_folder(path), path=path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _read_reference_npz(path)
    raise ValueError(f"reference {spec!r} is not a folder, an .npz file, or one of {', '.join(BUILTIN_REFERENCES)}")


def fmnist_canvas(shape: tuple[int, ...]) -> int | None:
    """The canvas Fashion-MNIST items are padded to for samples whose last two sizes are
    ``shape[-2:]``: the same centring on black as training, so real and generated images reach
    the classifier through the same crop (None: the items' own 28 x 28)."""
    size = max(shape[-2:])
    return size if size > FMNIST_MIN_SIZE else None


def moving_fmnist_motion(data: dict | None) -> dict:
    """Speed and item count of the Moving Fashion-MNIST clips a model was trained on (its
    recorded ``_data``), so reference clips move like its training clips. A model trained on
    other data has no Moving Fashion-MNIST reference: that is an error, not a guess."""
    if data is None:
        raise ValueError("the model records no training data (_data in config.json), so the speed of its "
                         "Moving Fashion-MNIST reference clips is unknown: pass real= clips, or add "
                         '"_data": {"name": "moving_fashion_mnist", "speed": ..., "num_items": ...} to its config.json')
    if data.get("name") != "moving_fashion_mnist":
        raise ValueError(f"the offline video metrics compare with Moving Fashion-MNIST clips; this model was trained "
                         f"on {data.get('name')!r}: pass real= clips of that data")
    return {"speed": float(data["speed"]), "num_items": int(data.get("num_items", 1))}


def moving_fmnist_test_clips(num: int, frames: int, canvas: int, first: int = 0, *, speed: float,
                             num_items: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving Fashion-MNIST test clips ``first..first+num-1``: (num, 1, frames, canvas, canvas), labels."""
    from ardiff.data.moving_fmnist import MovingFashionMNIST

    data = MovingFashionMNIST(split="test", num_frames=frames, canvas_size=canvas, num_videos=first + num,
                              speed=speed, num_items=num_items)
    items = [data[i] for i in range(first, first + num)]
    return torch.stack([v for v, _ in items]), torch.tensor([int(label) for _, label in items])


def _read_image_folder(root: Path) -> torch.Tensor:
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"reference folder {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as image:
                image.load()
                grey = image.mode in ("L", "1", "I", "I;16", "F")
                array = np.asarray(image.convert("L" if grey else "RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read reference image {f}: {e}") from e
        array = array[..., None] if array.ndim == 2 else array
        if arrays and array.shape != arrays[0].shape:
            raise ValueError(f"reference images differ in size or mode: {files[0].name} is {arrays[0].shape}, "
                             f"{f.name} is {array.shape} (H, W, C); give one size (and colour mode) throughout")
        arrays.append(array)
    from ardiff.eval.sample_files import from_uint8

    return from_uint8(np.stack(arrays))


def _read_reference_npz(path: Path) -> Reference:
    from ardiff.eval.sample_files import check_npz, load_sample_npz

    with np.load(check_npz(path), allow_pickle=False) as data:
        keys = set(data.files)
        if {"mu", "sigma"} <= keys:
            mu, sigma = torch.from_numpy(data["mu"]).double(), torch.from_numpy(data["sigma"]).double()
            if mu.dim() != 1 or sigma.shape != (len(mu), len(mu)):
                raise ValueError(f"{path}: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} are not a mean (D,) "
                                 f"and covariance (D, D)")
            features = torch.from_numpy(data["features"]) if "features" in keys else None
            count = int(data["num"]) if "num" in keys else (len(features) if features is not None else 0)
            return Reference(str(path), "npz-stats", stats=FeatureStats(mu, sigma, count), features=features,
                             path=path)
    return Reference(str(path), "npz-images", samples=load_sample_npz(path).tensors()[0], path=path)


# ---------------------------------------------------------------------------
#                        Shape checks and cached features
# ---------------------------------------------------------------------------
def check_compatible(reference: Reference, sample_shape: tuple[int, ...], named: NamedNetwork) -> None:
    """A ValueError naming the mismatch when the reference cannot be compared with the samples."""
    if reference.samples is None:
        return  # statistics: checked against the network's feature size when scored
    ref_shape = tuple(network_pixels(named, reference.samples).shape[1:])
    what = "clips (C, F, H, W)" if len(sample_shape) == 4 else "images (C, H, W)"
    if len(ref_shape) != len(sample_shape):
        raise ValueError(f"reference {reference.spec} holds {ref_shape}, the samples are {what} "
                         f"{tuple(sample_shape)}: compare images with images and clips with clips")
    for shape, who in ((sample_shape, "samples"), (ref_shape, f"reference {reference.spec}")):
        if shape[0] not in (1, 3):
            raise ValueError(f"the {who} have {shape[0]} channels; feature networks read grey (1) or RGB (3) "
                             f"pixels (decode latents first: --vae)")
    if named.name == "fmnist":
        for shape, who in ((sample_shape, "samples"), (ref_shape, f"reference {reference.spec}")):
            if shape[0] != 1:
                raise ValueError(f"the fmnist network reads grey images; the {who} have {shape[0]} channels "
                                 f"(use inception:PATH for RGB data)")
            if min(shape[-2:]) < FMNIST_MIN_SIZE:
                raise ValueError(f"the fmnist network reads images of at least {FMNIST_MIN_SIZE}x{FMNIST_MIN_SIZE}; "
                                 f"the {who} are {shape[-2]}x{shape[-1]}")
        if len(sample_shape) == 4 and sample_shape[1] != ref_shape[1]:
            raise ValueError(f"reference clips have {ref_shape[1]} frames, the samples {sample_shape[1]}")
        return
    # Inception / I3D resize inside: a size mismatch would measure the resize, not the model.
    if ref_shape[1:] != tuple(sample_shape[1:]):
        raise ValueError(f"reference {reference.spec} is {'x'.join(map(str, ref_shape[1:]))} (frames x H x W), "
                         f"the samples {'x'.join(map(str, sample_shape[1:]))}: {named.name} features of different "
                         f"sizes compare the resizing, not the model; make the reference at the samples' size")


def default_cache_path(reference: Reference, named: NamedNetwork) -> Path | None:
    """``REF.<network id>.stats.npz`` beside a folder or .npz reference; None for built-ins."""
    if reference.kind not in ("folder", "npz-images"):
        return None
    path = reference.path
    stem = path.name if path.is_dir() else path.with_suffix("").name
    return path.parent / f"{stem}.{named.id}.stats.npz"


def _fingerprint(path: Path) -> dict:
    """What the cache is valid for: the reference's size and modification times."""
    if path.is_file():
        st = path.stat()
        return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    stats = [p.stat() for p in files]
    return {"files": len(files), "bytes": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def write_stats(path: str | os.PathLike, features: torch.Tensor, named: NamedNetwork,
                source: dict | None = None) -> None:
    """A statistics file that is itself a valid ``--reference`` (``mu``, ``sigma``; plus
    ``features`` for KID, precision/recall and the floor)."""
    import io

    from ardiff.utils.io import atomic_write_bytes

    stats = FeatureStats.from_features(features)
    buffer = io.BytesIO()
    np.savez(buffer, mu=stats.mean.numpy(), sigma=stats.cov.numpy(), features=features.float().numpy(),
             num=np.array(len(features)), network=np.array(json.dumps(named.describe())),
             source=np.array(json.dumps(source or {})))
    atomic_write_bytes(path, buffer.getvalue())


@dataclasses.dataclass
class ReferenceFeatures:
    stats: FeatureStats
    features: torch.Tensor | None  # (M, D); None for statistics-only references
    cached: bool  # read from a cache file


def reference_features(reference: Reference, named: NamedNetwork, sample_shape: tuple[int, ...],
                       save_stats: str | os.PathLike | None = None, use_cache: bool = True) -> ReferenceFeatures:
    """Features of the reference under ``named``, from the cache beside it when valid."""
    check_compatible(reference, sample_shape, named)
    if reference.samples is None:
        return ReferenceFeatures(reference.stats, reference.features, cached=True)
    cache = default_cache_path(reference, named) if use_cache else None
    source = {"reference": reference.spec, **_fingerprint(reference.path)} if reference.path is not None else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                if json.loads(str(data["source"])) == source and "features" in data.files:
                    features = torch.from_numpy(data["features"])
                    result = ReferenceFeatures(FeatureStats.from_features(features), features, cached=True)
                    if save_stats:
                        write_stats(save_stats, features, named, source)
                    return result
        except (OSError, ValueError, KeyError) as e:
            warnings.warn(f"ignoring the unreadable statistics cache {cache} ({e}); recomputing", stacklevel=2)
    features, _ = sample_features(named, network_pixels(named, reference.samples))
    features = features.float()
    if save_stats:
        write_stats(save_stats, features, named, source)
    if cache is not None:
        try:
            write_stats(cache, features, named, source)
        except OSError as e:  # a read-only reference: the statistics are still used, only not kept
            warnings.warn(f"could not cache reference statistics beside {reference.spec} ({e}); pass --save-stats "
                          f"FILE to keep them elsewhere", stacklevel=2)
    return ReferenceFeatures(FeatureStats.from_features(features), features, cached=False)
