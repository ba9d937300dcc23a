"""A VAE latent cache: encode a dataset once, train on its latents many times.

The paper trains on SD-VAE latents of ImageNet and UCF-101. Encoding on the fly would
cost more than the diffusion model itself, so :func:`encode_latent_cache` writes the
posterior *means* (deterministic, so a cache can be rebuilt bit for bit) into safetensors
shards plus a ``meta.json``; :class:`LatentDataset` serves them scaled by the VAE's
``scaling_factor`` to roughly unit variance, the space the diffusion model is trained in.
Videos (3, F, H, W) are encoded frame by frame into (C, F, h, w).

With ``moments=True`` the cache also stores the posterior's standard deviations, and
:meth:`LatentDataset.draw` returns a fresh posterior sample ``mean + std * eps``: the trainer
draws one per item and step (the paper's recipe samples the VAE posterior at every step,
as DiT/ADM training on the fly does), from a seed that is a function of (run seed, step,
position in the global batch).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ardiff.utils.io import atomic_save_safetensors, atomic_write_json

CACHE_FORMAT = "ardiff-latents"
CACHE_VERSION = 1
SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def shard_name(k: int) -> str:
    return f"latents_{k:05d}.safetensors"


def load_vae(vae_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """A diffusers ``AutoencoderKL`` from a local directory, in eval mode; never downloads."""
    from diffusers import AutoencoderKL  # deferred: importing diffusers takes seconds

    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"VAE directory {vae_dir} not found or has no config.json; point data.vae at a local "
            f"diffusers AutoencoderKL (e.g. `huggingface-cli download stabilityai/sd-vae-ft-ema "
            f"--local-dir {vae_dir}` on a machine with network access)")
    return AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).to(device).eval()


@dataclasses.dataclass(frozen=True)
class VAERecord:
    """The VAE that turns a latent model's samples into pixels, as recorded with the model
    (``_vae`` in its config.json) and with a latent cache (``meta.json``)."""

    path: str  # a local diffusers AutoencoderKL directory
    scaling_factor: float
    shift_factor: float = 0.0

    @classmethod
    def from_dict(cls, record: dict, source: str = "_vae") -> "VAERecord":
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(record, dict) or "path" not in record or "scaling_factor" not in record \
                or set(record) - known:
            raise ValueError(f"{source}: a VAE record holds path, scaling_factor and optionally shift_factor; "
                             f"got {record!r}")
        return cls(str(record["path"]), float(record["scaling_factor"]), float(record.get("shift_factor", 0.0)))

    @classmethod
    def recorded(cls, model_dir: str | os.PathLike) -> "VAERecord | None":
        """The VAE recorded with a model, or None for a pixel-space model."""
        from ardiff.models.checkpoint import load_extras

        record = load_extras(model_dir).get("vae")
        return None if record is None else cls.from_dict(record, f"{model_dir}/config.json: _vae")

    @classmethod
    def from_cache_meta(cls, meta) -> "VAERecord | None":
        """The VAE a latent cache was encoded with (None for a dataset that is not a cache)."""
        if not isinstance(meta, dict) or "vae_dir" not in meta:
            return None
        return cls(str(meta["vae_dir"]), float(meta["scaling_factor"]), float(meta.get("shift_factor", 0.0)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load(self, device: str | torch.device = "cpu"):
        return load_vae(self.path, device)

    def decode(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """Model-space latents -> images/clips in [-1, 1]."""
        return decode_latents(vae, latents, self.scaling_factor, self.shift_factor)

    def encode(self, vae, images: torch.Tensor) -> torch.Tensor:
        """Images/clips in [-1, 1] -> model-space latents (posterior means)."""
        return encode_images(vae, images, self.scaling_factor, self.shift_factor)


def _encode(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of images (B, 3, H, W) or clips (B, 3, F, H, W), frame by frame."""
    if x.ndim == 5:
        b, c, f, h, w = x.shape
        z, s = _encode(vae, x.transpose(1, 2).reshape(b * f, c, h, w))
        return tuple(t.reshape(b, f, *t.shape[1:]).transpose(1, 2) for t in (z, s))
    dist = vae.encode(x).latent_dist
    return dist.mean, dist.std


