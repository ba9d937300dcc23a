"""ardiff: autoregressive diffusion on images and video (ACDiT, ACDC).

The names below load on first use, so that ``import ardiff.cli`` (and ``ardiff --help``)
does not import torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ACDiT": "ardiff.models",
    "ACDiTConfig": "ardiff.models",
    "BlockEvent": "ardiff.generate",
    "KVCache": "ardiff.generate",
    "NoiseSchedule": "ardiff.diffusion",
    "Pipeline": "ardiff.generate",
    "SamplingSettings": "ardiff.generate",
    "make_generators": "ardiff.utils.seeding",
    "sample": "ardiff.generate",
    "training_loss": "ardiff.diffusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ardiff' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
