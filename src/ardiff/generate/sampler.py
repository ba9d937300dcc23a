"""Block-autoregressive sampling with any diffusers scheduler.

For block i the full denoising loop runs with blocks 0..i-1 as clean context; the
finished block then joins the context. With ``use_cache=True`` the context lives in a
:class:`KVCache`: the finished block's clean K/V ride along with the first denoising
step of the next block (``context_pass="ride"``), or are computed by a separate pass
(``context_pass="separate"``). ``use_cache=False`` recomputes the whole context at every
step: the reference path.

Classifier-free guidance runs the conditional and unconditional branches as two noisy
groups of one sequence: the label-independent clean context is computed once for both.
Two further guidances add to a guided step: autoguidance by a weaker model
(:class:`Autoguide`) and, for video, history guidance by the model's own prediction of the
block without its context (:class:`HistoryGuide`).

Layout: checks and preparation are named helpers below; the context step (ride, separate,
rebuild after the window slid) lives in :mod:`ardiff.generate.context`; :func:`sample` is
the block loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from ardiff.diffusion.schedule import scheduler_step
from ardiff.generate.cache import KVCache
from ardiff.generate.context import blocks_to_input, check_frame_blocks, context_schedule, update_context
from ardiff.generate.settings import SamplingSettings

__all__ = ["Autoguide", "BlockEvent", "BlockHook", "HistoryGuide", "StepEvent", "StepHook", "check_guide_model",
           "draw_noise", "sample"]


@dataclass
class BlockEvent:
    """Passed to ``on_block_end`` after block ``index`` is denoised."""

    index: int
    block: torch.Tensor  # (B, S, P) the finished block, patch features
    blocks: torch.Tensor  # (B, index, S, P) the blocks finished before it
    cache: KVCache | None
    model: object


BlockHook = Callable[[BlockEvent], "torch.Tensor | None"]


@dataclass
class StepEvent:
    """Passed to ``on_step`` before each denoising step of block ``index``."""

    index: int
    step: int  # 0 .. num_steps - 1
    timestep: int
    x: torch.Tensor  # (B, S, P) the noisy block at ``timestep``, as the model is about to see it


StepHook = Callable[[StepEvent], None]


# ---------------------------------------------------------------------------
#                       Noise, checks and preparation
# ---------------------------------------------------------------------------
def draw_noise(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal noise drawn with ``generator`` (one, a list of one per sample, or None)
    and moved to ``device``: CPU generators draw on the CPU, so a seed means the same noise
    on every device (as diffusers' ``randn_tensor`` does)."""
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)


# ---------------------------------------------------------------------------
#                       Checks and preparation
# ---------------------------------------------------------------------------
def _batch_size(cond, generator, batch_size) -> int:
    if cond is not None:
        return cond.shape[0]
    if isinstance(generator, (list, tuple)):
        return len(generator)
    if batch_size is None:
        raise ValueError("sample() needs cond, a list of generators, or batch_size to know the batch size")
    return batch_size


def _check_arguments(cfg, B: int, N: int, generator, prefix, context_pass: str, output: str) -> int:
    """Raise on inconsistent arguments; returns the number of prefix blocks."""
    if context_pass not in ("ride", "separate"):
        raise ValueError(f"context_pass={context_pass!r}; use 'ride' or 'separate'")
    if N != cfg.num_blocks and output == "input":
        check_frame_blocks(cfg)
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for a batch of {B}")
    K = 0 if prefix is None else prefix.shape[1]
    S, P = cfg.block_size, cfg.patch_dim
    if prefix is not None and (prefix.dim() != 4 or prefix.shape[0] != B or tuple(prefix.shape[2:]) != (S, P)
                               or K > N):
        raise ValueError(f"prefix must be (batch={B}, K<={N}, block_size={S}, patch_dim={P}) clean blocks; "
                         f"got {tuple(prefix.shape)}")
    return K


def _prepare_conditions(model, cond, B: int, N: int, guided: bool):
    """The condition embeddings (B, 1 or N, D) and, under guidance, the null ones (B, 1, D)."""
    cond_emb = model.embed_condition(cond)
    if cond_emb is not None and cond_emb.shape[0] != B:
        cond_emb = cond_emb.expand(B, -1, -1)
    null_emb = None
    if guided:
        null_emb = model.null_condition(B)
        if null_emb is None:
            raise ValueError("cfg_scale != 1 needs a conditional model (num_classes or cond_dim > 0)")
    if cond_emb is not None and cond_emb.shape[1] not in (1, N):
        raise ValueError(f"per-block conditions must cover all {N} blocks, got {cond_emb.shape[1]}")
    return cond_emb, null_emb


