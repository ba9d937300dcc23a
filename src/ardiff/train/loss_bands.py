"""The training objective by timestep band, on training and held-out data: where a model falls
short, and whether data or capacity is what it lacks.

A diffusion model's loss is an average over noise levels that do different jobs: the
high-noise steps decide content and layout, the low-noise steps polish detail and texture.
Splitting the loss into bands of timesteps says which job the model does badly. Scoring the
same bands on training and held-out items (the same noise draws, paired) says why:

- held-out loss about equal to training loss: the model has not memorised its data, so
  more training or more capacity, not more data, is what lowers the loss;
- held-out loss well above training loss: it has started to memorise; more data (or
  regularisation) is what helps.

The loss is exactly the trainer's (``DiffusionLoss.per_item``: epsilon MSE over the noisy
copy, every block at its own timestep), with the condition always kept and every block's
timestep drawn inside the band.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ardiff.diffusion.schedule import DiffusionLoss
from ardiff.train.trainer import model_condition
from ardiff.utils.seeding import seeded_generator

# Datasets whose data section names a held-out split by ``split``.
SPLIT_DATASETS = ("fashion_mnist", "moving_fashion_mnist", "stories", "story_frames")


@dataclass
class LossBandConfig:
    num: int = 1000  # items per split
    bands: int = 10  # equal-width bands of training timesteps, low noise first
    batch_size: int = 100
    seed: int = 0


def band_edges(num_train_timesteps: int, bands: int) -> list[tuple[int, int]]:
    """``bands`` half-open ranges [lo, hi) covering 0..num_train_timesteps - 1."""
    if not 1 <= bands <= num_train_timesteps:
        raise ValueError(f"bands={bands}: give 1 to {num_train_timesteps} (the model's training timesteps)")
    edges = torch.linspace(0, num_train_timesteps, bands + 1).round().long().tolist()
    return list(zip(edges[:-1], edges[1:]))


def held_out_data_config(data_config):
    """The data section of the same data's held-out split."""
    if data_config.name not in SPLIT_DATASETS:
        raise ValueError(f"data.name={data_config.name!r} has no held-out split to compare with; loss bands need "
                         f"one of {', '.join(SPLIT_DATASETS)}")
    held_out = "test" if data_config.split == "train" else "train"
    return replace(data_config, split=held_out)


def _items(dataset, num: int, seed: int) -> list[int]:
    """``num`` items of ``dataset``, a seeded random subset (all of it when it is smaller)."""
    order = torch.randperm(len(dataset), generator=seeded_generator(seed))
    return order[:num].tolist()


@torch.no_grad()
def loss_by_band(model, splits: dict, config: LossBandConfig | None = None) -> dict:
    """``splits``: name -> dataset of (x, y) items (e.g. ``{"train": ..., "held_out": ...}``).

    Returns ``{"bands": [[lo, hi], ...], "loss": {split: [per band]}, "loss_by_block": {split:
    [per block, all bands]}, "num": {split: items}}``. Every split sees the same timesteps and
    noise, position by position, so the splits differ only by their items.
    """
    config = config or LossBandConfig()
    model = model.eval()
    c = model.config
    objective = DiffusionLoss(model)
    edges = band_edges(c.num_train_timesteps, config.bands)
    out = {"bands": [list(e) for e in edges], "loss": {}, "loss_by_block": {}, "num": {}}
    for name, dataset in splits.items():
        items = _items(dataset, config.num, config.seed)
        band_sums = torch.zeros(len(edges), dtype=torch.float64)
        block_sums = torch.zeros(c.num_blocks, dtype=torch.float64)
        for start in range(0, len(items), config.batch_size):
            batch = [dataset[i] for i in items[start:start + config.batch_size]]
            x = torch.stack([b[0] for b in batch]).to(model.device, model.dtype)
            y = torch.stack([torch.as_tensor(b[1]) for b in batch]).to(model.device)
            cond = model_condition(c, y)
            for k, (lo, hi) in enumerate(edges):
                # The draws depend on (seed, batch start, band) only: the same for every split.
                g = seeded_generator(config.seed, start, k)
                t = torch.randint(lo, hi, (len(batch), c.num_blocks), generator=g)
                noise = torch.randn((len(batch), c.num_blocks, c.block_size, c.patch_dim), generator=g)
                per_item = objective.per_item(x, cond, t.to(model.device), noise.to(x))
                band_sums[k] += per_item.double().sum().item() / c.num_blocks
                block_sums += per_item.double().sum(dim=0).cpu()
        n = len(items)
        out["loss"][name] = (band_sums / n).tolist()
        out["loss_by_block"][name] = (block_sums / (n * len(edges))).tolist()
        out["num"][name] = n
    return out


def loss_band_table(result: dict, num_train_timesteps: int) -> list[str]:
    """Markdown: one row per band, each split's loss, and held-out over training when both exist."""
    names = list(result["loss"])
    paired = names == ["train", "held_out"]
    header = "| timesteps (t / " + str(num_train_timesteps) + ") | " + " | ".join(
        f"{n.replace('_', '-')} loss (N={result['num'][n]})" for n in names) + (" | held-out / train |" if paired
                                                                                  else " |")
    lines = [header, "|" + "---|" * (len(names) + 1 + paired)]
    for k, (lo, hi) in enumerate(result["bands"]):
        cells = [f"{result['loss'][n][k]:.5f}" for n in names]
        if paired:
            cells.append(f"{result['loss']['held_out'][k] / result['loss']['train'][k]:.3f}")
        lines.append(f"| {lo}-{hi - 1} | " + " | ".join(cells) + " |")
    if len(result["loss_by_block"][names[0]]) > 1:
        lines += ["", "| block | " + " | ".join(f"{n.replace('_', '-')} loss" for n in names) + " |",
                  "|" + "---|" * (len(names) + 1)]
        for b in range(len(result["loss_by_block"][names[0]])):
            lines.append(f"| {b} | " + " | ".join(f"{result['loss_by_block'][n][b]:.5f}" for n in names) + " |")
    return lines


def recorded_splits(model_dir, data_root: str | None = None) -> dict:
    """The training split a model directory records (``_data``) and its held-out split, as
    datasets: ``{"train": ..., "held_out": ...}``. ``data_root`` replaces the recorded root."""
    from ardiff.models.checkpoint import load_config, load_extras
    from ardiff.train.config import DataConfig, _section
    from ardiff.train.datasets import build_dataset

    data = load_extras(model_dir).get("data")
    if not data:
        raise ValueError(f"{model_dir} does not record the data it was trained on (_data in config.json); models "
                         f"exported by ardiff train do")
    train = _section(DataConfig, dict(data), "data")
    if data_root is not None:
        train = replace(train, root=data_root)
    model_config = load_config(model_dir)
    return {"train": build_dataset(train, model_config),
            "held_out": build_dataset(held_out_data_config(train), model_config)}
