"""ardiff: autoregressive diffusion on images and video (ACDiT, ACDC)."""

from ardiff.diffusion import NoiseSchedule, training_loss
from ardiff.generate import BlockEvent, KVCache, SamplingSettings, make_generators, sample
from ardiff.models import ACDiT, ACDiTConfig

__version__ = "0.1.0"

__all__ = [
    "ACDiT",
    "ACDiTConfig",
    "BlockEvent",
    "KVCache",
    "NoiseSchedule",
    "SamplingSettings",
    "make_generators",
    "sample",
    "training_loss",
]