@torch.no_grad()
def encode_latent_cache(dataset: Dataset, vae_dir: str | os.PathLike, out_dir: str | os.PathLike,
                        shard_size: int = 1024, batch_size: int = 32, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, moments: bool = False) -> dict[str, Any]:
    """Encode ``dataset`` (items ``(x, label)``, x in [-1, 1] of shape (3, H, W) or (3, F, H, W)).

    Writes ``latents_00000.safetensors``, ... (tensors ``latents`` of ``dtype`` and
    ``labels`` int64, ``shard_size`` items each, the last one shorter; with ``moments`` also
    ``std``, the posterior standard deviations, for per-step posterior samples) and then
    ``meta.json``, each atomically; a cache without ``meta.json`` is incomplete. Returns the
    metadata. ``out_dir`` must not already hold a cache.
    """
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError(f"shard_size={shard_size} and batch_size={batch_size} must both be > 0")
    if dtype not in (torch.float16, torch.float32):
        raise ValueError(f"dtype={dtype}; latents are stored as torch.float16 or torch.float32")
    out_dir = Path(out_dir)
    if (out_dir / "meta.json").exists():
        raise FileExistsError(f"{out_dir} already holds a latent cache (meta.json); remove it or choose "
                              f"another out_dir")
    if len(dataset) == 0:
        raise ValueError("the dataset to encode is empty")
    x, _ = dataset[0]
    if x.ndim not in (3, 4) or x.shape[0] != 3:
        raise ValueError(f"samples have shape {tuple(x.shape)}; the VAE encodes RGB images (3, H, W) "
                         f"or clips (3, F, H, W)")
    vae = load_vae(vae_dir, device)
    out_dir.mkdir(parents=True, exist_ok=True)

    shards: list[dict[str, Any]] = []
    buffer_z, buffer_s, buffer_y = None, None, torch.zeros(0, dtype=torch.int64)  # encoded, not yet in a shard

    def write_shard(z: torch.Tensor, s: torch.Tensor, y: torch.Tensor) -> None:
        name = shard_name(len(shards))
        tensors = {"latents": z, "labels": y, **({"std": s} if moments else {})}
        atomic_save_safetensors(tensors, out_dir / name)
        shards.append({"file": name, "count": len(y)})

    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        z, s = (t.to("cpu", dtype) for t in _encode(vae, images.to(device=device, dtype=vae.dtype)))
        buffer_z = z if buffer_z is None else torch.cat([buffer_z, z])
        buffer_s = s if buffer_s is None else torch.cat([buffer_s, s])
        buffer_y = torch.cat([buffer_y, torch.as_tensor(labels, dtype=torch.int64).reshape(-1)])
        while len(buffer_y) >= shard_size:
            write_shard(buffer_z[:shard_size], buffer_s[:shard_size], buffer_y[:shard_size])
            buffer_z, buffer_s, buffer_y = buffer_z[shard_size:], buffer_s[shard_size:], buffer_y[shard_size:]
    if len(buffer_y):
        write_shard(buffer_z, buffer_s, buffer_y)

    meta = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "vae_dir": str(Path(vae_dir).resolve()),
        "scaling_factor": float(vae.config.scaling_factor),
        "shift_factor": float(vae.config.get("shift_factor") or 0.0),
        "latent_shape": list(buffer_z.shape[1:]),
        "sample_shape": list(x.shape),
        "dtype": str(dtype).removeprefix("torch."),
        "count": sum(s["count"] for s in shards),
        "shard_size": shard_size,
        "num_classes": getattr(dataset, "num_classes", None),
        "shards": shards,
        "moments": bool(moments),
    }
    atomic_write_json(out_dir / "meta.json", meta, indent=2)
    return meta


