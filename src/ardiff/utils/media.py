"""Writing samples: PNG grids for images, GIF or MP4 (PyAV) for videos, optionally scaled up
and captioned."""

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


def font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed-size bitmap font
        return ImageFont.load_default()


def captioned_grid(images: torch.Tensor, nrow: int | None = None, scale: int = 1,
                   captions: list[str] | None = None, pad: int = 2) -> np.ndarray:
    """Like :func:`image_grid`, each image scaled up ``scale`` times (nearest neighbour) and,
    with ``captions``, a caption under each image. Returns (H, W, 3) uint8 when captioned."""
    grid = image_grid(images, nrow, pad=0)
    n, _, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    h, w = h * scale, w * scale
    if not captions:
        out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, grid.shape[-1]), dtype=np.uint8)
        for i in range(n):
            r, c = divmod(i, nrow)
            out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = \
                grid[r * h:(r + 1) * h, c * w:(c + 1) * w]
        return out
    from PIL import Image, ImageDraw

    caption_font = font(max(9, min(14, w // 6)))
    text_h = caption_font.getbbox("Ag")[3] + 4
    canvas = Image.new("RGB", (nrow * (w + pad) + pad, rows * (h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    tiles = grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1)
    for i in range(n):
        r, c = divmod(i, nrow)
        left, top = pad + c * (w + pad), pad + r * (h + text_h + pad)
        canvas.paste(Image.fromarray(tiles[r * h:(r + 1) * h, c * w:(c + 1) * w]), (left, top))
        text = captions[i] if i < len(captions) else ""
        while text and draw.textlength(text, font=caption_font) > w:
            text = text[:-1]
        draw.text((left + (w - draw.textlength(text, font=caption_font)) / 2, top + h + 1), text, fill=(0, 0, 0),
                  font=caption_font)
    return np.asarray(canvas)


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1,
                    captions: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, nrow) if scale == 1 and not captions else captioned_grid(images, nrow, scale, captions)
    _pil(grid).save(path)
    return path


def save_video_grid(videos: torch.Tensor, path: str | Path, fps: int = 8, nrow: int | None = None, scale: int = 1,
                    captions: list[str] | None = None) -> Path:
    """(N, C, F, H, W) -> animated GIF (``.gif``) or H.264 MP4 (``.mp4``, PyAV)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if scale == 1 and not captions:
        frames = [image_grid(videos[:, :, f], nrow) for f in range(videos.shape[2])]
    else:
        frames = [captioned_grid(videos[:, :, f], nrow, scale, captions) for f in range(videos.shape[2])]
    if path.suffix == ".mp4":
        _write_mp4(path, [f if f.shape[-1] == 3 else np.repeat(f, 3, -1) for f in frames], fps)
    else:
        images = [_pil(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    with Mp4Writer(path, fps) as writer:
        for frame in frames:
            writer.write(frame)


class Mp4Writer:
    """An H.264 MP4 (PyAV) written frame by frame: each frame is encoded when it is given, so a
    stream's frames reach the file as they are made, and closing (also on an error or Ctrl-C,
    as a context manager) leaves a playable file of the frames so far.

    Frames are (H, W, 3) or (H, W, 1) uint8 arrays of one size; odd sizes are padded by a row or
    column (yuv420p needs even sizes). The stream opens with the first frame, which sets the size.
    """

    def __init__(self, path: str | Path, fps: int = 8):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = fps
        self.frames_written = 0
        self._container = av.open(str(self.path), "w")
        self._stream = None

    def write(self, frame: np.ndarray) -> None:
        import av

        if frame.ndim != 3 or frame.shape[-1] not in (1, 3) or frame.dtype != np.uint8:
            raise ValueError(f"Mp4Writer.write takes (H, W, 1 or 3) uint8 frames, got {frame.shape} {frame.dtype}")
        if frame.shape[-1] == 1:
            frame = np.repeat(frame, 3, axis=-1)
        h, w = frame.shape[:2]
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height, self._stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
        if frame.shape[:2] != (self._stream.height, self._stream.width):
            raise ValueError(f"frame of {h}x{w} pixels in an MP4 of {self._stream.height}x{self._stream.width}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        self._container.mux(self._stream.encode(video_frame))
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent); without a frame, remove it."""
        if self._container is None:
            return
        try:
            if self._stream is not None:
                self._container.mux(self._stream.encode())
        finally:
            self._container.close()
            self._container = None
            if self._stream is None:  # nothing was written: leave no unplayable file behind
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_media(samples: torch.Tensor, path: str | Path, scale: int = 1, captions: list[str] | None = None,
               nrow: int | None = None, fps: int = 6) -> Path:
    """Images (N, C, H, W) -> a PNG grid; videos (N, C, F, H, W) -> a GIF or MP4 grid, or with a
    ``.png`` path a filmstrip (one clip per row, frames left to right). ``path`` is used as given."""
    path = Path(path)
    if samples.dim() == 4:
        return save_image_grid(samples, path, nrow=nrow, scale=scale, captions=captions)
    if path.suffix.lower() == ".png":
        n, _, frames = samples.shape[:3]
        strip_captions = None if not captions else [c if f == 0 else "" for c in captions for f in range(frames)]
        return save_image_grid(samples.transpose(1, 2).flatten(0, 1), path, nrow=frames, scale=scale,
                               captions=strip_captions)
    return save_video_grid(samples, path, fps=fps, nrow=nrow, scale=scale, captions=captions)
