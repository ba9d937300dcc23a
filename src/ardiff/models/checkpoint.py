"""Model directories: ``config.json`` + ``model.safetensors`` (no pickles).

Writes are atomic (:mod:`ardiff.utils.io`): an interrupted save never leaves a half-written
model behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from ardiff.models.config import ACDiTConfig
from ardiff.utils.io import atomic_save_safetensors, atomic_write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ardiff.acdit"


def save_pretrained(model, directory: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None,
                    extra_config: dict | None = None) -> Path:
    """Write ``model`` (or ``state_dict``, e.g. EMA weights, for its architecture) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    atomic_save_safetensors(state, directory / WEIGHTS_NAME, metadata={"format": "pt", "ardiff": FORMAT})
    config = {"_format": FORMAT, **model.config.to_dict(), **(extra_config or {})}
    atomic_write_bytes(directory / CONFIG_NAME, json.dumps(config, indent=2).encode())
    return directory


def read_config_json(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME} "
            f"(written by save_pretrained, `ardiff train` or `ardiff convert-official`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def load_config(directory: str | os.PathLike) -> ACDiTConfig:
    raw = read_config_json(directory)
    return ACDiTConfig.from_dict({k: v for k, v in raw.items() if not k.startswith("_")})


def load_extras(directory: str | os.PathLike) -> dict:
    """What a model directory records beside the architecture (``_``-prefixed keys), e.g.
    ``_vae``: the local VAE and scaling that turn the model's latents back into pixels."""
    return {k[1:]: v for k, v in read_config_json(directory).items() if k.startswith("_") and k != "_format"}


def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None):
    directory = Path(directory)
    config = load_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found next to {directory / CONFIG_NAME}")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{weights} is not a readable safetensors file: {e}") from None
    model = cls(config)
    expected = model.state_dict()
    mismatched = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} by the config"
                  for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if mismatched:
        raise ValueError(f"{weights} does not match the architecture in {directory / CONFIG_NAME}: "
                         f"{'; '.join(mismatched[:3])}{' ...' if len(mismatched) > 3 else ''} "
                         f"(the weights belong to another config: export the model again)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the architecture in {directory / CONFIG_NAME}: "
            f"missing keys {sorted(missing)[:8]}, unexpected keys {sorted(unexpected)[:8]}"
        )
    return model.to(device=device, dtype=dtype).eval()


def average_pretrained(cls, directories: list[str | os.PathLike], out_dir: str | os.PathLike) -> Path:
    """Write the uniform average of the weights of several model directories of one
    architecture (a "model soup" of training stages, e.g. the EMA weights of consecutive
    fine-tunes) to ``out_dir``. The sum is taken in float64 and cast back to each tensor's
    dtype. ``out_dir`` records the first model's ``_``-prefixed extras (recorded sampling,
    data) and the models averaged (``_averaged_from``). ``cls``: the model class (``ACDiT``)."""
    if len(directories) < 2:
        raise ValueError(f"averaging needs at least two model directories, got {len(directories)}")
    if any(Path(d).resolve() == Path(out_dir).resolve() for d in directories):
        raise ValueError(f"{out_dir} is one of the models to average: write the average to a new directory")
    first = Path(directories[0])
    first_config = load_config(first)
    models = [from_pretrained(cls, first)]
    for directory in directories[1:]:
        config = load_config(directory)
        if config != first_config:
            first_fields = first_config.to_dict()
            differing = sorted(k for k, v in config.to_dict().items() if first_fields.get(k) != v)
            raise ValueError(f"{Path(directory) / CONFIG_NAME} describes another architecture than "
                             f"{first / CONFIG_NAME} (differs in {', '.join(differing)}): only weights of one "
                             f"architecture can be averaged")
        models.append(from_pretrained(cls, directory))
    states = [m.state_dict() for m in models]
    averaged = {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype).contiguous()
                for k, v in states[0].items()}
    extras = {f"_{k}": v for k, v in load_extras(first).items()}
    extras["_averaged_from"] = [str(d) for d in directories]
    return save_pretrained(models[0], out_dir, state_dict=averaged, extra_config=extras)
