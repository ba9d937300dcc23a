"""The representation experiment (ACDiT paper, Table 4) at any scale: classify images from a
generative model's features.

ACDiT's claim: training on clean inputs (the clean stream that later blocks attend to) gives
better features than training on noisy inputs only (DiT). The features here are the
last-layer tokens of clean images, mean-pooled:

- multi-block models: the clean stream (no noise, no condition);
- single-block models (a DiT, whose clean half is never attended in training): the denoising
  stream at t = 0 under the null class (``ACDiT.token_features``; never the true label).

Two protocols:

- ``linear``: the network frozen; standardised pooled features; a multinomial logistic
  regression (L-BFGS, small L2) on the training subset; top-1 on the test subset.
- ``finetune``: MAE's fine-tuning recipe, scaled down: pooled features -> LayerNorm -> linear
  head; AdamW (betas 0.9/0.999, weight decay 0.05), lr = base_lr * batch / 256 with base 1e-3,
  layer-wise lr decay 0.75, linear warm-up over the first 5% of steps then cosine to 0, label
  smoothing 0.1, +-2 px shifts and horizontal flips. Not used (named deviations): mixup,
  cutmix, RandAugment, drop path, 100 epochs (``epochs`` is yours to set).

``from_scratch`` re-initialises the same network (its own init) before fine-tuning: the
baseline that tells what pre-training adds at equal epochs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ardiff.utils.devices import default_device

MODES = ("linear", "finetune")
FINETUNE_DEVIATIONS = ("no mixup/cutmix", "no RandAugment (+-2 px shifts and flips only)", "no drop path",
                       "epochs set by the caller, not 100")


@dataclasses.dataclass
class RepresentSettings:
    mode: str = "linear"
    data: str = "fmnist"  # "fmnist" or an image folder (class subfolders; train/ and val/ used when present)
    num_train: int = 5000  # class-balanced subset sizes (0: all)
    num_test: int = 2000
    stream: str = "auto"  # auto | clean | denoiser
    epochs: int = 3  # finetune
    batch_size: int = 64
    base_lr: float = 1e-3  # finetune: lr = base_lr * batch_size / 256
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_fraction: float = 0.05
    probe_l2: float = 1e-4  # linear: L2 on the probe's weights
    from_scratch: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}; choose one of {MODES}")
        if self.stream not in ("auto", "clean", "denoiser"):
            raise ValueError(f"stream={self.stream!r}; choose auto, clean or denoiser")


def feature_stream(model, stream: str = "auto") -> str:
    """The stream that carries a model's representation (see the module docstring)."""
    if stream != "auto":
        return stream
    return "clean" if model.config.num_blocks > 1 else "denoiser"


def pooled_features(model, images: torch.Tensor, stream: str) -> torch.Tensor:
    return model.token_features(images.to(model.device, model.dtype), stream).mean(1)


# ---------------------------------------------------------------------------
#                                   Data
# ---------------------------------------------------------------------------
def _balanced_subset(labels: torch.Tensor, num: int, seed: int) -> torch.Tensor:
    """``num`` indices, classes interleaved (equal counts where possible), seeded."""
    if num <= 0 or num >= len(labels):
        return torch.arange(len(labels))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    by_class = [perm[labels[perm] == c] for c in labels.unique()]
    take, k = [], 0
    while len(take) < num:
        for idx in by_class:
            if k < len(idx) and len(take) < num:
                take.append(int(idx[k]))
        k += 1
    return torch.tensor(sorted(take))


def load_split_data(model, settings: RepresentSettings, vae_record=None):
    """(train images, train labels, test images, test labels, number of classes) at the model's input
    size; a latent model's images are encoded with its VAE (``vae_record``) into the space it reads."""
    c = model.config
    if c.is_video:
        raise ValueError("the representation experiment classifies images; this model makes clips")
    if settings.data == "fmnist":
        from ardiff.data.fashion_mnist import FashionMNIST

        if vae_record is not None or c.in_channels != 1 or c.input_size[0] != c.input_size[1] \
                or c.input_size[0] < 28:
            raise ValueError(f"--data fmnist needs a grey model of at least 28x28 input; this one reads "
                             f"{c.in_channels} x {c.input_size}")
        pad = c.input_size[0] if c.input_size[0] > 28 else None
        train, test = FashionMNIST(split="train", pad_to=pad), FashionMNIST(split="test", pad_to=pad)
        tr = _balanced_subset(train.labels, settings.num_train, settings.seed)
        te = _balanced_subset(test.labels, settings.num_test, settings.seed + 1)
        to_float = lambda x: x.float() / 127.5 - 1  # noqa: E731
        return to_float(train.images[tr]), train.labels[tr], to_float(test.images[te]), test.labels[te], 10
    return _folder_data(model, settings, vae_record)


