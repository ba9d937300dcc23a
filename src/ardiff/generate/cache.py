"""A static, preallocated key/value cache for block-autoregressive sampling.

Layout per layer: ``(B, heads, capacity, head_dim)``. Slots ``[0, num_blocks * S)`` hold
the clean context (keys already rotated by RoPE). The slots after the context are
scratch space: during a denoising step the noisy groups (and, on a block's first step,
the previous block's clean tokens) write their K/V there, so attention reads one
contiguous prefix and nothing is ever concatenated. Clean blocks written by
:meth:`ACDiT.run` become context by advancing ``num_blocks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCache:
    keys: torch.Tensor  # (depth, B, H, capacity, head_dim)
    values: torch.Tensor
    block_size: int
    num_blocks: int = 0

    @classmethod
    def allocate(cls, model, batch_size: int, max_context_blocks: int | None = None, max_groups: int = 2,
                 device=None, dtype=None) -> "KVCache":
        """Room for ``max_context_blocks`` context blocks (default: all but the last) plus
        one riding clean block and ``max_groups`` noisy groups of scratch."""
        c = model.config
        if max_context_blocks is None:
            max_context_blocks = c.num_blocks - 1
        capacity = (max_context_blocks + 1 + max_groups) * c.block_size
        shape = (c.depth, batch_size, c.num_heads, capacity, c.head_dim)
        device = device or model.device
        dtype = dtype or model.dtype
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype),
                   c.block_size)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[index], self.values[index]

    def reset(self) -> None:
        self.num_blocks = 0
