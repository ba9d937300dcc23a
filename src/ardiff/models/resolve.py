"""Where models are found: a model directory, or the name of a model shipped with ardiff."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"  # what ships inside the package
SHIPPED_MODELS = ASSETS_DIR / "models"


def shipped_model_names() -> list[str]:
    return sorted(p.name for p in SHIPPED_MODELS.iterdir() if (p / "config.json").is_file())


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A directory holding ``config.json`` (and its weights), or the name of a shipped model
    (``fmnist``, ``moving-fmnist``, ``story-arm``, ...). A directory wins over a name."""
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return path
    shipped = SHIPPED_MODELS / str(name_or_path)
    if (shipped / "config.json").is_file():
        return shipped
    raise FileNotFoundError(f"{str(name_or_path)!r} is neither a model directory (config.json + model.safetensors) "
                            f"nor a shipped model ({', '.join(shipped_model_names())})")