def _read_header(path: Path, keys: tuple[str, ...] = ("latents", "labels")) -> tuple[int, dict[str, Any]]:
    """Data offset and tensor table of a safetensors file; a ``ValueError`` naming it if malformed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(f.read(n))
        for key in keys:
            entry = header[key]
            begin, end = entry["data_offsets"]
            itemsize = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).itemsize
            if end - begin != itemsize * int(np.prod(entry["shape"])) or 8 + n + end > size:
                raise ValueError(f"tensor {key!r} is truncated")
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"latent shard {path} is corrupt or not a safetensors file ({e!r}); "
                         f"re-encode the cache with encode_latent_cache") from e
    except ValueError as e:
        raise ValueError(f"latent shard {path} is corrupt: {e}; re-encode the cache with encode_latent_cache") from e
    return 8 + n, header


class LatentDataset(Dataset):
    """Items ``((latent - shift_factor) * scaling_factor, label)`` of a cache from :func:`encode_latent_cache`.

    Shard headers are checked at construction; latents are read from disk one item at a
    time (the page cache keeps hot shards in memory), so an ImageNet-sized cache needs no
    RAM of its own and the dataset pickles cheaply into DataLoader workers.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        meta_path = self.cache_dir / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: {self.cache_dir} is not a (complete) latent cache; "
                                    f"build one with ardiff.data.latents.encode_latent_cache")
        try:
            self.meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read {meta_path}: {e}") from e
        if self.meta.get("format") != CACHE_FORMAT or self.meta.get("version") != CACHE_VERSION:
            raise ValueError(f"{meta_path} is not an {CACHE_FORMAT} v{CACHE_VERSION} cache description")
        self.scaling_factor = float(self.meta["scaling_factor"])
        self.shift_factor = float(self.meta["shift_factor"])
        self.latent_shape = tuple(self.meta["latent_shape"])
        self.num_classes = self.meta["num_classes"]
        self.moments = bool(self.meta.get("moments", False))  # posterior std stored: draw() samples
        self._shards: list[tuple[Path, int, np.dtype, int | None]] = []  # file, item 0's latent and std offsets
        labels, ends = [], []
        for shard in self.meta["shards"]:
            path = self.cache_dir / shard["file"]
            if not path.is_file():
                raise FileNotFoundError(f"latent shard {path} listed in {meta_path} is missing")
            data_start, header = _read_header(path, ("latents", "labels", "std") if self.moments
                                              else ("latents", "labels"))
            lat, lab = header["latents"], header["labels"]
            if (lat["dtype"] not in ("F16", "F32") or lab["dtype"] != "I64"
                    or lat["shape"] != [shard["count"], *self.latent_shape] or lab["shape"] != [shard["count"]]):
                raise ValueError(f"latent shard {path} holds latents {lat['dtype']} {lat['shape']} and labels "
                                 f"{lab['dtype']} {lab['shape']}; {meta_path} says {shard['count']} items of "
                                 f"shape {list(self.latent_shape)}; re-encode the cache")
            with open(path, "rb") as f:
                f.seek(data_start + lab["data_offsets"][0])
                labels.append(np.frombuffer(f.read(8 * shard["count"]), dtype=np.int64))
            std = data_start + header["std"]["data_offsets"][0] if self.moments else None
            if self.moments and (header["std"]["shape"] != lat["shape"] or header["std"]["dtype"] != lat["dtype"]):
                raise ValueError(f"latent shard {path}: std {header['std']['shape']} does not match the latents "
                                 f"{lat['shape']}; re-encode the cache")
            self._shards.append((path, data_start + lat["data_offsets"][0],
                                 np.dtype(SAFETENSORS_DTYPES[lat["dtype"]]), std))
            ends.append((ends[-1] if ends else 0) + shard["count"])
        self.labels = torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.int64))
        self._ends = ends
        self._numel = int(np.prod(self.latent_shape))

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, index: int, which: str) -> torch.Tensor:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a latent cache of {n} items")
        index %= n
        k = bisect.bisect_right(self._ends, index)
        path, latent_offset, dtype, std_offset = self._shards[k]
        row = index - (self._ends[k - 1] if k else 0)
        nbytes = self._numel * dtype.itemsize
        with open(path, "rb") as f:
            f.seek((latent_offset if which == "latents" else std_offset) + row * nbytes)
            return torch.from_numpy(np.frombuffer(f.read(nbytes), dtype=dtype).reshape(self.latent_shape).copy())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior mean, scaled (deterministic)."""
        z = self._read(index, "latents")
        return (z.float() - self.shift_factor) * self.scaling_factor, self.labels[index % len(self)]

    def draw(self, index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A posterior sample ``mean + std * eps``, scaled (eps from ``generator``); the mean
        when the cache stores no moments."""
        if not self.moments:
            return self[index]
        mean, std = self._read(index, "latents").float(), self._read(index, "std").float()
        z = mean + std * torch.randn(mean.shape, generator=generator)
        return (z - self.shift_factor) * self.scaling_factor, self.labels[index % len(self)]


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0,
                  batch_size: int = 32) -> torch.Tensor:
    """Images/clips in [-1, 1] to model-space latents (posterior means, scaled as a cache serves them)."""
    out = []
    for i in range(0, len(images), batch_size):
        mean, _ = _encode(vae, images[i : i + batch_size].to(device=vae.device, dtype=vae.dtype))
        out.append(((mean.float() - shift_factor) * scaling_factor).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, scaling_factor: float, shift_factor: float = 0.0) -> torch.Tensor:
    """Model-space latents (B, C, h, w) or (B, C, F, h, w) to images/clips in [-1, 1], undoing the cache's scaling."""
    z = latents / scaling_factor + shift_factor
    if z.ndim == 5:
        b, c, f, h, w = z.shape
        x = decode_latents(vae, z.transpose(1, 2).reshape(b * f, c, h, w), 1.0)
        return x.reshape(b, f, *x.shape[1:]).transpose(1, 2)
    return vae.decode(z.to(device=vae.device, dtype=vae.dtype)).sample.clamp(-1, 1)
