"""ACDC correction of a stream: every finished chunk corrected by SDEdit with a full-sequence
model, the corrected frames replacing the chunk in the context and the output
(:func:`ardiff.generate.stream.stream` takes a :class:`ChunkCorrection`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ardiff.acdc.base import Corrector
from ardiff.acdc.native import NativeCorrector
from ardiff.generate.pipeline import Pipeline
from ardiff.generate.stream import ClassVocabulary, PromptSchedule, frames_per_block
from ardiff.utils.seeding import chunk_seed, make_generators

__all__ = ["ChunkCorrection", "check_corrector"]


@dataclass(frozen=True)
class ChunkCorrection:
    """ACDC correction of every finished chunk: SDEdit (noise to ``t_prime``, denoise under the
    chunk's class) by a full-sequence model; the corrected frames replace the chunk in the
    context the following blocks see and in the output.

    A video corrector corrects clips of its own length (``chunk_frames``, a whole number of the
    stream's blocks); an image corrector corrects every block's frames one by one
    (``chunk_frames`` = one block). Chunk i of clip b draws its noise from ``chunk_seed(seed + b,
    i)`` (an image corrector: frame f from ``chunk_seed(seed + b, f)``), independent of the rest.
    """

    corrector: Corrector
    t_prime: float
    video: bool  # whether the corrector takes whole clips (B, L, C, H, W) rather than frames
    chunk_frames: int  # frames corrected together (an image corrector: 0, meaning one block)
    source: str = ""
    max_chunks: int | None = None  # correct only chunks 0 .. max_chunks - 1 (None: every chunk)

    @classmethod
    def from_pretrained(cls, name_or_dir: str, t_prime: float, device=None) -> "ChunkCorrection":
        """An ardiff model (shipped name or directory) as the corrector, with its recorded steps and
        guidance; conditioned on the class id of the chunk's prompt."""
        if not 0 < t_prime <= 1:
            raise ValueError(f"t_prime={t_prime} must be in (0, 1] (a fraction of the diffusion timesteps)")
        pipe = Pipeline.from_pretrained(name_or_dir, device=device)
        c, s = pipe.config, pipe.settings
        if pipe.vae_record is not None:
            raise ValueError(f"corrector {name_or_dir} generates VAE latents; a stream is corrected in pixels")
        if not c.num_classes:
            raise ValueError(f"corrector {name_or_dir} is not class-conditional")
        corrector = NativeCorrector(pipe.model, prompt_to_cond=ClassVocabulary(c.num_classes), num_steps=s.num_steps,
                                    cfg_scale=s.cfg_scale)
        return cls(corrector, t_prime, c.is_video, c.input_size[0] if c.is_video else 0, str(name_or_dir))

    def chunk_blocks(self, per_block: int) -> int:
        return self.chunk_frames // per_block if self.video else 1

    def check_for(self, arm_config, num_frames: int, schedule: PromptSchedule) -> None:
        """Raise unless this corrector fits the stream (see :func:`check_corrector`)."""
        model = getattr(self.corrector, "model", None)
        if model is not None:
            check_corrector(model.config, arm_config, num_frames, schedule, self.source)
        elif self.video:
            _check_chunks(self.chunk_frames, frames_per_block(arm_config), num_frames, schedule, self.source)

    @torch.no_grad()
    def correct(self, frames: torch.Tensor, prompt: int, seeds: Sequence[int], chunk: int,
                first_frame: int) -> torch.Tensor:
        """``frames`` (B, L, C, H, W) of chunk ``chunk`` (starting at ``first_frame``), all asked
        for class ``prompt``, corrected: (B, L, C, H, W); past ``max_chunks``, as they are."""
        B, L = frames.shape[:2]
        if self.max_chunks is not None and chunk >= self.max_chunks:
            return frames
        if self.video:
            generators = make_generators([chunk_seed(s, chunk) for s in seeds])
            fixed = self.corrector.correct(frames, str(prompt), self.t_prime, generators).frames
            return fixed.reshape(frames.shape)
        generators = make_generators([chunk_seed(s, first_frame + f) for s in seeds for f in range(L)])
        fixed = self.corrector.correct(frames.flatten(0, 1), str(prompt), self.t_prime, generators).frames
        return fixed.reshape(frames.shape)


def check_corrector(corrector_config, arm_config, num_frames: int, schedule: PromptSchedule,
                    source: str = "the corrector") -> None:
    """Raise unless an ardiff model of ``corrector_config`` can correct the stream: the ARM's
    classes and frame size; a video corrector's clips whole blocks that tile the stream, with one
    prompt each (switches at multiples of its length). Reads configs only, so it runs before
    any weights load."""
    c, a = corrector_config, arm_config
    per_block = frames_per_block(a)
    if c.num_classes != a.num_classes:
        raise ValueError(f"corrector {source} has {c.num_classes} classes, the stream's model {a.num_classes}")
    if _frame_shape(c) != _frame_shape(a):
        raise ValueError(f"corrector {source} makes frames of {'x'.join(map(str, _frame_shape(c)))}, the stream's "
                         f"model {'x'.join(map(str, _frame_shape(a)))} (channels x height x width)")
    if c.is_video:
        _check_chunks(c.input_size[0], per_block, num_frames, schedule, source)


def _frame_shape(config) -> tuple[int, int, int]:
    return (config.in_channels, *config.input_size[-2:])


def _check_chunks(L: int, per_block: int, num_frames: int, schedule: PromptSchedule, source: str) -> None:
    if L % per_block:
        raise ValueError(f"corrector {source} corrects clips of {L} frames, not whole blocks of the stream's "
                         f"{per_block} frames")
    if num_frames % L:
        raise ValueError(f"corrector {source} corrects clips of {L} frames: stream a multiple of {L} frames")
    off = [s.frame for s in schedule.switches if s.frame % L]
    if off:
        raise ValueError(f"corrector {source} corrects clips of {L} frames under one prompt: switch prompts at "
                         f"multiples of {L} (not at frame {off[0]})")
