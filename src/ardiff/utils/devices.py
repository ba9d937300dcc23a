"""Which device a command runs on when the user does not say."""

from __future__ import annotations

import torch


def default_device(device: str | torch.device | None = None, local_rank: int | None = None) -> torch.device:
    """``device`` when given; else CUDA when available (``cuda:local_rank`` under torchrun), else the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda" if local_rank is None else f"cuda:{local_rank}")
    return torch.device("cpu")
