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
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from ardiff.diffusion.schedule import default_sampling_scheduler
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
) -> torch.Tensor:
    """Generate samples block by block.

    cond: class labels (B,) or (B, T), condition vectors (B, E) or (B, T, E), or None.
    cfg_scale: guidance ``u + s (c - u)``; 1 runs the conditional branch alone.
    scheduler: any diffusers scheduler (copied; reset for every block). Default:
        DPM-Solver++ order 2 with ``linspace`` timesteps.
    generator: a list with one generator per sample makes every sample independent of
        the batch it is in (see :func:`make_generators`).
    on_block_end: called with a :class:`BlockEvent`; may return a replacement block
        (B, S, P) that enters the context instead.
    output: ``"input"`` -> (B, C, *input_size); ``"blocks"`` -> (B, T, S, P).
    """
    if context_pass not in ("ride", "separate"):
        raise ValueError(f"context_pass={context_pass!r}; use 'ride' or 'separate'")
    cfg = model.config
    device, dtype = model.device, model.dtype
    B = _batch_size(cond, generator, batch_size)
    T, S, P = cfg.num_blocks, cfg.block_size, cfg.patch_dim
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B}")

    guided = cfg_scale != 1.0
    cond_emb = model.embed_condition(cond)
    if cond_emb is not None and cond_emb.shape[0] != B:
        cond_emb = cond_emb.expand(B, -1, -1)
    if guided:
        null_emb = model.null_condition(B)
        if null_emb is None:
            raise ValueError("cfg_scale != 1 needs a conditional model (num_classes or cond_dim > 0)")
    if cond_emb is not None and cond_emb.shape[1] not in (1, T):
        raise ValueError(f"per-block conditions must cover all {T} blocks, got {cond_emb.shape[1]}")

    base_scheduler = scheduler if scheduler is not None else default_sampling_scheduler(cfg)
    blocks = torch.empty(B, T, S, P, device=device, dtype=dtype)
    cache = KVCache.allocate(model, B, max_groups=2 if guided else 1) if use_cache else None
    pending_clean = None  # finished block waiting to ride on the next block's first step

    block_iter = range(T)
    if progress:
        from tqdm.auto import tqdm

        block_iter = tqdm(block_iter, desc="blocks", unit="block")
    for i in block_iter:
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
                eps = model.run(noisy=noisy, noisy_blocks=(i,) * groups, cond=c,
                                clean=pending_clean, clean_first_block=i - 1, cache=cache)
                pending_clean = None
            else:
                eps = model.run(noisy=noisy, noisy_blocks=(i,) * groups, cond=c,
                                clean=blocks[:, :i] if i else None)
            eps = eps[:, 1] + cfg_scale * (eps[:, 0] - eps[:, 1]) if guided else eps[:, 0]
            x = sched.step(eps, t, x, generator=generator).prev_sample
        if on_block_end is not None:
            replacement = on_block_end(BlockEvent(i, x, blocks[:, :i], cache, model))
            if replacement is not None:
                if replacement.shape != x.shape:
                    raise ValueError(f"on_block_end returned shape {tuple(replacement.shape)}, expected {tuple(x.shape)}")
                x = replacement.to(device=device, dtype=dtype)
        blocks[:, i] = x
        if use_cache and i < T - 1:
            if context_pass == "ride":
                pending_clean = x[:, None]
            else:
                model.run(clean=x[:, None], clean_first_block=i, cache=cache)
    if output == "blocks":
        return blocks
    return model.from_blocks(blocks)