def _folder_data(model, settings: RepresentSettings, vae_record=None):
    from ardiff.data.image_folder import ImageFolder

    c = model.config
    root = Path(settings.data)
    if not root.is_dir():
        raise ValueError(f"--data {settings.data}: not 'fmnist' and not a folder of class subfolders")
    vae = None
    if vae_record is not None:  # a latent model reads the VAE's latents of the images, as in training
        vae = vae_record.load(model.device)
        size = c.input_size[0] * 2 ** (len(vae.config.block_out_channels) - 1)
    elif c.in_channels != 3:
        raise ValueError(f"an image folder gives RGB images; this model reads {c.in_channels} channels and "
                         f"records no VAE (_vae in its config.json) to encode them with")
    else:
        size = c.input_size[0]
    if (root / "train").is_dir() and (root / "val").is_dir():
        train, test = ImageFolder(root / "train", size, hflip=False), ImageFolder(root / "val", size, hflip=False)
        if train.classes != test.classes:
            raise ValueError(f"{root}/train and {root}/val name different classes")
        x_tr, y_tr = _stack(train)
        x_te, y_te = _stack(test)
    else:  # one folder: a seeded 80/20 split
        x, y = _stack(ImageFolder(root, size, hflip=False))
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(settings.seed))
        cut = max(1, int(0.8 * len(y)))
        x_tr, y_tr, x_te, y_te = x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]
        if len(y_te) == 0:
            raise ValueError(f"{root} holds too few images to split into train and test")
    tr = _balanced_subset(y_tr, settings.num_train, settings.seed)
    te = _balanced_subset(y_te, settings.num_test, settings.seed + 1)
    x_tr, x_te = x_tr[tr], x_te[te]
    if vae is not None:
        x_tr, x_te = vae_record.encode(vae, x_tr), vae_record.encode(vae, x_te)
    return x_tr, y_tr[tr], x_te, y_te[te], int(max(y_tr.max(), y_te.max())) + 1


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# ---------------------------------------------------------------------------
#                                 Protocols
# ---------------------------------------------------------------------------
@torch.no_grad()
def extract(model, images: torch.Tensor, stream: str, batch_size: int = 250) -> torch.Tensor:
    model.eval()
    return torch.cat([pooled_features(model, images[i : i + batch_size], stream).float().cpu()
                      for i in range(0, len(images), batch_size)])


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, l2: float = 1e-4, max_iter: int = 200) -> tuple[float, float]:
    """Top-1 (train, test) of a logistic regression on standardised features (float64, L-BFGS: deterministic)."""
    mean, std = train_x.double().mean(0), train_x.double().std(0).clamp_min(1e-6)
    a, b = (train_x.double() - mean) / std, (test_x.double() - mean) / std
    W = torch.zeros(a.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, bias], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ W + bias, train_y) + l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (float(((a @ W + bias).argmax(1) == train_y).double().mean()),
                float(((b @ W + bias).argmax(1) == test_y).double().mean()))


class Classifier(nn.Module):
    """The generative network, its pooled features, LayerNorm and a linear head (MAE's fine-tuning head)."""

    def __init__(self, model, num_classes: int, stream: str):
        super().__init__()
        self.model = model
        self.stream = stream
        D = model.config.hidden_size
        self.fc_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE: a near-zero head
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.fc_norm(pooled_features(self.model, x, self.stream)))


