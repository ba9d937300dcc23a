"""Sample files in the DiT/ADM format, written by a resumable job that shards over ranks.

Format (what ADM's ``evaluator.py`` and DiT's ``sample_ddp.py`` exchange): one ``.npz`` with

- ``arr_0``: uint8 images (N, H, W, C), or clips (N, F, H, W, C); C is 3, or 1 for grey data
  (readers here accept both; ADM's evaluator wants 3, so ``--rgb`` repeats grey channels);
- ``arr_1``: int64 class labels (N,), for class-conditional models;
- ``ardiff_job``: the job description as JSON text (model, N, seed, sampling settings, VAE),
  ignored by other readers; it ties a file to the run that made it.

Sample i has label ``i % num_classes`` and its own seed ``seed + i``, so the file does not
depend on the batch it was drawn in, on how many ranks drew it, or on interruptions.

A job writes its batches as ``OUT.parts/chunk_XXXXXXX.npz`` (each atomically) after a
``job.json``; a rerun skips the chunks already there, a rerun with other settings is refused
(a file never mixes runs), and the finished file is assembled by rank 0 and renamed into place.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from ardiff.utils.io import atomic_write_bytes, atomic_write_json

JOB_KEY = "ardiff_job"
FORMAT = "ardiff-samples/1"


# ---------------------------------------------------------------------------
#                     [-1, 1] tensors <-> uint8 channel-last arrays
# ---------------------------------------------------------------------------
def to_uint8(samples: torch.Tensor, rgb: bool = False) -> np.ndarray:
    """(N, C, H, W) or (N, C, F, H, W) in [-1, 1] -> uint8 (N, H, W, C) / (N, F, H, W, C),
    rounded as ADM/DiT do: ``clamp(127.5 x + 128, 0, 255)``."""
    x = ((samples.detach().float().cpu() * 127.5) + 128).clamp(0, 255).to(torch.uint8)
    if x.dim() == 5:
        x = x.permute(0, 2, 3, 4, 1)
    elif x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    else:
        raise ValueError(f"samples must be (N, C, H, W) or (N, C, F, H, W), got {tuple(samples.shape)}")
    if rgb and x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return np.ascontiguousarray(x.numpy())


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 channel-last (N, H, W, C) / (N, F, H, W, C) -> float channel-first in [-1, 1]."""
    x = torch.from_numpy(np.asarray(images)).float() / 127.5 - 1
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x.permute(0, 4, 1, 2, 3)


def check_image_array(images: np.ndarray, source: str) -> np.ndarray:
    """A uint8 channel-last batch with 1 or 3 channels, or a ValueError that says what is wrong."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{source}: arr_0 is {images.dtype}; sample files hold uint8 images (N, H, W, C)")
    if images.ndim == 3:  # (N, H, W): grey images without a channel axis
        images = images[..., None]
    if images.ndim not in (4, 5) or images.shape[-1] not in (1, 3):
        raise ValueError(f"{source}: arr_0 has shape {images.shape}; expected uint8 (N, H, W, C) images or "
                         f"(N, F, H, W, C) clips with C = 1 (grey) or 3 (RGB)")
    if len(images) == 0:
        raise ValueError(f"{source}: arr_0 holds no images")
    return images


# ---------------------------------------------------------------------------
#                                Reading and writing
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class SampleFile:
    images: np.ndarray  # uint8 (N, H, W, C) or (N, F, H, W, C)
    labels: np.ndarray | None  # int64 (N,)
    job: dict | None  # the job that wrote it (None for files from elsewhere)

    @property
    def is_video(self) -> bool:
        return self.images.ndim == 5

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples in [-1, 1], channel-first, and labels."""
        return from_uint8(self.images), None if self.labels is None else torch.from_numpy(self.labels)


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def save_sample_npz(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray | None = None,
                    job: dict | None = None) -> Path:
    """Write an ADM-format sample file atomically."""
    images = check_image_array(images, str(path))
    arrays = {"arr_0": images}
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"{len(images)} images but labels of shape {labels.shape}")
        arrays["arr_1"] = labels
    if job is not None:
        arrays[JOB_KEY] = np.array(json.dumps(job, sort_keys=True))
    path = Path(path)
    atomic_write_bytes(path, _npz_bytes(arrays))
    return path