def _prepare_scheduler(cfg, settings: SamplingSettings, scheduler):
    """The settings' scheduler, or the scheduler object given instead of ``settings.sampler``."""
    if scheduler is None:
        return settings.scheduler(cfg)
    if isinstance(scheduler, str):
        raise TypeError(f"scheduler={scheduler!r}: name a sampler in the settings, SamplingSettings(sampler=...); "
                        f"scheduler= takes a diffusers scheduler object")
    if settings.clip_denoised:
        raise ValueError("clip_denoised=True needs a sampler given by name; set clipping on the scheduler "
                         "object instead (thresholding / clip_sample in its config)")
    return scheduler


def _fresh_scheduler(base, settings: SamplingSettings, device):
    """A copy of ``base`` set to the settings' steps: every block starts the schedule afresh."""
    scheduler = copy.deepcopy(base)
    settings.set_timesteps(scheduler, device)
    return scheduler


def _group_conditions(cond_emb, null_emb, index: int) -> torch.Tensor | None:
    """Block ``index``'s condition per noisy group: (B, 1, D), or (B, 2, D) with the null
    condition as the second group under guidance."""
    emb = None if cond_emb is None else cond_emb[:, index if cond_emb.shape[1] > 1 else 0]
    if null_emb is not None:
        return torch.stack([emb, null_emb[:, 0]], dim=1)
    return emb[:, None] if emb is not None else None


def check_guide_model(model, guide_model) -> None:
    """Autoguidance needs a guide that reads and writes the same tokens under the same conditions."""
    a, b = model.config, guide_model.config
    fields = ("input_size", "in_channels", "patch_size", "block_size", "num_blocks", "block_layout",
              "num_classes", "cond_dim", "num_train_timesteps", "beta_start", "beta_end")
    differ = [f"{f}: {getattr(a, f, None)!r} vs {getattr(b, f, None)!r}" for f in fields
              if getattr(a, f, None) != getattr(b, f, None)]
    if differ:
        raise ValueError("guide_model must share the model's token layout and conditioning; they differ in "
                         + "; ".join(differ))
    if guide_model.device != model.device or guide_model.dtype != model.dtype:
        raise ValueError(f"guide_model is on {guide_model.device} / {guide_model.dtype}, the model on "
                         f"{model.device} / {model.dtype}; move it with .to()")


def _block_range(first: int, end: int, progress: bool):
    if not progress:
        return range(first, end)
    from tqdm.auto import tqdm

    return tqdm(range(first, end), desc="blocks", unit="block")


def _finish_block(on_block_end, index, x, blocks, cache, model) -> torch.Tensor:
    """The finished block, or the replacement ``on_block_end`` returns for it."""
    if on_block_end is None:
        return x
    replacement = on_block_end(BlockEvent(index, x, blocks[:, :index], cache, model))
    if replacement is None:
        return x
    if replacement.shape != x.shape:
        raise ValueError(f"on_block_end returned shape {tuple(replacement.shape)}, expected {tuple(x.shape)}")
    return replacement.to(device=x.device, dtype=x.dtype)


def _predict(model, x_in, t, groups: int, emb, position: int, context, blocks, cache, pending_clean) -> torch.Tensor:
    """The model's epsilon for ``groups`` copies of the noisy block (B, G, S, P): read from the KV
    cache (``pending_clean`` riding along), or, without a cache, with the context recomputed."""
    B, S, P = x_in.shape
    c = model.condition_vectors(torch.as_tensor(t, device=x_in.device).expand(B, groups), emb)
    noisy = x_in[:, None].expand(B, groups, S, P)
    if cache is not None:
        return model.run(noisy=noisy, noisy_blocks=(position,) * groups, cond=c, clean=pending_clean,
                         clean_first_block=position - 1, cache=cache)
    return model.run(noisy=noisy, noisy_blocks=(position,) * groups, cond=c,
                     clean=blocks[:, list(context)] if context else None)


