"""Model directories for the story world's small networks (config.json + model.safetensors).

Written atomically (:mod:`ardiff.utils.io`); config keys starting with "_"
are records (the class, held-out accuracy), not constructor arguments.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ardiff.models.resolve import resolve_model_dir
from ardiff.utils.io import atomic_save_safetensors, atomic_write_bytes


def save_world_model(model: nn.Module, directory, config: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(state, directory / "model.safetensors")
    atomic_write_bytes(directory / "config.json", json.dumps({"_class": type(model).__name__, **config},
                                                             indent=1).encode())
    return directory


def load_world_model(cls, name_or_path):
    """``cls(**config)`` with the saved weights, in eval mode."""
    from safetensors.torch import load_file

    directory = resolve_model_dir(name_or_path)
    config = json.loads((directory / "config.json").read_text())
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    return model.eval()
