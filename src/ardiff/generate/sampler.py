"""Block-autoregressive sampling with any diffusers scheduler.

For block i the full denoising loop runs with blocks 0..i-1 as clean context; the
finished block then joins the context. With ``use_cache=True`` the context lives in a
:class:`KVCache`: the finished block's clean K/V ride along with the first denoising
step of the next block (``context_pass="ride"``), or are computed by a separate pass
(``context_pass="separate"``). ``use_cache=False`` recomputes the whole context at every
step: the reference path.

Classifier-free guidance runs the conditional and unconditional branches as two noisy
groups of one sequence: the label-independent clean context is computed once for both.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from ardiff.diffusion.schedule import DEFAULT_SAMPLER, check_sampler, sampling_scheduler
from ardiff.generate.cache import KVCache


@dataclass
class BlockEvent:
    """Passed to ``on_block_end`` after block ``index`` is denoised."""

    index: int
    block: torch.Tensor  # (B, S, P) the finished block, patch features
    blocks: torch.Tensor  # (B, index, S, P) the blocks finished before it
    cache: KVCache | None
    model: object


BlockHook = Callable[[BlockEvent], "torch.Tensor | None"]


@dataclass(frozen=True)
class SamplingSettings:
    """How a model is meant to be sampled: the settings its training run recorded with it
    (``_sampling`` in config.json, as tuned), which the CLI, ``ardiff eval`` and the demo use
    unless told otherwise."""

    cfg_scale: float = 1.5
    num_steps: int = 25
    sampler: str = DEFAULT_SAMPLER  # a key of ardiff.diffusion.SAMPLERS
    clip_denoised: bool = False  # clip predicted clean samples to [-1, 1] (pixel-space models only)

    def __post_init__(self):
        check_sampler(self.sampler)
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be >= 1")

    @classmethod
    def recorded(cls, model_dir: str | os.PathLike) -> "SamplingSettings":
        """The settings recorded in ``model_dir``; defaults for what it does not record."""
        from ardiff.models.checkpoint import load_extras

        raw = load_extras(model_dir).get("sampling", {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{model_dir}/config.json: unknown _sampling keys {unknown}; known: {sorted(known)}")
        return cls(**raw)

    def but(self, **changes) -> "SamplingSettings":
        """A copy with the given fields changed; ``None`` values keep the recorded ones."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def scheduler(self, model_config):
        return sampling_scheduler(model_config, self.sampler, self.clip_denoised)

    def sample_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`sample`."""
        return dict(num_steps=self.num_steps, cfg_scale=self.cfg_scale, scheduler=self.sampler,
                    clip_denoised=self.clip_denoised)


def make_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample: sample i then does not depend on the rest of the batch."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def _batch_size(cond, generator, batch_size) -> int:
    if cond is not None:
        return cond.shape[0]
    if isinstance(generator, (list, tuple)):
        return len(generator)
    if batch_size is None:
        raise ValueError("sample() needs cond, a list of generators, or batch_size to know the batch size")
    return batch_size


def context_schedule(num_blocks: int, trained_blocks: int, window: int | None = None,
                     sink_blocks: int = 0) -> list[tuple[int, ...]]:
    """The clean context of every block: all earlier blocks, or with a rolling ``window``
    the first ``sink_blocks`` blocks plus the last ``window`` ones.

    Positions are re-based: block i is denoised at position ``len(context)``, with its
    context at positions 0.., so the model only ever sees positions it was trained on. While
    nothing has been dropped this is the plain schedule, and sampling is unchanged.
    """
    if window is None:
        if num_blocks > trained_blocks:
            raise ValueError(f"num_blocks={num_blocks} is past the model's trained length of {trained_blocks} blocks; "
                             f"pass window=W (and optionally sink_blocks) to roll the KV window")
        return [tuple(range(i)) for i in range(num_blocks)]
    if window < 1 or sink_blocks < 0:
        raise ValueError(f"window={window} must be >= 1 and sink_blocks={sink_blocks} >= 0")
    if sink_blocks + window > trained_blocks - 1:
        raise ValueError(f"sink_blocks + window = {sink_blocks + window} context blocks put the new block at position "
                         f"{sink_blocks + window}, past the trained positions 0..{trained_blocks - 1}; "
                         f"use sink_blocks + window <= {trained_blocks - 1}")
    out = []
    for i in range(num_blocks):
        if i <= sink_blocks + window:
            out.append(tuple(range(i)))
        else:
            out.append(tuple(range(sink_blocks)) + tuple(range(i - window, i)))
    return out


def _check_frame_blocks(cfg) -> None:
    if not (cfg.is_video and cfg.block_layout == "raster" and cfg.block_size % cfg.tokens_per_frame == 0):
        raise ValueError("generating a number of blocks other than the model's needs a video model whose blocks "
                         "are whole frames (block_layout='raster', block_size a multiple of a frame)")


def blocks_to_input(model, blocks: torch.Tensor) -> torch.Tensor:
    """(B, N, S, P) -> (B, C, *input_size), also for N past the trained length of a video
    model with whole-frame blocks (frames are concatenated)."""
    cfg = model.config
    T, N = cfg.num_blocks, blocks.shape[1]
    if N == T:
        return model.from_blocks(blocks)
    _check_frame_blocks(cfg)
    pad = (-N) % T
    if pad:
        blocks = torch.cat([blocks, blocks.new_zeros(blocks.shape[0], pad, *blocks.shape[2:])], dim=1)
    chunks = [model.from_blocks(c) for c in blocks.split(T, dim=1)]
    frames = (N * cfg.block_size) // cfg.tokens_per_frame
    return torch.cat(chunks, dim=2)[:, :, :frames]


@torch.no_grad()
def sample(
    model,
    cond: torch.Tensor | None = None,
    *,
    num_steps: int = 25,
    cfg_scale: float = 1.0,
    scheduler=None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    context_pass: str = "ride",
    on_block_end: BlockHook | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    output: str = "input",
    num_blocks: int | None = None,
    window: int | None = None,
    sink_blocks: int = 0,
    prefix: torch.Tensor | None = None,
    clip_denoised: bool = False,
) -> torch.Tensor:
    """Generate samples block by block.

    cond: class labels (B,) or (B, N), condition vectors (B, E) or (B, N, E), or None.
    cfg_scale: guidance ``u + s (c - u)``; 1 runs the conditional branch alone.
    scheduler: any diffusers scheduler (copied; reset for every block), or a sampler name
        from ``ardiff.diffusion.SAMPLERS``. Default: DPM-Solver++ order 2 (the ODE solver)
        with ``linspace`` timesteps.
    generator: a list with one generator per sample makes every sample independent of
        the batch it is in (see :func:`make_generators`).
    on_block_end: called with a :class:`BlockEvent`; may return a replacement block
        (B, S, P) that enters the context instead.
    output: ``"input"`` -> (B, C, *input_size); ``"blocks"`` -> (B, N, S, P).
    num_blocks: blocks to generate (default: the model's). Past the trained length it needs
        ``window``: a rolling KV window of the last ``window`` blocks plus ``sink_blocks``
        kept from the start, positions re-based (see :func:`context_schedule`). When the
        window slides, the cache is rebuilt from the kept blocks in one clean pass.
    prefix: (B, K, S, P) clean blocks given as blocks 0..K-1 (a video to continue, or blocks
        edited after they were made); generation starts at block K and they are returned as
        they are. Noise is drawn only for the new blocks, so passing the generators of an
        earlier call for blocks 0..K-1 continues its random stream exactly.
    clip_denoised: clip the clean sample predicted at every step to [-1, 1] (pixel-space
        models; see ``diffusion.schedule.sampling_scheduler``). Only with a sampler given by
        name: a scheduler object carries its own clipping settings.
    """
    if context_pass not in ("ride", "separate"):
        raise ValueError(f"context_pass={context_pass!r}; use 'ride' or 'separate'")
    cfg = model.config
    device, dtype = model.device, model.dtype
    B = _batch_size(cond, generator, batch_size)
    T, S, P = cfg.num_blocks, cfg.block_size, cfg.patch_dim
    N = T if num_blocks is None else int(num_blocks)
    contexts = context_schedule(N, T, window, sink_blocks)
    if N != T and output == "input":
        _check_frame_blocks(cfg)
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B}")
    K = 0 if prefix is None else prefix.shape[1]
    if prefix is not None and (prefix.dim() != 4 or prefix.shape[0] != B or tuple(prefix.shape[2:]) != (S, P)
                               or K > N):
        raise ValueError(f"prefix must be (batch={B}, K<={N}, block_size={S}, patch_dim={P}) clean blocks; "
                         f"got {tuple(prefix.shape)}")

    guided = cfg_scale != 1.0
    cond_emb = model.embed_condition(cond)
    if cond_emb is not None and cond_emb.shape[0] != B:
        cond_emb = cond_emb.expand(B, -1, -1)
    if guided:
        null_emb = model.null_condition(B)
        if null_emb is None:
            raise ValueError("cfg_scale != 1 needs a conditional model (num_classes or cond_dim > 0)")
    if cond_emb is not None and cond_emb.shape[1] not in (1, N):
        raise ValueError(f"per-block conditions must cover all {N} blocks, got {cond_emb.shape[1]}")

    if scheduler is None or isinstance(scheduler, str):
        base_scheduler = sampling_scheduler(cfg, scheduler or DEFAULT_SAMPLER, clip_denoised)
    elif clip_denoised:
        raise ValueError("clip_denoised=True needs a sampler given by name; set clipping on the scheduler "
                         "object instead (thresholding / clip_sample in its config)")
    else:
        base_scheduler = scheduler
    blocks = torch.empty(B, N, S, P, device=device, dtype=dtype)
    if K:
        blocks[:, :K] = prefix.to(device, dtype)
    max_context = max(len(c) for c in contexts)
    cache = (KVCache.allocate(model, B, max_context_blocks=max_context, max_groups=2 if guided else 1)
             if use_cache else None)
    cached: tuple[int, ...] = ()  # blocks whose K/V the cache holds, in position order

    block_iter = range(K, N)
    if progress:
        from tqdm.auto import tqdm

        block_iter = tqdm(block_iter, desc="blocks", unit="block")
    for i in block_iter:
        context = contexts[i]
        position = len(context)
        pending_clean = None  # the previous block, riding on this block's first step
        if use_cache and context != cached:
            if context[:-1] == cached and context[-1] == i - 1:  # the previous block joins the context
                if context_pass == "ride":
                    pending_clean = blocks[:, i - 1 : i]
                else:
                    model.run(clean=blocks[:, i - 1 : i], clean_first_block=position - 1, cache=cache)
            else:  # the window slid: rebuild the cache from the kept blocks at re-based positions
                cache.reset()
                model.run(clean=blocks[:, list(context)], clean_first_block=0, cache=cache)
            cached = context
        sched = copy.deepcopy(base_scheduler)
        sched.set_timesteps(num_steps, device=device)
        x = randn_tensor((B, S, P), generator=generator, device=device, dtype=dtype) * sched.init_noise_sigma
        emb_i = None if cond_emb is None else cond_emb[:, i if cond_emb.shape[1] > 1 else 0]
        group_emb = emb_i[:, None] if emb_i is not None else None
        if guided:
            group_emb = torch.stack([emb_i, null_emb[:, 0]], dim=1)
        groups = 2 if guided else 1
        for t in sched.timesteps:
            x_in = sched.scale_model_input(x, t)
            t_batch = torch.as_tensor(t, device=device).expand(B, groups)
            c = model.condition_vectors(t_batch, group_emb)
            noisy = x_in[:, None].expand(B, groups, S, P)
            if use_cache:
                eps = model.run(noisy=noisy, noisy_blocks=(position,) * groups, cond=c,
                                clean=pending_clean, clean_first_block=position - 1, cache=cache)
                pending_clean = None
            else:
                eps = model.run(noisy=noisy, noisy_blocks=(position,) * groups, cond=c,
                                clean=blocks[:, list(context)] if context else None)
            eps = eps[:, 1] + cfg_scale * (eps[:, 0] - eps[:, 1]) if guided else eps[:, 0]
            x = sched.step(eps, t, x, generator=generator).prev_sample
        if on_block_end is not None:
            replacement = on_block_end(BlockEvent(i, x, blocks[:, :i], cache, model))
            if replacement is not None:
                if replacement.shape != x.shape:
                    raise ValueError(f"on_block_end returned shape {tuple(replacement.shape)}, expected {tuple(x.shape)}")
                x = replacement.to(device=device, dtype=dtype)
        blocks[:, i] = x
    if output == "blocks":
        return blocks
    return blocks_to_input(model, blocks)