# ---------------------------------------------------------------------------
#                 Autoguidance: the weaker model and its cache
# ---------------------------------------------------------------------------
@dataclass
class Autoguide:
    """Autoguidance (Karras et al., 2024, "Guiding a diffusion model with a bad version of
    itself"): a weaker model of the same layout and conditioning (an earlier training stage,
    or a smaller model) guides with the same condition, pushing away from its errors rather
    than towards the class's mode. A guided step is
    ``m(c) + (cfg_scale - 1) (m(c) - m(null)) + (scale - 1) (m(c) - g(c))``; with
    ``cfg_scale=1`` that is ``g(c) + scale (m(c) - g(c))``. The guide keeps its own KV cache,
    its context K/V written by a separate clean pass (so guidance intervals need no ride).
    """

    model: object
    scale: float
    cond_emb: torch.Tensor | None  # (B, 1 or N, D), the guide's own embedding of the condition
    cache: KVCache | None

    @classmethod
    def prepare(cls, model, guide_model, scale: float, cond, B: int, N: int, contexts, use_cache: bool):
        """The guide for :func:`sample`, or None without one; raises when model and scale disagree."""
        if guide_model is None:
            if scale != 1.0:
                raise ValueError(f"guide_scale={scale} needs a guide_model (the weaker model to guide with)")
            return None
        if scale == 1.0:
            raise ValueError("guide_model is given but guide_scale=1 leaves it unused; pass guide_scale > 1 (e.g. 2)")
        check_guide_model(model, guide_model)
        cond_emb = _prepare_conditions(guide_model, cond, B, N, False)[0]
        cache = (KVCache.allocate(guide_model, B, max_context_blocks=max(len(c) for c in contexts), max_groups=1)
                 if use_cache else None)
        return cls(guide_model, float(scale), cond_emb, cache)

    def update_context(self, blocks, index: int, context: tuple[int, ...], cached: tuple[int, ...]) -> None:
        update_context(self.model, self.cache, blocks, index, context, cached, "separate")

    def apply(self, eps, eps_cond, x_in, t, index: int, position: int, blocks, context) -> torch.Tensor:
        """``eps`` (the model's guided prediction) moved by ``(scale - 1) (m(c) - g(c))``."""
        emb = _group_conditions(self.cond_emb, None, index)
        g = _predict(self.model, x_in, t, 1, emb, position, context, blocks, self.cache, None)
        return eps + (self.scale - 1.0) * (eps_cond - g[:, 0])


# ---------------------------------------------------------------------------
#               History guidance: the same model without its context
# ---------------------------------------------------------------------------
@dataclass
class HistoryGuide:
    """History guidance (Song et al., 2025, "History-guided video diffusion"): the model's own
    prediction for the block without its context guides with the same condition, pushing the
    block towards what the frames before it imply: ``(scale - 1) (m(c, h) - m(c, none))``.

    No extra training: the block is predicted alone at the first block's position, which is
    what the first block of every training clip is (with relative RoPE the position makes no
    difference). So it needs blocks of whole frames: an image's tile alone reads as its first.
    """

    model: object
    scale: float
    cond_emb: torch.Tensor | None

    @classmethod
    def prepare(cls, model, scale: float, cond_emb):
        """The guide for :func:`sample`, or None at scale 1; raises on a model it cannot guide."""
        if scale == 1.0:
            return None
        check_frame_blocks(model.config, "history_scale")
        return cls(model, float(scale), cond_emb)

    def update_context(self, blocks, index: int, context: tuple[int, ...], cached: tuple[int, ...]) -> None:
        pass  # the context-free prediction keeps no cache

    def apply(self, eps, eps_cond, x_in, t, index: int, position: int, blocks, context) -> torch.Tensor:
        """``eps`` moved by ``(scale - 1) (m(c, h) - m(c, none))``; the first block has no history."""
        if not context:
            return eps
        emb = _group_conditions(self.cond_emb, None, index)
        alone = _predict(self.model, x_in, t, 1, emb, 0, (), blocks, None, None)
        return eps + (self.scale - 1.0) * (eps_cond - alone[:, 0])


