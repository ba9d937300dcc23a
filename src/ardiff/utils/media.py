"""Writing samples: PNG grids for images, GIF (or MP4 with imageio) for videos."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats -> uint8 numpy, same shape."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8."""
    x = to_uint8(images)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = x[i].transpose(1, 2, 0)
    return grid


def _pil(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _pil(image_grid(images, nrow)).save(path)
    return path


def save_video_grid(videos: torch.Tensor, path: str | Path, fps: int = 8, nrow: int | None = None) -> Path:
    """(N, C, F, H, W) -> animated GIF (``.gif``) or MP4 (``.mp4``, needs imageio + ffmpeg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [image_grid(videos[:, :, f], nrow) for f in range(videos.shape[2])]
    if path.suffix == ".mp4":
        import imageio.v3 as iio

        iio.imwrite(path, np.stack([f if f.shape[-1] == 3 else np.repeat(f, 3, -1) for f in frames]), fps=fps)
    else:
        images = [_pil(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def save_media(samples: torch.Tensor, stem: str | Path, video_format: str = "gif") -> Path:
    """Images (N, C, H, W) -> ``stem.png``; videos (N, C, F, H, W) -> ``stem.gif``/``.mp4``."""
    stem = Path(stem)
    if samples.dim() == 4:
        return save_image_grid(samples, stem.with_suffix(".png"))
    return save_video_grid(samples, stem.with_suffix(f".{video_format}"))