def layer_decay_groups(classifier: Classifier, base_lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """AdamW parameter groups with MAE's layer-wise lr decay: the head at base_lr, block i at
    base_lr * decay^(depth - i), the embeddings at decay^(depth + 1); no weight decay on
    biases, norms and 1-d parameters."""
    depth = len(classifier.model.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in classifier.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(("head", "fc_norm")):
            layer = depth + 1
        elif name.startswith("model.blocks."):
            layer = int(name.split(".")[2]) + 1
        elif name.startswith("model.final_layer"):
            layer = depth + 1
        else:  # embeddings (patch, timestep, class)
            layer = 0
        decay = p.ndim > 1 and "norm" not in name
        key = (layer, decay)
        if key not in groups:
            groups[key] = {"params": [], "lr_scale": layer_decay ** (depth + 1 - layer),
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
    for g in groups.values():
        g["lr"] = base_lr * g["lr_scale"]
    return list(groups.values())


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """+-2 px shifts (border padding with the background) and horizontal flips, per batch."""
    pad = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=g).tolist()
    x = pad[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]
    return x.flip(-1) if bool(torch.rand((), generator=g) < 0.5) else x


def finetune(model, train_x, train_y, test_x, test_y, num_classes: int, settings: RepresentSettings,
             stream: str, progress: bool = False) -> dict:
    torch.manual_seed(settings.seed)
    clf = Classifier(model, num_classes, stream).to(model.device)
    lr = settings.base_lr * settings.batch_size / 256
    opt = torch.optim.AdamW(layer_decay_groups(clf, lr, settings.layer_decay, settings.weight_decay),
                            betas=(0.9, 0.999))
    steps_per_epoch = max(1, len(train_x) // settings.batch_size)
    total = settings.epochs * steps_per_epoch
    warmup = max(1, int(settings.warmup_fraction * total))
    g = torch.Generator().manual_seed(settings.seed)
    step = 0
    losses = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="fine-tuning", unit="step")
    for _ in range(settings.epochs):
        clf.train()
        perm = torch.randperm(len(train_x), generator=g)
        for i in range(steps_per_epoch):
            factor = (step + 1) / warmup if step < warmup else \
                0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"] * factor
            idx = perm[i * settings.batch_size : (i + 1) * settings.batch_size]
            x = _augment(train_x[idx], g).to(model.device, model.dtype)
            loss = F.cross_entropy(clf(x), train_y[idx].to(model.device), label_smoothing=settings.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    clf.eval()
    with torch.no_grad():
        logits = torch.cat([clf(test_x[i : i + 250].to(model.device, model.dtype)).float().cpu()
                            for i in range(0, len(test_x), 250)])
    return {"top1": float((logits.argmax(1) == test_y).double().mean()), "steps": total, "lr": lr,
            "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:]))}


def run_represent(model_dir: str, settings: RepresentSettings, device: str | None = None,
                  progress: bool = False) -> dict:
    """Run the experiment on a model (a directory or a shipped name); returns the result record."""
    from ardiff.data.latents import VAERecord
    from ardiff.models.acdit import ACDiT
    from ardiff.models.resolve import resolve_model_dir

    directory = resolve_model_dir(model_dir)
    vae_record = VAERecord.recorded(directory)
    device = default_device(device)
    model = ACDiT.from_pretrained(directory, device=device, dtype=torch.float32)
    if settings.from_scratch:
        torch.manual_seed(settings.seed)
        model = ACDiT(model.config).to(device)  # the same network, its own initialisation
    stream = feature_stream(model, settings.stream)
    train_x, train_y, test_x, test_y, K = load_split_data(model, settings, vae_record)
    t0 = time.perf_counter()
    result = {"model": str(directory), "init": "scratch" if settings.from_scratch else "pretrained",
              "mode": settings.mode, "stream": stream, "data": settings.data, "num_train": len(train_y),
              "num_test": len(test_y), "num_classes": K, "parameters": model.num_parameters(),
              "blocks": model.config.num_blocks, "settings": dataclasses.asdict(settings)}
    if settings.mode == "linear":
        if settings.from_scratch:
            result["note"] = "a linear probe on a randomly initialised network (the floor of the probe)"
        f_train, f_test = extract(model, train_x, stream), extract(model, test_x, stream)
        train_acc, top1 = linear_probe(f_train, train_y, f_test, test_y, K, settings.probe_l2)
        result.update(top1=top1, train_top1=train_acc, feature_dim=f_train.shape[1])
    else:
        result.update(finetune(model, train_x, train_y, test_x, test_y, K, settings, stream, progress))
        result["deviations_from_mae"] = list(FINETUNE_DEVIATIONS)
    result["seconds"] = time.perf_counter() - t0
    return result