# ---------------------------------------------------------------------------
#                              The block loop
# ---------------------------------------------------------------------------
@torch.no_grad()
def sample(model, cond: torch.Tensor | None = None, settings: SamplingSettings | None = None, *,
           generator: torch.Generator | list[torch.Generator] | None = None, scheduler=None, use_cache: bool = True,
           context_pass: str = "ride", on_block_end: BlockHook | None = None, batch_size: int | None = None,
           progress: bool = False, output: str = "input", num_blocks: int | None = None, window: int | None = None,
           sink_blocks: int = 0, prefix: torch.Tensor | None = None, guide_model=None,
           guide_scale: float = 1.0, on_step: StepHook | None = None) -> torch.Tensor:
    """Generate samples block by block.

    cond: class labels (B,) or (B, N), condition vectors (B, E) or (B, N, E), or None.
    settings: how each block is denoised (:class:`SamplingSettings`: steps, sampler,
        classifier-free guidance ``u + s (c - u)`` and its interval, history guidance,
        clipping). Default: ``SamplingSettings(cfg_scale=1)``, the conditional branch alone
        with 25 DPM-Solver++ steps.
    generator: a list with one generator per sample makes every sample independent of
        the batch it is in (see :func:`make_generators`). CPU generators give the same noise
        on every device (it is drawn on the CPU and moved).
    scheduler: a diffusers scheduler object to use instead of ``settings.sampler`` (copied;
        reset for every block); it carries its own clipping settings.
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
    guide_model, guide_scale: autoguidance: guided steps also add ``(guide_scale - 1) (m(c) -
        g(c))`` for a weaker model g of the same layout (see :class:`Autoguide`).
    on_step: called with a :class:`StepEvent` before every step (a trajectory's states); read only.

    Guidance interval (``settings.guidance_interval``): guidance applies only at steps with
    ``low <= t / num_train_timesteps <= high``; the other steps run the conditional branch
    alone (half the compute). History guidance (``settings.history_scale``): guided steps of
    blocks with context also add ``(h - 1) (m(c, history) - m(c, none))`` (:class:`HistoryGuide`).
    """
    settings = SamplingSettings(cfg_scale=1.0) if settings is None else settings
    if not isinstance(settings, SamplingSettings):
        raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    cfg, device, dtype = model.config, model.device, model.dtype
    B = _batch_size(cond, generator, batch_size)
    T, S, P = cfg.num_blocks, cfg.block_size, cfg.patch_dim
    N = T if num_blocks is None else int(num_blocks)
    contexts = context_schedule(N, T, window, sink_blocks)
    K = _check_arguments(cfg, B, N, generator, prefix, context_pass, output)
    guided, cfg_scale = settings.guided, settings.cfg_scale
    groups = 2 if guided else 1
    cond_emb, null_emb = _prepare_conditions(model, cond, B, N, guided)
    guides = [g for g in (Autoguide.prepare(model, guide_model, guide_scale, cond, B, N, contexts, use_cache),
                          HistoryGuide.prepare(model, settings.history_scale, cond_emb)) if g is not None]
    base_scheduler = _prepare_scheduler(cfg, settings, scheduler)

    blocks = torch.empty(B, N, S, P, device=device, dtype=dtype)
    if K:
        blocks[:, :K] = prefix.to(device, dtype)
    cache = (KVCache.allocate(model, B, max_context_blocks=max(len(c) for c in contexts), max_groups=groups)
             if use_cache else None)
    cached: tuple[int, ...] = ()  # blocks whose K/V the cache holds, in position order
    for i in _block_range(K, N, progress):
        context, position = contexts[i], len(contexts[i])
        pending_clean = None  # the previous block, riding on this block's first step
        if use_cache:
            pending_clean = update_context(model, cache, blocks, i, context, cached, context_pass)
            for guide in guides:
                guide.update_context(blocks, i, context, cached)
            cached = context
        sched = _fresh_scheduler(base_scheduler, settings, device)
        x = draw_noise((B, S, P), generator, device, dtype) * sched.init_noise_sigma
        group_emb = _group_conditions(cond_emb, null_emb, i)
        timesteps = sched.timesteps
        for k, t in enumerate(timesteps):
            if on_step is not None:
                on_step(StepEvent(i, k, int(t), x))
            x_in = sched.scale_model_input(x, t)
            in_interval = settings.guided_at(t, cfg.num_train_timesteps)
            step_guided = guided and in_interval
            step_groups = 2 if step_guided else 1
            step_emb = group_emb if step_guided or group_emb is None else group_emb[:, :1]
            eps = _predict(model, x_in, t, step_groups, step_emb, position, context, blocks, cache, pending_clean)
            pending_clean = None
            eps_cond = eps[:, 0]
            eps = eps[:, 1] + cfg_scale * (eps[:, 0] - eps[:, 1]) if step_guided else eps[:, 0]
            for guide in guides if in_interval else ():
                eps = guide.apply(eps, eps_cond, x_in, t, i, position, blocks, context)
            x = scheduler_step(sched, eps, t, timesteps[k + 1] if k + 1 < len(timesteps) else None, x, generator)
        blocks[:, i] = _finish_block(on_block_end, i, x, blocks, cache, model)
    return blocks if output == "blocks" else blocks_to_input(model, blocks)
