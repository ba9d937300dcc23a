"""A model directory from any training checkpoint: its EMA or its raw weights, at a chosen precision.

``ardiff train`` exports the EMA weights of the last step. This picks what else a run holds:
the raw weights (which can beat a long EMA after a short run whose learning rate decayed to
zero), an earlier step, and fp16 or bf16 storage (half the bytes; ``from_pretrained`` loads
them into fp32 parameters).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ardiff.data.latents import LatentDataset, VAERecord
from ardiff.models import ACDiT
from ardiff.models.checkpoint import save_pretrained
from ardiff.train import checkpoint as ckpt
from ardiff.train.config import build_run_config
from ardiff.train.trainer import model_record

EXPORT_WEIGHTS = ("ema", "model")  # the EMA average, or the weights the optimizer last wrote
EXPORT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def find_checkpoint(source: str | os.PathLike, step: int | None = None) -> Path:
    """``source``: one checkpoint directory, a run's ``checkpoints/`` or the run directory
    (``train.out_dir``). ``step``: that step's checkpoint instead of the newest."""
    source = Path(source)
    if (source / "trainer_state.json").is_file():
        if step is not None:
            raise ValueError(f"{source} is one checkpoint; --step picks among the checkpoints of a run directory "
                             f"(give {source.parent} instead, or leave --step out)")
        return source
    root = source / "checkpoints" if (source / "checkpoints").is_dir() else source
    if not root.is_dir():
        raise FileNotFoundError(f"{source} is not a directory; give a training run directory (train.out_dir) "
                                f"or one of its checkpoints/step_* directories")
    if step is None:
        path = ckpt.latest_checkpoint(root)
        if path is None:
            raise FileNotFoundError(f"{source} holds no complete checkpoint (checkpoints/step_*/trainer_state.json); "
                                    f"give a training run directory or one of its checkpoint directories")
        return path
    path = root / f"step_{step:08d}"
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"no complete checkpoint of step {step} in {root}; it holds: "
                                f"{', '.join(p.name for p in ckpt.complete_checkpoints(root)) or 'none'}")
    return path


def _vae_record(run) -> dict | None:
    """A latent run's model decodes with the VAE its cache records (as ``Trainer.export`` writes)."""
    if run.data.name != "latents":
        return None
    record = VAERecord.from_cache_meta(LatentDataset(run.data.root or "").meta)
    return None if record is None else record.to_dict()


def export_checkpoint(source: str | os.PathLike, out: str | os.PathLike, weights: str = "ema",
                      step: int | None = None, dtype: str = "float32") -> Path:
    """Write ``out`` (config.json + model.safetensors) from a checkpoint, with the run's
    recorded sampling and data, as ``ardiff train`` exports its last step."""
    if weights not in EXPORT_WEIGHTS:
        raise ValueError(f"weights={weights!r}; choose one of {', '.join(EXPORT_WEIGHTS)}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {', '.join(EXPORT_DTYPES)}")
    path = find_checkpoint(source, step)
    # Only the weights asked for and the trainer state: the optimizer's file is not needed.
    try:
        trainer_state = json.loads((path / "trainer_state.json").read_text())
        state = load_file(str(path / f"{weights}.safetensors"))
    except Exception as e:
        raise ValueError(f"checkpoint {path} is unreadable: {e}") from None
    try:
        run = build_run_config(trainer_state["run_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path / 'trainer_state.json'} does not hold a usable run config ({e}); it was not "
                         f"written by ardiff train") from None
    model = ACDiT(run.model)
    expected = set(model.state_dict())
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path / (weights + '.safetensors')} does not match the run's architecture "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    extras = model_record(run)
    if run.distill is not None:
        from ardiff.train.distill import distillation_record

        extras["_distillation"] = distillation_record(run)
    vae = _vae_record(run)
    if vae is not None:
        extras["_vae"] = vae
    extras["_exported_from"] = {"checkpoint": str(path), "step": int(trainer_state["step"]),
                                "weights": weights, "dtype": dtype}
    cast = {k: v.to(EXPORT_DTYPES[dtype]).contiguous() for k, v in state.items()}
    return save_pretrained(model, out, state_dict=cast, extra_config=extras)
