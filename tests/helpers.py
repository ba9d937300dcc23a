"""Shared test helpers: tiny random ACDiT models and the skip mark of tests that read
Fashion-MNIST. Import them (``from helpers import tiny_model``); conftest.py only sets up the
environment and fixtures."""

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig
from ardiff.data.fashion_mnist import locate_fashion_mnist


def have_fashion_mnist() -> bool:
    """Whether both Fashion-MNIST splits are here without a download (Debian's package or the user cache)."""
    try:
        for split in ("train", "test"):
            locate_fashion_mnist(split=split, download=False)
    except FileNotFoundError:
        return False
    return True


HAVE_FMNIST = have_fashion_mnist()
# The data is an optional Debian package: tests that read it skip without it.
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="needs Fashion-MNIST: install the Debian package "
                                                          "dataset-fashion-mnist")


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter a non-trivial value (adaLN-Zero init makes outputs 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny_model(dtype=torch.float64, seed=0, **overrides) -> ACDiT:
    torch.manual_seed(seed)
    model = ACDiT(ACDiTConfig.preset("tiny", **overrides))
    return randomize(model, seed).to(dtype).eval()
