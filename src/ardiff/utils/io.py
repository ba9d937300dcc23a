"""Atomic file writes: a file is written under a temporary name, flushed, and renamed into
place, so an interrupted write never leaves a half-written checkpoint, model or result."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _temporary(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, data, indent: int = 1) -> None:
    atomic_write_bytes(path, json.dumps(data, indent=indent).encode())


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict | None = None) -> None:
    # serialised in memory and written by open(), so the file follows the umask (safetensors'
    # own save_file creates it owner-only)
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata))


def replace_directory(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished directory ``source`` to ``target``, replacing whatever ``target`` holds.

    A directory cannot be renamed over a non-empty one, so the old one is first moved aside: a
    kill between the two renames leaves ``target`` missing, never a mix of old and new files.
    """
    source, target = Path(source), Path(target)
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)
