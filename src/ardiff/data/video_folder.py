"""Class-folder video datasets (the UCF-101 layout), decoded with PyAV.

``root/<class name>/<video files>``. Each item is one clip, as in the paper's UCF-101
setting: ``num_frames`` frames taken every ``frame_stride`` frames from a random window,
each frame centre-cropped like the image folder, one flip for the whole clip.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch

from ardiff.data.image_folder import ClassFolderDataset, center_crop_arr

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")


def count_frames(path: Path) -> int:
    """Number of frames of the first video stream: the container's count, else one demux pass.

    Some containers (AVI, WebM) do not store a frame count; demuxing reads packets without
    decoding them, which is far cheaper than decoding the whole video.
    """
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"cannot decode video {path}: it has no video stream")
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def decode_frames(path: Path, indices: range, image_size: int) -> list[np.ndarray]:
    """The frames at ``indices`` (increasing), centre-cropped to uint8 (image_size, image_size, 3).

    Decodes from the start and stops after the last wanted frame (clips of short videos
    such as UCF-101 are cheaper to decode than to seek for).
    """
    wanted = set(indices)
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                frames.append(center_crop_arr(frame.to_image(), image_size))
                if len(frames) == len(indices):
                    break
    return frames


class VideoFolder(ClassFolderDataset):
    """Clips of a class-folder tree of videos as float (3, num_frames, image_size, image_size) in [-1, 1].

    The window start and the flip are drawn from a generator seeded by ``(seed, index)``,
    so a given index always yields the same clip. A video with fewer than
    ``(num_frames - 1) * frame_stride + 1`` frames, or one PyAV cannot decode, raises a
    ``ValueError`` naming the file, or is skipped and counted with ``skip_corrupt``.
    """

    extensions = VIDEO_EXTENSIONS
    kind = "video"

    def __init__(self, root: str | os.PathLike, image_size: int, num_frames: int = 16, frame_stride: int = 1,
                 hflip: bool = True, skip_corrupt: bool = False, seed: int = 0):
        if num_frames <= 0 or frame_stride <= 0:
            raise ValueError(f"num_frames={num_frames} and frame_stride={frame_stride} must both be > 0")
        super().__init__(root, image_size, hflip, skip_corrupt, seed)
        self.num_frames = num_frames
        self.frame_stride = frame_stride

    @property
    def window(self) -> int:
        """Frames a clip spans in the source video."""
        return (self.num_frames - 1) * self.frame_stride + 1

    def _load(self, path: Path, generator: torch.Generator) -> torch.Tensor:
        try:
            count = count_frames(path)
            if count < self.window:
                raise ValueError(
                    f"video {path} has {count} frames, fewer than the {self.window} a clip of "
                    f"num_frames={self.num_frames} with frame_stride={self.frame_stride} spans; "
                    f"lower data.num_frames or data.frame_stride, or set data.skip_corrupt=true to skip it")
            start = int(torch.randint(count - self.window + 1, (), generator=generator))
            frames = decode_frames(path, range(start, start + self.window, self.frame_stride), self.image_size)
        except (av.error.FFmpegError, OSError) as e:
            raise ValueError(f"cannot decode video {path}: {e}") from e
        if len(frames) < self.num_frames:
            raise ValueError(f"video {path}: its container reports {count} frames, but frame "
                             f"{start + self.window - 1} (the end of the clip) could not be decoded")
        clip = np.stack(frames)  # (F, H, W, 3)
        if self._flip(generator):
            clip = clip[:, :, ::-1]
        return torch.from_numpy(clip.transpose(3, 0, 1, 2).copy()).float() / 127.5 - 1.0
