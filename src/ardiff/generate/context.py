"""The clean context of block-autoregressive sampling: which earlier blocks each block sees
(all of them, or a rolling window), how the KV cache is brought up to date before a block,
and how blocks become the model's input layout again."""

from __future__ import annotations

import torch


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


def update_context(model, cache, blocks: torch.Tensor, index: int, context: tuple[int, ...],
                   cached: tuple[int, ...], context_pass: str) -> torch.Tensor | None:
    """Bring ``cache`` (holding the K/V of blocks ``cached``) to block ``index``'s ``context``.

    Returns the previous block when it is to ride on the block's first denoising step
    (``context_pass="ride"``), else None. With ``"separate"`` the previous block's K/V are
    written by a clean pass of their own; when the window slid, the cache is rebuilt from the
    kept blocks at their re-based positions.
    """
    if context == cached:
        return None
    if context[:-1] == cached and context[-1] == index - 1:  # the previous block joins the context
        previous = blocks[:, index - 1 : index]
        if context_pass == "ride":
            return previous
        model.run(clean=previous, clean_first_block=len(context) - 1, cache=cache)
        return None
    cache.reset()  # the window slid
    model.run(clean=blocks[:, list(context)], clean_first_block=0, cache=cache)
    return None


def check_frame_blocks(cfg, what: str = "generating a number of blocks other than the model's") -> None:
    """Raise unless the model is a video model whose blocks are whole frames; ``what`` names the need."""
    if not (cfg.is_video and cfg.block_layout == "raster" and cfg.block_size % cfg.tokens_per_frame == 0):
        raise ValueError(f"{what} needs a video model whose blocks are whole frames (block_layout='raster', "
                         f"block_size a multiple of a frame)")


def blocks_to_input(model, blocks: torch.Tensor) -> torch.Tensor:
    """(B, N, S, P) -> (B, C, *input_size), also for N past the trained length of a video
    model with whole-frame blocks (frames are concatenated)."""
    cfg = model.config
    T, N = cfg.num_blocks, blocks.shape[1]
    if N == T:
        return model.from_blocks(blocks)
    check_frame_blocks(cfg)
    pad = (-N) % T
    if pad:
        blocks = torch.cat([blocks, blocks.new_zeros(blocks.shape[0], pad, *blocks.shape[2:])], dim=1)
    chunks = [model.from_blocks(c) for c in blocks.split(T, dim=1)]
    frames = (N * cfg.block_size) // cfg.tokens_per_frame
    return torch.cat(chunks, dim=2)[:, :, :frames]


def block_to_frames(model, blocks: torch.Tensor) -> torch.Tensor:
    """(B, S, P) whole-frame blocks of a video ACDiT -> (B, k, C, H, W). Raster frame blocks
    are alike up to their offset, so any block decodes as if it were block 0."""
    c = model.config
    padded = blocks.new_zeros(blocks.shape[0], c.num_blocks, c.block_size, c.patch_dim)
    padded[:, 0] = blocks
    k = c.block_size // c.tokens_per_frame
    return model.from_blocks(padded)[:, :, :k].transpose(1, 2)


def frames_to_block(model, frames: torch.Tensor) -> torch.Tensor:
    """(B, k, C, H, W) -> (B, S, P): the inverse of :func:`block_to_frames`."""
    c = model.config
    video = frames.new_zeros(frames.shape[0], c.in_channels, *c.input_size)
    video[:, :, : frames.shape[1]] = frames.transpose(1, 2)
    return model.to_blocks(video)[:, 0]
