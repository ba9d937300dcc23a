"""ACDC with ardiff's own models: ACDiT as the ARM, any ardiff diffusion model as the corrector.

Joined mode: :class:`ACDiTARM` runs the ordinary KV-cached block loop and hands every
finished block to the pipeline through the sampler's ``on_block_end`` hook; the corrected,
re-encoded block is what enters the KV cache, so later blocks attend to the corrected
context (diffusion correction *inside* the ACDiT block loop). With ``chunk_blocks=k`` a chunk
is k blocks (the paper's video experiment: L frames corrected as one clip).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ardiff.acdc.base import ARM, ChunkCallback, Correction, Corrector, check_frames
from ardiff.acdc.sdedit import sdedit_schedule
from ardiff.data.class_prompts import FMNIST_PROMPT_NAMES, ClassPrompts
from ardiff.generate.context import block_to_frames, frames_to_block
from ardiff.generate.pipeline import Pipeline
from ardiff.generate.sampler import BlockEvent, sample
from ardiff.generate.settings import SamplingSettings
from ardiff.models.acdit import ACDiT


# ---------------------------------------------------------------------------
#                     Prompts -> conditions for class-conditional models
# ---------------------------------------------------------------------------
def default_prompt_to_cond(model: ACDiT, allow_none: bool = False) -> Callable[[str], Any]:
    if model.config.num_classes == 10:
        return ClassPrompts(FMNIST_PROMPT_NAMES, allow_none=allow_none)
    raise ValueError("give prompt_to_cond= (a function from a prompt to the model's class id or condition vector)")


# ---------------------------------------------------------------------------
#                                 ACDiT as an ARM
# ---------------------------------------------------------------------------
class ACDiTARM(ARM):
    """A video ACDiT whose blocks are whole frames, as an ARM. Prompt i conditions chunk i
    (per-block class labels or vectors). ``prompt_to_cond`` may return None for a prompt that
    names no class: that chunk gets the null condition.

    ``chunk_blocks=1`` (default): a chunk is one block, handed to the pipeline from inside the
    KV-cached block loop (the joined mode). ``chunk_blocks=k``: a chunk is k blocks (the
    paper's video experiment: L frames made, corrected as one clip, then generation goes on);
    each chunk is sampled after the ones before it, which enter as a clean prefix, so a
    corrected chunk is exactly the context the next one sees. ``window``/``sink_blocks``: a
    rolling KV window to go past the trained length (see :func:`ardiff.generate.sample`).
    ``settings``: how each block is sampled (default: the conditional branch alone, 25 steps);
    ``SamplingSettings.recorded(model_dir)`` gives the ones a model was tuned with, and
    ``ACDiTARM.from_pipeline`` takes a loaded :class:`~ardiff.generate.Pipeline`'s.
    ``scheduler``: a diffusers scheduler object instead of ``settings.sampler``.
    """

    def __init__(self, model: ACDiT, prompt_to_cond: Callable[[str], Any] | None = None,
                 settings: SamplingSettings | None = None, *, scheduler=None, window: int | None = None,
                 sink_blocks: int = 0, chunk_blocks: int = 1):
        c = model.config
        if not c.is_video or c.block_size % c.tokens_per_frame:
            raise ValueError(f"ACDiTARM needs a video model whose blocks are whole frames (block_size a multiple of "
                             f"{c.tokens_per_frame if c.is_video else 'the tokens per frame'}); got input_size="
                             f"{c.input_size}, block_size={c.block_size}")
        if chunk_blocks < 1:
            raise ValueError(f"chunk_blocks={chunk_blocks} must be >= 1")
        self.model = model.eval()
        self.prompt_to_cond = prompt_to_cond or default_prompt_to_cond(model, allow_none=True)
        self.settings = SamplingSettings(cfg_scale=1.0) if settings is None else settings
        self.settings.check_for(c)
        self.scheduler = scheduler
        self.frames_per_block = c.block_size // c.tokens_per_frame
        self.chunk_blocks = chunk_blocks
        self.frames_per_chunk = self.frames_per_block * chunk_blocks
        # A rolling KV window lets stories run past the trained length (see generate.sampler.sample).
        self.window, self.sink_blocks = window, sink_blocks

    @classmethod
    def from_pipeline(cls, pipe: Pipeline, prompt_to_cond: Callable[[str], Any] | None = None,
                      **options) -> "ACDiTARM":
        """The pipeline's model with its settings (``options``: window, sink_blocks, chunk_blocks)."""
        if pipe.guide is not None:
            raise ValueError("ACDiTARM samples without autoguidance; load the ARM without a guide model")
        return cls(pipe.model, prompt_to_cond, pipe.settings, **options)

    @property
    def num_chunks(self) -> int:
        """Chunks within the trained length."""
        return self.model.config.num_blocks // self.chunk_blocks

    def _conditions(self, prompts: list[str]) -> torch.Tensor:
        """(1, blocks) class ids or (1, blocks, E) vectors: chunk i's condition on each of its blocks."""
        conds = [self.prompt_to_cond(p) for p in prompts for _ in range(self.chunk_blocks)]
        if all(c is None or isinstance(c, int) for c in conds):
            null = self.model.config.num_classes  # the null class id
            return torch.tensor([null if c is None else c for c in conds], device=self.model.device)[None]
        if any(c is None for c in conds):
            null = self.model.c_embedder.null.detach().reshape(-1)  # the learned null vector
            conds = [null if c is None else c for c in conds]
        return torch.stack([torch.as_tensor(c, dtype=self.model.dtype) for c in conds])[None].to(self.model.device)

    def _sample_kwargs(self, generator) -> dict:
        """The block loop's options for one story or clip: one generator runs through every call."""
        return dict(generator=[generator], scheduler=self.scheduler, window=self.window, sink_blocks=self.sink_blocks,
                    output="blocks")

    @torch.no_grad()
    def generate(self, prompts: list[str], on_chunk: ChunkCallback, generator: torch.Generator) -> list[Any]:
        if len(prompts) != self.num_chunks and self.window is None:
            raise ValueError(f"this ACDiT makes {self.num_chunks} chunks of {self.frames_per_chunk} frames; "
                             f"got {len(prompts)} prompts (give one per chunk, or set window= to go past "
                             f"the trained length)")
        if self.chunk_blocks > 1:
            return self._generate_chunk_by_chunk(prompts, on_chunk, generator)
        chunks: list[torch.Tensor] = []

        def hook(event: BlockEvent):
            replacement = on_chunk(event.index, event.block[0])
            if replacement is not None:
                replacement = replacement.to(event.block)[None]
            chunks.append((event.block if replacement is None else replacement)[0])
            return replacement

        sample(self.model, self._conditions(prompts), self.settings, num_blocks=len(prompts), on_block_end=hook,
               **self._sample_kwargs(generator))
        return chunks

    def _generate_chunk_by_chunk(self, prompts, on_chunk, generator) -> list[torch.Tensor]:
        """Chunk i (k blocks) is sampled with chunks 0..i-1, as they were kept or corrected, as
        its clean prefix; one generator runs through all calls, so the noise of block j does not
        depend on how the chunks are cut."""
        k, cond = self.chunk_blocks, self._conditions(prompts)
        blocks, chunks = None, []
        for i in range(len(prompts)):
            end = (i + 1) * k
            blocks = sample(self.model, cond[:, :end], self.settings, num_blocks=end, prefix=blocks,
                            **self._sample_kwargs(generator))
            replacement = on_chunk(i, blocks[0, end - k:end])
            if replacement is not None:
                blocks[0, end - k:end] = replacement.to(blocks)
            chunks.append(blocks[0, end - k:end].clone())
        return chunks

    def decode(self, chunk: torch.Tensor) -> torch.Tensor:
        """Chunk (S, P), or (k, S, P) for multi-block chunks -> frames (frames_per_chunk, C, H, W)."""
        blocks = chunk[None] if chunk.dim() == 2 else chunk
        return block_to_frames(self.model, blocks).flatten(0, 1).clamp(-1, 1)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        c = self.model.config
        frames = check_frames(frames, "ACDiTARM.encode")
        expected = (self.frames_per_chunk, c.in_channels, *c.input_size[1:])
        if tuple(frames.shape) != expected:
            raise ValueError(f"ACDiTARM.encode: frames {tuple(frames.shape)} do not fit a chunk, expected {expected}")
        per_block = frames.to(self.model.device, self.model.dtype).unflatten(0, (self.chunk_blocks,
                                                                                 self.frames_per_block))
        blocks = frames_to_block(self.model, per_block)
        return blocks[0] if self.chunk_blocks == 1 else blocks


# ---------------------------------------------------------------------------
#                         An ardiff model as the corrector
# ---------------------------------------------------------------------------
class NativeCorrector(Corrector):
    """SDEdit with any ardiff model, class- or vector-conditioned.

    An image model corrects frames (F, C, H, W) as a batch (``prompt`` one string for all, or a
    list with one per frame; ``generator`` may be a list with one per frame, so each frame's
    noise is independent of the batch). A video model corrects whole clips: one clip
    (F, C, H, W) with F its frame count (ACDC's video chunk), or a batch (B, F, C, H, W) with
    one prompt and generator per clip.

    A single-block model (a DiT) denoises the whole frame at once. A multi-block ACDiT
    corrects block by block: block i is noised to t' and denoised while attending to the
    already corrected blocks 0..i-1 as its clean context, the model's own factorisation.
    """

    def __init__(self, model: ACDiT, prompt_to_cond: Callable[[str], Any] | None = None, num_steps: int = 25,
                 cfg_scale: float = 1.0):
        self.model = model.eval()
        self.prompt_to_cond = prompt_to_cond or default_prompt_to_cond(model)
        self.num_steps, self.cfg_scale = num_steps, cfg_scale
        from ardiff.diffusion.schedule import default_sampling_scheduler

        self._scheduler_config = default_sampling_scheduler(model.config).config

    def _scheduler(self):
        from diffusers import DPMSolverMultistepScheduler

        # DPM-Solver++ accepts explicit timesteps, so the schedule starts exactly at t'.
        return DPMSolverMultistepScheduler.from_config(self._scheduler_config)

    @torch.no_grad()
    def correct(self, frames, prompt, t_prime, generator, mask=None) -> Correction:
        from diffusers.utils.torch_utils import randn_tensor

        model, c = self.model, self.model.config
        x0, unbatched = self._model_input(frames)
        N = self._scheduler_config.num_train_timesteps
        schedule = sdedit_schedule(t_prime, N, self.num_steps)
        t_start, timesteps = schedule.t_start, schedule.timesteps
        F, T = x0.shape[0], c.num_blocks  # F: frames for an image model, clips for a video model
        noise = model.to_blocks(randn_tensor(x0.shape, generator=generator, device=model.device, dtype=model.dtype))
        clean = model.to_blocks(x0)
        if mask is not None:
            mask = mask.to(x0)
            if c.is_video:  # (F or 1, 1, H, W) -> (1, 1, F or 1, H, W)
                mask = mask.transpose(0, 1)[None]
            mask = mask.expand_as(x0)
        keep = None if mask is None else model.to_blocks(1 - mask)
        if isinstance(prompt, str):
            cond = self.prompt_to_cond(prompt)
            cond = (torch.full((F,), cond, device=model.device) if isinstance(cond, int)
                    else torch.as_tensor(cond, dtype=model.dtype, device=model.device).expand(F, -1))
        else:  # one prompt per frame: a batch of different frames corrected at once
            if len(prompt) != F:
                unit = "clip" if c.is_video else "frame"
                raise ValueError(f"NativeCorrector: {len(prompt)} prompts for {F} {unit}s "
                                 f"(give one, or one per {unit})")
            conds = [self.prompt_to_cond(p) for p in prompt]
            cond = (torch.tensor(conds, device=model.device) if isinstance(conds[0], int)
                    else torch.stack([torch.as_tensor(c, dtype=model.dtype) for c in conds]).to(model.device))
        guided = self.cfg_scale != 1.0
        cond_emb = model.embed_condition(cond)
        group_emb = torch.stack([cond_emb[:, 0], model.null_condition(F)[:, 0]], 1) if guided else cond_emb
        groups = 2 if guided else 1
        out = torch.empty_like(clean)
        for i in range(T):
            sched = self._scheduler()
            sched.set_timesteps(timesteps=timesteps)
            x = sched.add_noise(clean[:, i], noise[:, i], torch.tensor([t_start]))
            for k, t in enumerate(sched.timesteps):
                if keep is not None and k:  # blended inpainting: outside the mask, the input at this noise level
                    x = keep[:, i] * sched.add_noise(clean[:, i], noise[:, i], t.view(1)) + (1 - keep[:, i]) * x
                x_in = sched.scale_model_input(x, t)
                cvec = model.condition_vectors(t.to(model.device).expand(F, groups), group_emb)
                eps = model.run(noisy=x_in[:, None].expand(F, groups, *x.shape[1:]), noisy_blocks=(i,) * groups,
                                cond=cvec, clean=out[:, :i] if i else None)
                eps = eps[:, 1] + self.cfg_scale * (eps[:, 0] - eps[:, 1]) if guided else eps[:, 0]
                x = sched.step(eps, t, x).prev_sample
            out[:, i] = x.clamp(-1, 1)
        result = model.from_blocks(out)
        if mask is not None:
            result = torch.where(mask.bool(), result, x0)  # exactly the input outside the mask
        if c.is_video:
            result = result.transpose(1, 2)  # (B, F, C, H, W)
            result = result[0] if unbatched else result
        return Correction(result.to(frames), schedule.t_prime, list(timesteps))

    def _model_input(self, frames: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The frames as the model's input batch (B, C, *input_size), and whether they were one clip."""
        c = self.model.config
        if not c.is_video:
            frames = check_frames(frames, "NativeCorrector.correct")
            if tuple(frames.shape[1:]) != (c.in_channels, *c.input_size):
                raise ValueError(f"NativeCorrector: frames {tuple(frames.shape)} do not match the model "
                                 f"(F, {c.in_channels}, {', '.join(map(str, c.input_size))})")
            return frames.to(self.model.device, self.model.dtype), False
        clip = (c.input_size[0], c.in_channels, *c.input_size[1:])
        if not isinstance(frames, torch.Tensor) or frames.dim() not in (4, 5) or tuple(frames.shape[-4:]) != clip:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"NativeCorrector: this video model corrects clips of {c.input_size[0]} frames, "
                             f"{clip} or a batch (B, {', '.join(map(str, clip))}); got {shape}")
        unbatched = frames.dim() == 4
        clips = frames[None] if unbatched else frames
        return clips.transpose(1, 2).to(self.model.device, self.model.dtype), unbatched
