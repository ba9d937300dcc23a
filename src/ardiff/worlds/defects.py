"""Detectable defects of story-world frames, and the masks a user would draw to fix them.

A frame of the world holds exactly one item on a flat background. Two defects can be checked
without a model: a **missing** item (almost no pixel differs from the background) and a
**duplicated** item (a second large blob apart from the main one). The masks follow the
paper's user constraints: erase the extra blob (mask its dilated area, so the corrector
repaints background there), or redraw a missing item where the story says it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ardiff.worlds.story import SIZES, FrameState, item_offset

MIN_ITEM_PIXELS = 12  # a blob smaller than this is noise, not an item
DUPLICATE_FRACTION = 0.35  # a second blob this large relative to the main one is a second item


def background_colour(frame: torch.Tensor) -> torch.Tensor:
    """(3,) median colour of the frame's border pixels (items never cover the whole border)."""
    border = torch.cat([frame[:, 0], frame[:, -1], frame[:, 1:-1, 0], frame[:, 1:-1, -1]], dim=1)
    return border.median(dim=1).values


def foreground(frame: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """(H, W) bool: pixels whose colour is farther than ``threshold`` (in [-1, 1] units) from the background."""
    return (frame - background_colour(frame)[:, None, None]).abs().amax(0) > threshold


def components(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) int labels of 8-connected components (0 = background), by label propagation."""
    H, W = mask.shape
    labels = torch.where(mask, torch.arange(1, H * W + 1, dtype=torch.float32).view(H, W), torch.zeros(H, W))
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        if torch.equal(grown, labels):
            return labels.long()
        labels = grown


def blob_sizes(frame: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    labels = components(foreground(frame))
    ids, counts = labels[labels > 0].unique(return_counts=True)
    order = counts.argsort(descending=True)
    return labels, [(int(ids[k]), int(counts[k])) for k in order]


def detect_defect(frame: torch.Tensor) -> str | None:
    """``"missing"``, ``"duplicate"`` or None for a (3, 32, 32) frame in [-1, 1]."""
    _, blobs = blob_sizes(frame)
    big = [n for _, n in blobs if n >= MIN_ITEM_PIXELS]
    if not big:
        return "missing"
    if len(big) > 1 and big[1] >= DUPLICATE_FRACTION * big[0]:
        return "duplicate"
    return None


def repair_mask(frame: torch.Tensor, defect: str, state: FrameState | None = None, dilate: int = 2) -> torch.Tensor:
    """(1, 1, H, W) mask (1 = may change) for a defect.

    duplicate: every blob but the largest, dilated by ``dilate`` pixels (erase the extra item).
    missing: the item's cell from the story's ``state`` (where the user wants it drawn).
    """
    if defect == "duplicate":
        labels, blobs = blob_sizes(frame)
        extra = torch.zeros_like(labels, dtype=torch.float32)
        for label, _ in blobs[1:]:
            extra[labels == label] = 1
        mask = F.max_pool2d(extra[None, None], 2 * dilate + 1, stride=1, padding=dilate)
        return mask
    if defect == "missing":
        if state is None:
            raise ValueError("repairing a missing item needs the story's state (where the item should be)")
        side = SIZES[state.size]
        r, c = item_offset(state.size, state.row), item_offset(state.size, state.col)
        mask = torch.zeros(1, 1, *frame.shape[-2:])
        mask[..., r:r + side, c:c + side] = 1
        return mask
    raise ValueError(f"defect={defect!r}; use 'duplicate' or 'missing'")