def check_npz(path: str | os.PathLike) -> Path:
    """An existing .npz (a zip archive), or a ValueError that names it (np.load would try to unpickle)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable .npz file (not a zip archive)")
    return path


def load_sample_npz(path: str | os.PathLike) -> SampleFile:
    """Read a sample file (ours or ADM/DiT's); pickled object arrays are refused."""
    path = check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "arr_0" not in data.files:
                raise ValueError(f"{path} has no arr_0 (keys: {data.files}); a sample file holds uint8 images as "
                                 f"arr_0 (and labels as arr_1)")
            images = check_image_array(data["arr_0"], str(path))
            labels = data["arr_1"].astype(np.int64) if "arr_1" in data.files else None
            job = json.loads(str(data[JOB_KEY])) if JOB_KEY in data.files else None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a readable .npz file ({e})") from e
    if labels is not None and labels.shape != (len(images),):
        raise ValueError(f"{path}: arr_1 holds {labels.shape} labels for {len(images)} images")
    return SampleFile(images, labels, job)


# ---------------------------------------------------------------------------
#                          The resumable, sharded job
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleJob:
    """What a sample file is a function of. Two runs with equal jobs write equal files."""

    model: str  # the model directory (resolved)
    weights_sha256: str  # of model.safetensors: a retrained model is another job
    num: int
    seed: int
    cfg_scale: float
    num_steps: int
    sampler: str
    clip_denoised: bool
    batch_size: int  # chunking; per-sample seeds make results independent of it up to float round-off
    vae: dict | None  # VAERecord.to_dict() of the decoder, None for pixel models
    rgb: bool = False
    data: dict | None = None  # the model's recorded training data (Moving Fashion-MNIST references read it)
    history_scale: float = 1.0  # history guidance (video); left out of the record when off, as before it existed
    guidance_interval: tuple[float, float] | None = None  # guided steps; left out when every step is guided

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["history_scale"] == 1.0:
            del d["history_scale"]
        if d["guidance_interval"] is None:
            del d["guidance_interval"]
        else:
            d["guidance_interval"] = list(d["guidance_interval"])
        return {"format": FORMAT, **d}


def parts_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def chunk_path(parts: Path, start: int) -> Path:
    return parts / f"chunk_{start:07d}.npz"


def _same_job(recorded: dict, job: dict) -> bool:
    return json.dumps(recorded, sort_keys=True) == json.dumps(job, sort_keys=True)


def _job_difference(recorded: dict, job: dict) -> str:
    keys = sorted(k for k in set(recorded) | set(job) if recorded.get(k) != job.get(k))
    return ", ".join(f"{k}: {recorded.get(k)!r} there, {job.get(k)!r} now" for k in keys[:4])


def prepare_job(out: str | os.PathLike, job: SampleJob, rank: int = 0) -> tuple[Path, bool]:
    """Check ``out`` and its parts folder against ``job``. Returns (parts folder, already finished).

    Refuses (ValueError) an ``out`` or a parts folder made by another job: a sample file
    never mixes runs. Rank 0 writes ``job.json``.
    """
    out = Path(out)
    wanted = job.to_dict()
    if out.exists():
        try:
            existing = load_sample_npz(out).job
        except ValueError:
            existing = None
        if existing is not None and _same_job(existing, wanted):
            return parts_dir(out), True
        why = f" ({_job_difference(existing, wanted)})" if existing else " (not written by this job)"
        raise ValueError(f"{out} already exists and holds other samples{why}; remove it or choose another --out")
    parts = parts_dir(out)
    record = parts / "job.json"
    if record.is_file():
        recorded = json.loads(record.read_text())
        if not _same_job(recorded, wanted):
            raise ValueError(f"{parts} holds a half-written job with other settings "
                             f"({_job_difference(recorded, wanted)}); rerun with those settings to finish it, "
                             f"or remove {parts}")
    else:
        # Every rank sees the same files and computes the same job, so all agree on refusing;
        # each may create the folder (its chunks may come before rank 0's job.json).
        parts.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            atomic_write_json(record, wanted, indent=2)
    return parts, False


def chunk_starts(num: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """This rank's chunks: chunk k (samples k*batch .. ) goes to rank k % world_size."""
    return [s for k, s in enumerate(range(0, num, batch_size)) if k % world_size == rank]


def assemble(out: str | os.PathLike, job: SampleJob) -> Path:
    """Concatenate the finished chunks into ``out`` (atomically), then remove the parts folder."""
    parts = parts_dir(out)
    images, labels = [], []
    for start in range(0, job.num, job.batch_size):
        path = chunk_path(parts, start)
        if not path.is_file():
            raise ValueError(f"{path} is missing: the job is not finished; rerun the same command to complete it")
        chunk = load_sample_npz(path)
        images.append(chunk.images)
        if chunk.labels is not None:
            labels.append(chunk.labels)
    save_sample_npz(out, np.concatenate(images), np.concatenate(labels) if labels else None, job.to_dict())
    shutil.rmtree(parts)
    return Path(out)


def run_sample_job(pipe, out: str | os.PathLike, job: SampleJob, rank: int = 0, world_size: int = 1,
                   barrier=None, progress: bool = False) -> dict:
    """Draw this rank's chunks of ``job`` with ``pipe`` (a :class:`~ardiff.generate.Pipeline` whose
    settings the job records), skipping finished ones, then rank 0 assembles ``out``.

    ``barrier``: called once every rank has written its chunks (``torch.distributed.barrier``
    under torchrun). Returns a summary (chunks drawn and skipped, seconds).
    """
    from ardiff.generate.pipeline import class_balanced_labels

    parts, finished = prepare_job(out, job, rank)
    t0 = time.perf_counter()
    drawn = skipped = 0
    if not finished:
        starts = chunk_starts(job.num, job.batch_size, rank, world_size)
        todo = [s for s in starts if not chunk_path(parts, s).is_file()]
        skipped = len(starts) - len(todo)
        iterator = todo
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(todo, desc=f"sampling (rank {rank})" if world_size > 1 else "sampling", unit="batch",
                            initial=0, total=len(todo))
        labels_all = class_balanced_labels(job.num, pipe.config.num_classes)
        for start in iterator:
            n = min(job.batch_size, job.num - start)
            labels = None if labels_all is None else labels_all[start : start + n]
            samples = pipe(labels, seeds=range(job.seed + start, job.seed + start + n))
            save_sample_npz(chunk_path(parts, start), to_uint8(samples, rgb=job.rgb),
                            None if labels is None else labels.numpy())
            drawn += 1
    if barrier is not None:
        barrier()
    if rank == 0 and not finished:
        assemble(out, job)
    return {"out": str(out), "chunks_drawn": drawn, "chunks_skipped": skipped, "already_finished": finished,
            "seconds": time.perf_counter() - t0}


def weights_digest(model_dir: str | os.PathLike) -> str:
    """sha256 of a model directory's weights (a retrained model makes a different job)."""
    import hashlib

    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def torchrun_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def sample_job(pipe, num: int, seed: int, batch_size: int, rgb: bool = False) -> SampleJob:
    """The job ``pipe`` runs: its model's weights, its settings and VAE, and the file's layout."""
    s = pipe.settings
    return SampleJob(model=str(Path(pipe.source).resolve()), weights_sha256=weights_digest(pipe.source), num=num,
                     seed=seed, cfg_scale=s.cfg_scale, num_steps=s.num_steps, sampler=s.sampler,
                     clip_denoised=s.clip_denoised, history_scale=s.history_scale,
                     guidance_interval=s.guidance_interval, batch_size=batch_size,
                     vae=None if pipe.vae_record is None else pipe.vae_record.to_dict(), rgb=rgb, data=pipe.data)


def sample_model_to_npz(model_dir: str | os.PathLike, out: str | os.PathLike, num: int, *, seed: int = 0,
                        batch_size: int = 64, vae_dir: str | None = None, rgb: bool = False,
                        device: str | None = None, progress: bool = True, **overrides) -> dict:
    """``ardiff sample-npz``: ``num`` class-balanced samples of a model (a directory or a shipped
    name) as an ADM sample file, latents decoded with the recorded VAE (or ``vae_dir``).
    ``overrides``: sampling settings (see :meth:`Pipeline.from_pretrained`).

    Under torchrun every rank draws its share of the chunks (gloo process group, used only
    for the final barrier); the file is the same as a single process writes. Interrupted
    jobs resume: rerun the same command.
    """
    from ardiff.generate.pipeline import Pipeline
    from ardiff.utils.devices import default_device

    rank, world_size, local_rank = torchrun_rank()
    pipe = Pipeline.from_pretrained(model_dir, device=default_device(device, local_rank), vae=vae_dir, **overrides)
    if pipe.guide is not None:
        raise ValueError("sample files record no guide model; sample without one")
    barrier = None
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        barrier = dist.barrier
    job = sample_job(pipe, num, seed, batch_size, rgb)
    summary = run_sample_job(pipe, out, job, rank=rank, world_size=world_size, barrier=barrier, progress=progress)
    return {**summary, "rank": rank, "world_size": world_size, "job": job.to_dict()}
