"""An offline feature network for the built-in data: a small Fashion-MNIST CNN.

Its penultimate 128-d features give "FID-FMNIST" and the frame-wise video metrics; its
logits give class accuracy. Trained by this module on the train split only
(``python -m ardiff.eval.fmnist_classifier``), shipped as ``assets/fmnist_classifier.safetensors``.

FID-FMNIST is comparable only to other FID-FMNIST numbers computed with this same file:
it is not Inception FID and says nothing about natural images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ardiff.models.resolve import ASSETS_DIR

ASSET = ASSETS_DIR / "fmnist_classifier.safetensors"
FEATURE_DIM = 128


class FashionMNISTClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, 28, 28) in [-1, 1] -> (N, 128) penultimate features."""
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @classmethod
    def load(cls, path: str | Path | None = None, device="cpu") -> "FashionMNISTClassifier":
        from safetensors.torch import load_file

        path = Path(path) if path else ASSET
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: train it with `python -m ardiff.eval.fmnist_classifier`")
        model = cls()
        model.load_state_dict(load_file(str(path)))
        return model.to(device).eval()


def to_classifier_input(x: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, H, W) with H, W >= 28 -> (N, 1, 28, 28) crops centred on the item's
    centre of mass (so padded images and moving items on a canvas are read alike)."""
    if x.dim() != 4 or x.shape[1] != 1 or min(x.shape[-2:]) < 28:
        raise ValueError(f"classifier input must be (N, 1, H>=28, W>=28) in [-1, 1], got {tuple(x.shape)}")
    n, _, h, w = x.shape
    if (h, w) == (28, 28):
        return x
    mass = (x[:, 0] + 1).clamp_min(0)  # background -1 -> weight 0
    total = mass.sum((1, 2)).clamp_min(1e-6)
    cy = (mass.sum(2) * torch.arange(h, device=x.device)).sum(1) / total
    cx = (mass.sum(1) * torch.arange(w, device=x.device)).sum(1) / total
    top = (cy - 13.5).round().long().clamp(0, h - 28)
    left = (cx - 13.5).round().long().clamp(0, w - 28)
    return torch.stack([x[i, :, t : t + 28, s : s + 28] for i, (t, s) in enumerate(zip(top.tolist(), left.tolist()))])


@torch.no_grad()
def classify(model: FashionMNISTClassifier, images: torch.Tensor, batch_size: int = 500):
    """(features (N, 128), logits (N, 10)) of images (N, 1, H, W) in [-1, 1]."""
    feats, logits = [], []
    device = next(model.parameters()).device
    for i in range(0, images.shape[0], batch_size):
        x = to_classifier_input(images[i : i + batch_size].to(device, torch.float32))
        f = model.features(x)
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    return torch.cat(feats), torch.cat(logits)


def train_classifier(out: Path = ASSET, epochs: int = 6, batch_size: int = 128, seed: int = 0) -> dict:
    """Train on the Fashion-MNIST train split (random +-2 px shifts), report test accuracy."""
    from safetensors.torch import save_file

    from ardiff.data.fashion_mnist import FashionMNIST

    torch.manual_seed(seed)
    train, test = FashionMNIST(split="train"), FashionMNIST(split="test")
    x_train = train.images.float() / 127.5 - 1
    x_test = test.images.float() / 127.5 - 1
    model = FashionMNISTClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x_train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        for i in range(len(x_train) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = F.pad(x_train[idx], (2, 2, 2, 2), value=-1.0)
            dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
            x = x[:, :, dy : dy + 28, dx : dx + 28]
            if torch.rand((), generator=g) < 0.5:
                x = x.flip(-1)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        _, logits = classify(model, x_test)
        acc = float((logits.argmax(1) == test.labels).float().mean())
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {acc:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    report = {"test_accuracy": acc, "epochs": epochs, "batch_size": batch_size, "seed": seed,
              "train_seconds": time.perf_counter() - t0, "torch": torch.__version__}
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the Fashion-MNIST feature network (train split).")
    parser.add_argument("--out", type=Path, default=ASSET)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(json.dumps(train_classifier(args.out, args.epochs, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
