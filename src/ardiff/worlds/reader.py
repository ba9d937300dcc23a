"""The attribute reader: a small CNN that reads a story-world frame back into its attributes.

It provides the story benchmark's metrics: text faithfulness (attributes read vs the
story's truth), identity kept (kind and colour equal to frame 1's), frame consistency and
FID over its penultimate features. Trained on renders of train-split items with light
noise and blur (generated frames are not clean renders); its accuracy is measured on
renders of test-split items.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ardiff.worlds.checkpoint import load_world_model, save_world_model
from ardiff.worlds.story import BACKGROUNDS, ITEM_COLOURS, KIND_NAMES, SIZES, FrameState, StoryWorld

READ_ATTRIBUTES = {"kind": KIND_NAMES, "colour": tuple(ITEM_COLOURS), "background": tuple(BACKGROUNDS),
                   "size": tuple(SIZES), "row": (0, 1, 2), "col": (0, 1, 2)}


def state_labels(states: list[FrameState]) -> dict[str, torch.Tensor]:
    return {a: torch.tensor([values.index(getattr(s, a)) for s in states]) for a, values in READ_ATTRIBUTES.items()}


class AttributeReader(nn.Module):
    """(N, 3, 32, 32) frames in [-1, 1] -> per-attribute logits and (N, feature_dim) features."""

    def __init__(self, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.width, self.feature_dim = width, feature_dim
        w = width

        def conv(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(conv(3, w, 1), conv(w, w, 1), conv(w, 2 * w, 2), conv(2 * w, 2 * w, 1),
                                  conv(2 * w, 4 * w, 2), conv(4 * w, 4 * w, 2))  # -> 4x4
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * w, feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({a: nn.Linear(feature_dim, len(v)) for a, v in READ_ATTRIBUTES.items()})

    def forward(self, frames: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, 32, 32):
            raise ValueError(f"AttributeReader takes (N, 3, 32, 32) frames in [-1, 1], got {tuple(frames.shape)}")
        feats = self.features(self.body(frames))
        return {a: head(feats) for a, head in self.heads.items()}, feats

    @torch.no_grad()
    def read(self, frames: torch.Tensor, batch_size: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Predicted attribute indices (dict of (N,)) and features (N, feature_dim)."""
        self.eval()
        preds, feats = {a: [] for a in READ_ATTRIBUTES}, []
        for chunk in frames.split(batch_size):
            logits, f = self(chunk.to(self.heads["kind"].weight.device, torch.float32))
            for a in READ_ATTRIBUTES:
                preds[a].append(logits[a].argmax(-1).cpu())
            feats.append(f.cpu())
        return {a: torch.cat(v) for a, v in preds.items()}, torch.cat(feats)

    def save_pretrained(self, directory, metrics: dict | None = None) -> Path:
        config = {"width": self.width, "feature_dim": self.feature_dim}
        return save_world_model(self, directory, {**config, "_held_out_accuracy": metrics} if metrics else config)

    @classmethod
    def from_pretrained(cls, directory=None) -> "AttributeReader":
        """Load a saved reader; ``None`` or ``"story-reader"`` loads the shipped one."""
        return load_world_model(cls, directory or "story-reader")


def degrade(frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Training augmentation: random blur and Gaussian noise, per frame."""
    n = frames.shape[0]
    blurred = F.avg_pool2d(F.pad(frames, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = torch.rand(n, 1, 1, 1, generator=g) * 0.7
    noise = torch.randn(frames.shape, generator=g) * (torch.rand(n, 1, 1, 1, generator=g) * 0.15)
    return (frames + mix * (blurred - frames) + noise).clamp(-1, 1)


def render_batch(world: StoryWorld, indices) -> tuple[torch.Tensor, list[FrameState]]:
    frames, states = zip(*(world.random_frame(int(i)) for i in indices))
    return torch.stack(frames), list(states)


def evaluate_reader(reader: AttributeReader, world: StoryWorld, count: int = 2000) -> dict[str, float]:
    frames, states = render_batch(world, range(count))
    preds, _ = reader.read(frames)
    truth = state_labels(states)
    return {a: (preds[a] == truth[a]).float().mean().item() for a in READ_ATTRIBUTES}


def train_reader(steps: int = 3000, batch_size: int = 128, seed: int = 0, log=print, root=None,
                 init_from=None, lr: float = 2e-3, first_frame: int | None = None) -> tuple[AttributeReader, dict]:
    """Train on random renders of train-split items; accuracy on 2000 renders of test-split items.

    ``init_from``: a saved reader to continue from. ``first_frame``: index of the first
    training render; by default 0, or 10M when continuing, so a second stage sees new renders
    (give a third stage another offset)."""
    torch.manual_seed(seed)
    world = StoryWorld("train", root=root, seed=seed)
    reader = AttributeReader.from_pretrained(init_from).train() if init_from else AttributeReader()
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed + (1 if init_from else 0))
    offset = first_frame if first_frame is not None else 10_000_000 if init_from else 0
    for step in range(steps):
        frames, states = render_batch(world, range(offset + step * batch_size, offset + (step + 1) * batch_size))
        logits, _ = reader(degrade(frames, g))
        truth = state_labels(states)
        loss = sum(F.cross_entropy(logits[a], truth[a]) for a in READ_ATTRIBUTES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 200 == 0:
            log(f"reader step {step + 1}/{steps}: loss {loss.item():.4f}")
    reader.eval()
    return reader, evaluate_reader(reader, StoryWorld("test", root=root, seed=seed + 1))
