"""RoPE-ND: rotary position embedding over several axes (h, w) or (t, h, w).

Two modes share one rotation formula, ``x * cos + rotate_half(x) * sin``; they differ
in their tables and in the channel groups that rotate-half swaps:

``paper``     (ACDiT paper, Eq. 4) the head dimension is cut into one contiguous
              segment per axis; each segment is rotated by its own 1-D RoPE, channel j
              paired with j + d/2 *inside* the segment. Block-diagonal, hence a true
              rotation: norm-preserving, and q.k depends only on relative positions.
              Base per axis: ``100 * ceil(8 L / (100 pi))``.
``official``  the released ACDiT code, reproduced for checkpoint compatibility:
              head_dim 64, per-axis tables ``[f, f]`` concatenated, but the rotate-half
              pairs channel j with j + 32 across the *whole* head, so channels of
              different axes (and frequencies) get mixed. Not norm-preserving, not
              shift-invariant; only for loading released weights.
``none``      no rotation (identity tables): attention sees no position at all. For the
              paper's position-encoding ablation (Fig. 9b).
``absolute``  no rotation either; the model adds fixed N-D sine-cosine position
              embeddings to the tokens instead (DiT's encoding, :func:`sincos_embedding`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

OFFICIAL_HEAD_DIM = 64
ROPE_MODES = ("paper", "official", "none", "absolute")
ROTATING_MODES = ("paper", "official")  # the others leave q and k as they are


def split_head_dim(head_dim: int, weights: Sequence[int]) -> list[int]:
    """Channels per axis, proportional to ``weights``; every segment must be even."""
    total = sum(weights)
    if any(w <= 0 for w in weights) or head_dim * min(weights) % total:
        raise ValueError(_split_error(head_dim, weights))
    sizes = [head_dim * w // total for w in weights]
    if sum(sizes) != head_dim or any(s % 2 for s in sizes):
        raise ValueError(_split_error(head_dim, weights))
    return sizes


def _split_error(head_dim: int, weights: Sequence[int]) -> str:
    n = len(weights)
    hint = " e.g. rope_axis_weights=(2, 3, 3) for a 64-channel head over (t, h, w)" if n == 3 else ""
    return (
        f"head dim {head_dim} cannot be split across {n} RoPE axes with weights {tuple(weights)}: "
        f"each axis needs an even number of channels and the weights must divide the head dim "
        f"exactly; change hidden_size/num_heads or set rope_axis_weights{hint}"
    )


def paper_base(axis_length: int) -> int:
    return 100 * math.ceil(8 * axis_length / (100 * math.pi))


def official_base(axis_length: int) -> int:
    return (int(8 * axis_length / math.pi) // 100 + 1) * 100


class RopeND:
    """Builds rotation tables for integer token coordinates.

    Not an ``nn.Module``: it is a pure function of the configuration; the model keeps
    the tables it needs as buffers.
    """

    def __init__(
        self,
        head_dim: int,
        axis_lengths: Sequence[int],
        mode: str = "paper",
        axis_weights: Sequence[int] | None = None,
    ):
        if mode not in ROPE_MODES:
            raise ValueError(f"rope mode {mode!r} is unknown: use one of {ROPE_MODES}")
        self.head_dim = head_dim
        self.axis_lengths = tuple(int(n) for n in axis_lengths)
        self.mode = mode
        n_axes = len(self.axis_lengths)
        weights = tuple(axis_weights) if axis_weights is not None else (1,) * n_axes
        if len(weights) != n_axes:
            raise ValueError(
                f"rope_axis_weights {weights} has {len(weights)} entries but the token grid has "
                f"{n_axes} axes {self.axis_lengths}"
            )
        if mode == "official" and head_dim != OFFICIAL_HEAD_DIM:
            raise ValueError(
                f"rope='official' reproduces the released code, whose head dim is fixed at "
                f"{OFFICIAL_HEAD_DIM}; this model has head dim {head_dim} (use rope='paper')"
            )
        self.segments = split_head_dim(head_dim, weights)

    # -- tables ---------------------------------------------------------------
    def _frequencies(self) -> list[torch.Tensor]:
        freqs = []
        for length, width in zip(self.axis_lengths, self.segments):
            half = width // 2
            if self.mode not in ROTATING_MODES:  # angle 0 everywhere: cos 1, sin 0
                freqs.append(torch.zeros(half, dtype=torch.float64, device="cpu"))
                continue
            if self.mode == "paper":
                base = paper_base(length)
                exponent = torch.arange(half, dtype=torch.float64, device="cpu") * 2 / width
            else:
                base = official_base(length)
                exponent = (torch.linspace(0, OFFICIAL_HEAD_DIM, half, dtype=torch.float64, device="cpu")
                            / OFFICIAL_HEAD_DIM)
            freqs.append(float(base) ** -exponent)
        return freqs

    def rotation_groups(self) -> tuple[tuple[int, int], ...]:
        """(offset, width) of each channel group rotated as a unit (channel j pairs with j + width/2)."""
        if self.mode == "official":  # rotate-half over the whole head, as released
            return ((0, self.head_dim),)
        offsets = [sum(self.segments[:i]) for i in range(len(self.segments))]
        return tuple(zip(offsets, self.segments))

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, both ``(N, head_dim)``, float64, for :func:`apply_rope`.

        ``positions`` is ``(N, n_axes)``: one integer (or fractional) coordinate per axis.
        """
        positions = positions.to(torch.float64)
        per_axis = []
        for axis, f in enumerate(self._frequencies()):
            # Both modes duplicate each axis's frequencies over the two halves of its segment.
            per_axis.append(positions[:, axis, None] * torch.cat([f, f])[None])
        angles = torch.cat(per_axis, dim=-1)
        # rotate_half gives (x[j + w/2], x[j]) for the first/second half of a group: the
        # minus sign of the first half lives in the sin table.
        sign = torch.ones(self.head_dim, dtype=torch.float64, device="cpu")
        for offset, width in self.rotation_groups():
            sign[offset : offset + width // 2] = -1
        return torch.cos(angles), torch.sin(angles) * sign


def sincos_embedding(width: int, positions: torch.Tensor, axis_weights: Sequence[int] | None = None,
                     base: float = 10000.0) -> torch.Tensor:
    """Fixed absolute position embeddings (N, width), float64: one segment per axis (split like
    RoPE's, :func:`split_head_dim`), each ``[sin(p f), cos(p f)]`` with DiT's frequencies
    ``base ** -(k / (w/2))`` (the encoding of DiT's ``get_2d_sincos_pos_embed``, N-D)."""
    positions = positions.to(torch.float64)
    n_axes = positions.shape[1]
    segments = split_head_dim(width, axis_weights or (1,) * n_axes)
    parts = []
    for axis, w in enumerate(segments):  # w is even (split_head_dim): w / 2 frequencies, as sin and cos
        freqs = base ** -(torch.arange(w // 2, dtype=torch.float64, device="cpu") / (w // 2))
        angles = positions[:, axis, None] * freqs[None]
        parts += [torch.sin(angles), torch.cos(angles)]  # DiT: [sin, cos] within each axis
    return torch.cat(parts, dim=-1)


def rotate_half(x: torch.Tensor, groups: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Swap the two halves of every channel group (a handful of slice copies)."""
    pieces = []
    for offset, width in groups:
        half = offset + width // 2
        pieces += [x[..., half : offset + width], x[..., offset:half]]
    return torch.cat(pieces, dim=-1)


class _ApplyRope(torch.autograd.Function):
    """y = x cos + R(x) sin, with R the half swap (a permutation, its own transpose), so
    dx = g cos + R(g sin): two fused passes instead of autograd's zero-fill per slice."""

    @staticmethod
    def forward(ctx, x, cos, sin, groups):
        ctx.save_for_backward(cos, sin)
        ctx.groups = groups
        return torch.addcmul(x * cos, rotate_half(x, groups), sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return (grad * cos).add_(rotate_half(grad * sin, ctx.groups)), None, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, groups) -> torch.Tensor:
    """Rotate ``x`` (..., L, head_dim) by tables (L, head_dim): x cos + rotate_half(x) sin.

    The tables are constants (no gradient flows into them).
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _ApplyRope.apply(x, cos, sin, groups)
    return torch.addcmul(x * cos, rotate_half(x, groups), sin)
