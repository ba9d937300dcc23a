"""Training checkpoints: a directory per step, written atomically, resumed exactly.

``<out>/checkpoints/step_00001000/`` holds ``model.safetensors`` (raw weights),
``ema.safetensors``, ``optimizer.safetensors`` (AdamW moments, by parameter name),
``config.json`` (the ACDiT config) and ``trainer_state.json`` (step, optimizer
hyper-parameters and step counts, the run config). The directory is written under a
temporary name and renamed into place; ``<out>/checkpoints/latest`` names the newest
complete one. A write killed midway leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ardiff.models.checkpoint import CONFIG_NAME
from ardiff.utils.io import atomic_save_safetensors, atomic_write_bytes

LATEST = "latest"


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """Gather a sharded (FSDP2 DTensor) tensor; plain tensors pass through."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def like(reference: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """Place a full tensor like ``reference`` (re-shard under FSDP2)."""
    if hasattr(reference, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(reference.dtype), reference.device_mesh, reference.placements)
    return full.to(device=reference.device, dtype=reference.dtype)


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict) -> tuple[dict, dict]:
    """AdamW state as named tensors + JSON-able scalars (per-parameter step counts)."""
    tensors, steps = {}, {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                continue
            name = names[p]
            for key, value in state.items():
                if key == "step":
                    steps[name] = float(value)
                else:
                    tensors[f"{name}::{key}"] = full_tensor(value).cpu()
    return tensors, steps


def load_optimizer_tensors(optimizer, names: dict, tensors: dict, steps: dict) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names[p]
            if name not in steps:
                continue
            state = optimizer.state[p]
            state["step"] = torch.tensor(steps[name], dtype=torch.float32)
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if f"{name}::{key}" in tensors:
                    state[key] = like(p, tensors[f"{name}::{key}"])


def write_checkpoint(root: Path, step: int, model_state: dict, ema_state: dict, opt_tensors: dict,
                     trainer_state: dict, model_config: dict, keep: int, extra_files: dict | None = None) -> Path:
    """``extra_files``: further named tensor files (``{stem: tensors}``) a trainer keeps, e.g. a
    distillation's fake-score network and its optimizer."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    atomic_save_safetensors(model_state, tmp / "model.safetensors")
    atomic_save_safetensors(ema_state, tmp / "ema.safetensors")
    atomic_save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
    for stem, tensors in (extra_files or {}).items():
        atomic_save_safetensors(tensors, tmp / f"{stem}.safetensors")
    atomic_write_bytes(tmp / CONFIG_NAME, json.dumps(model_config, indent=2).encode())
    atomic_write_bytes(tmp / "trainer_state.json", json.dumps(trainer_state, indent=2).encode())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST, final.name.encode())
    checkpoints = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in checkpoints[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """The checkpoints under ``root`` whose writing finished (trainer_state.json is written last), oldest first."""
    return sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file())


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def read_checkpoint(path: Path) -> dict:
    out = {}
    out["extra"] = {}
    for file in sorted(path.glob("*.safetensors")):
        try:
            tensors = load_file(str(file))
        except Exception as e:
            raise ValueError(f"checkpoint file {file} is unreadable: {e}") from None
        if file.stem in ("model", "ema", "optimizer"):
            out[file.stem] = tensors
        else:
            out["extra"][file.stem] = tensors
    for key in ("model", "ema", "optimizer"):
        if key not in out:
            raise ValueError(f"checkpoint file {path / (key + '.safetensors')} is missing")
    for key, name in (("trainer_state", "trainer_state.json"), ("config", CONFIG_NAME)):
        try:
            out[key] = json.loads((path / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"checkpoint file {path / name} is unreadable: {e}") from None
    return out


def newest_readable_checkpoint(root: Path, older_than: Path) -> Path | None:
    """The newest complete checkpoint before ``older_than`` whose files all read back."""
    candidates = [p for p in reversed(complete_checkpoints(root)) if p.name < older_than.name]
    for path in candidates:
        try:
            read_checkpoint(path)
        except ValueError:
            continue
        return path
    return None
