"""Moving Fashion-MNIST: real Fashion-MNIST items gliding and bouncing on a black canvas.

A small video benchmark with real textures and exactly known dynamics (constant velocity,
elastic bounces off the canvas edges), so video models can be trained and checked on a
CPU. Videos are synthesised on demand: video ``i`` is a pure function of
``(seed, split, i)``, so any subset can be regenerated without a pass over the others.
"""

from __future__ import annotations

import math
import os

import torch
from torch.utils.data import Dataset

from ardiff.data.fashion_mnist import FILES, load_fashion_mnist
from ardiff.utils.seeding import seeded_generator

ITEM_SIZE = 28
SPLIT_KEYS = {split: k for k, split in enumerate(FILES)}  # train: 0, test: 1


class MovingFashionMNIST(Dataset):
    """Videos (1, num_frames, canvas_size, canvas_size) in [-1, 1] and the class of the first item.

    Each video places ``num_items`` Fashion-MNIST items of ``split`` at uniform random
    positions, each moving ``speed`` pixels per frame in a uniform random direction and
    reflecting off the canvas edges, so an item is always fully visible. Positions are
    floats, rounded to pixels when drawn; overlapping items combine by maximum.
    """

    num_classes = 10

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, num_frames: int = 16,
                 canvas_size: int = 64, num_items: int = 1, speed: float = 2.0, num_videos: int = 10000,
                 seed: int = 0):
        if split not in SPLIT_KEYS:
            raise ValueError(f"split={split!r}; use one of {', '.join(SPLIT_KEYS)}")
        checks = [
            (canvas_size >= ITEM_SIZE, f"canvas_size={canvas_size} must be >= {ITEM_SIZE} (the item size)"),
            (num_frames > 0, f"num_frames={num_frames} must be > 0"),
            (num_items > 0, f"num_items={num_items} must be > 0"),
            (num_videos > 0, f"num_videos={num_videos} must be > 0"),
            (speed >= 0, f"speed={speed} must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"MovingFashionMNIST: {msg}")
        self.split = split
        self.num_frames = num_frames
        self.canvas_size = canvas_size
        self.num_items = num_items
        self.speed = float(speed)
        self.num_videos = num_videos
        self.seed = seed
        self.images, self.labels = load_fashion_mnist(root, split)

    def __len__(self) -> int:
        return self.num_videos

    def _check_index(self, index: int) -> int:
        if not -self.num_videos <= index < self.num_videos:
            raise IndexError(f"video index {index} out of range for num_videos={self.num_videos}")
        return index % self.num_videos

    def _draw_items(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(len(self.images), (self.num_items,), generator=generator)

    def class_labels(self) -> torch.Tensor:
        """The class of every video (that of its first item), without drawing any frame."""
        key = SPLIT_KEYS[self.split]
        first = [int(self._draw_items(seeded_generator(self.seed, key, i))[0]) for i in range(self.num_videos)]
        return self.labels[torch.tensor(first)]

    def tracks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Item indices (num_items,) into the split, and top-left pixel positions (num_frames, num_items, 2).

        Positions are (row, col) of each item's top-left corner. Exposed so tests and
        analyses can check the dynamics against the frames.
        """
        g = seeded_generator(self.seed, SPLIT_KEYS[self.split], self._check_index(index))
        items = self._draw_items(g)
        limit = float(self.canvas_size - ITEM_SIZE)  # largest top-left coordinate that keeps an item inside
        pos = torch.rand(self.num_items, 2, generator=g, dtype=torch.float64) * limit
        angle = torch.rand(self.num_items, generator=g, dtype=torch.float64) * (2 * math.pi)
        vel = self.speed * torch.stack([torch.sin(angle), torch.cos(angle)], dim=1)
        positions = []
        for _ in range(self.num_frames):
            positions.append(pos.round().long())
            pos = pos + vel
            low, high = pos < 0, pos > limit
            pos = torch.where(low, -pos, torch.where(high, 2 * limit - pos, pos))
            vel = torch.where(low | high, -vel, vel)
            pos = pos.clamp(0, limit)  # a step longer than the canvas could reflect past the far edge
        return items, torch.stack(positions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        items, positions = self.tracks(index)
        video = torch.zeros(self.num_frames, self.canvas_size, self.canvas_size, dtype=torch.uint8)
        for t in range(self.num_frames):
            for k, item in enumerate(items.tolist()):
                r, c = positions[t, k].tolist()
                patch = video[t, r:r + ITEM_SIZE, c:c + ITEM_SIZE]
                torch.maximum(patch, self.images[item], out=patch)
        return (video.float() / 127.5 - 1.0).unsqueeze(0), self.labels[items[0]]
