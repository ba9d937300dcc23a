"""The three ACDC interfaces: an autoregressive generator (ARM), a diffusion corrector, a memory.

Pixels cross every interface in one convention: float frames ``(F, C, H, W)`` in [-1, 1]
(F = 1 for a story frame, 16 for a video chunk). Each ARM keeps its own representation of
a chunk (vocabulary ids, latents, ACDiT blocks) and converts with ``decode``/``encode``.

ACDC (Chung, Lee, Ye): the ARM makes chunk i from its context and prompt i; the chunk is
decoded, corrected by SDEdit (noise to t', denoise conditioned on the memory's prompt i),
re-encoded, and the corrected chunk is what the ARM continues from.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# Called by an ARM after it generates chunk ``index`` (its own representation). Returns the
# representation that must enter the ARM's context instead, or None to keep the chunk.
ChunkCallback = Callable[[int, Any], Any]


class ARM(ABC):
    """An autoregressive generator that makes a sequence of chunks, one per prompt."""

    @abstractmethod
    def generate(self, prompts: list[str], on_chunk: ChunkCallback, generator: torch.Generator) -> list[Any]:
        """Make one chunk per prompt, in order. After chunk i, call ``on_chunk(i, chunk)``;
        a non-None return value replaces chunk i in the context the later chunks see (and in
        the returned list). Deterministic given ``generator``."""

    @abstractmethod
    def decode(self, chunk: Any) -> torch.Tensor:
        """A chunk in the ARM's representation -> frames (F, C, H, W) in [-1, 1]."""

    @abstractmethod
    def encode(self, frames: torch.Tensor) -> Any:
        """Frames (F, C, H, W) in [-1, 1] -> the ARM's representation of that chunk."""


@dataclass
class Correction:
    """What a corrector did to one chunk."""

    frames: torch.Tensor  # (F, C, H, W) in [-1, 1]
    t_prime: float  # the noise level used, as a fraction of the training timesteps (exact)
    timesteps: list[int]  # the denoising timesteps, first = the noised level
    extra: dict = field(default_factory=dict)


class Corrector(ABC):
    """SDEdit: perturb frames to t' and denoise them conditioned on a prompt."""

    @abstractmethod
    def correct(self, frames: torch.Tensor, prompt: str, t_prime: float, generator: torch.Generator,
                mask: torch.Tensor | None = None) -> Correction:
        """``frames`` (F, C, H, W) in [-1, 1]. ``mask`` (F or 1, 1, H, W), 1 where pixels may
        change: outside it the result equals the input (user constraints by inpainting)."""


class Memory(ABC):
    """Rewrites prompts causally so each carries the key context of the earlier ones."""

    @abstractmethod
    def rewrite(self, prompts: list[str]) -> list[str]:
        """Exactly ``len(prompts)`` prompts back; prompt i may use prompts 0..i only."""


class IdentityMemory(Memory):
    """Keeps the prompts as they are (ACDC without the memory module)."""

    def rewrite(self, prompts: list[str]) -> list[str]:
        return list(prompts)


def check_frames(frames: torch.Tensor, who: str) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"{who}: frames must be a tensor (F, C, H, W) in [-1, 1], got {shape}")
    return frames
