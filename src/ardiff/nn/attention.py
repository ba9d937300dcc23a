"""Multi-head attention with QK-norm and RoPE-ND, and the Skip-Causal Attention Mask.

SCAM is defined once, as a rule over per-token descriptors, and rendered two ways:
a dense boolean mask for ``scaled_dot_product_attention`` and a FlexAttention
``BlockMask``. Both renderings are memoised per (layout, device).

A sequence is a tuple of :class:`Span` s. Each span is a run of blocks of
``block_size`` tokens; a clean span holds clean blocks, a noisy span holds noisy
*groups*: one group per entry, each with its own block index and its own condition.
In training the noisy groups are the T noisy blocks; in sampling with classifier-free
guidance they are two copies of the same block (conditional and unconditional).

The rule (``scam_allowed``):
- a clean token of block i sees clean tokens of blocks <= i;
- a noisy token of block i sees clean tokens of blocks < i and the tokens of its own group.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ardiff.nn.norm import RMSNorm
from ardiff.nn.rope import apply_rope


# ---------------------------------------------------------------------------
#                                 SCAM
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Span:
    clean: bool
    blocks: tuple[int, ...]

    @staticmethod
    def clean_run(first: int, count: int) -> "Span":
        return Span(True, tuple(range(first, first + count)))

    @staticmethod
    def noisy(blocks: tuple[int, ...]) -> "Span":
        return Span(False, tuple(blocks))


ScamLayout = tuple[Span, ...]


def token_descriptors(layout: ScamLayout, block_size: int, device=None):
    """Per-token (is_clean, block, group) tensors; group is -1 for clean tokens."""
    clean, block, group = [], [], []
    next_group = 0
    for span in layout:
        for b in span.blocks:
            clean.append(span.clean)
            block.append(b)
            group.append(-1 if span.clean else next_group)
            next_group += 0 if span.clean else 1
    rep = lambda vals, dt: torch.tensor(vals, dtype=dt, device=device).repeat_interleave(block_size)
    return rep(clean, torch.bool), rep(block, torch.long), rep(group, torch.long)


def scam_allowed(q_clean, q_block, q_group, k_clean, k_block, k_group):
    """The one definition of SCAM. Works on broadcast tensors and inside FlexAttention."""
    sees_clean = k_clean & (k_block < q_block + q_clean.long())
    sees_own_group = ~k_clean & ~q_clean & (k_group == q_group)
    return sees_clean | sees_own_group


@functools.lru_cache(maxsize=128)
def dense_scam_mask(q_layout: ScamLayout, k_layout: ScamLayout, block_size: int, device) -> torch.Tensor | None:
    """Boolean (Lq, Lk) mask, or ``None`` when every query sees every key."""
    qc, qb, qg = token_descriptors(q_layout, block_size, device)
    kc, kb, kg = token_descriptors(k_layout, block_size, device)
    mask = scam_allowed(qc[:, None], qb[:, None], qg[:, None], kc[None], kb[None], kg[None])
    return None if bool(mask.all()) else mask


@functools.lru_cache(maxsize=32)
def flex_scam_mask(q_layout: ScamLayout, k_layout: ScamLayout, block_size: int, device):
    """FlexAttention ``BlockMask`` for the same rule, built lazily on ``device``."""
    from torch.nn.attention.flex_attention import create_block_mask

    qc, qb, qg = token_descriptors(q_layout, block_size, device)
    kc, kb, kg = token_descriptors(k_layout, block_size, device)

    def mask_mod(b, h, q_idx, kv_idx):
        return scam_allowed(qc[q_idx], qb[q_idx], qg[q_idx], kc[kv_idx], kb[kv_idx], kg[kv_idx])

    return create_block_mask(mask_mod, None, None, len(qc), len(kc), device=device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_attention_op(q, k, v, block_mask, compiled: bool | None = None):
    from torch.nn.attention.flex_attention import flex_attention

    if compiled is None:
        compiled = q.is_cuda
    fn = _compiled_flex_attention() if compiled else flex_attention
    return fn(q, k, v, block_mask=block_mask)


# ---------------------------------------------------------------------------
#                              Attention layer
# ---------------------------------------------------------------------------
class Attention(nn.Module):
    """Fused-QKV attention with per-head RMS QK-norm (one weight shared by all heads)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor, tuple],
        mask,
        *,
        query_start: int = 0,
        kv_buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_start: int = 0,
    ) -> torch.Tensor:
        """x: (B, L, D). Queries are tokens ``query_start:``; keys are the cached
        ``kv_buffers[..., :kv_start]`` (if given) followed by all L tokens, whose K/V
        are written into the buffers at ``kv_start``.
        """
        B, L, D = x.shape
        cos, sin, groups = rope  # (L, hd) tables
        # (B, L, H, hd) views: norms and RoPE run on the projection's own layout and
        # attention reads them transposed, so no permuted copy is made (nor in backward).
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).unbind(2)
        if query_start:
            q = q[:, query_start:]
        q = apply_rope(self.q_norm(q), cos[query_start:, None], sin[query_start:, None], groups).transpose(1, 2)
        k = apply_rope(self.k_norm(k), cos[:, None], sin[:, None], groups).transpose(1, 2)
        v = v.transpose(1, 2)
        if kv_buffers is not None:
            k_buf, v_buf = kv_buffers
            k_buf[:, :, kv_start : kv_start + L] = k
            v_buf[:, :, kv_start : kv_start + L] = v
            k, v = k_buf[:, :, : kv_start + L], v_buf[:, :, : kv_start + L]
        if mask is not None and not isinstance(mask, torch.Tensor):
            out = flex_attention_op(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, -1, D))
