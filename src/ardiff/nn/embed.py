"""Condition embedders: diffusion timestep, class label, free embedding vector."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, **cos first, then sin**.

    The order matches the released ACDiT checkpoints; swapping it silently breaks them.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half
    )
    args = t.to(torch.float64)[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t -> 256-dim sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dtype = self.mlp[0].weight.dtype
        return self.mlp(timestep_sinusoid(t, self.frequency_dim).to(dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra row (index ``num_classes``) for the null class of CFG."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            bad = labels[(labels < 0) | (labels > self.num_classes)][0].item()
            raise ValueError(
                f"class label {bad} is out of range: the model has num_classes={self.num_classes} "
                f"(labels 0..{self.num_classes - 1}, {self.num_classes} is the null class)"
            )
        return self.embedding_table(labels)


class VectorEmbedder(nn.Module):
    """Projects a free condition vector (e.g. a text embedding) to the hidden size.

    ``null`` is a learned vector standing for "no condition" (CFG dropout and the
    unconditional branch), the counterpart of the null class row.
    """

    def __init__(self, cond_dim: int, hidden_size: int):
        super().__init__()
        self.cond_dim = cond_dim
        self.proj = nn.Sequential(nn.Linear(cond_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.null = nn.Parameter(torch.zeros(cond_dim))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[-1] != self.cond_dim:
            raise ValueError(
                f"condition vectors have size {vectors.shape[-1]} in their last dimension, "
                f"but the model was built with cond_dim={self.cond_dim}"
            )
        return self.proj(vectors.to(self.null.dtype))
