"""ACDiT: the config with its presets, the model, model directories and the shipped-model
resolver. ``ACDiT`` and ``ACDiTConfig`` load on first use, so that the torch-free parts
(``ardiff.models.resolve``) can be imported at once."""

from importlib import import_module

_EXPORTS = {"ACDiT": "ardiff.models.acdit", "ACDiTConfig": "ardiff.models.config", "PRESETS": "ardiff.models.config"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ardiff.models' has no attribute {name!r}")
