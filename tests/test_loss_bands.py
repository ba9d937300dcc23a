"""`ardiff loss-bands`: the training objective by timestep band, training vs held-out split."""

import json

import pytest
import torch

from ardiff.cli import main
from ardiff.data.fashion_mnist import DEBIAN_DIR
from ardiff.diffusion.schedule import DiffusionLoss
from ardiff.train.config import DataConfig
from ardiff.train.loss_bands import (
    LossBandConfig,
    band_edges,
    held_out_data_config,
    loss_band_table,
    loss_by_band,
    recorded_splits,
)
from ardiff.utils.seeding import seeded_generator
from helpers import tiny_model

HAVE_FMNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()


def _items(n, seed, model):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return [(torch.randn(c.in_channels, *c.input_size, generator=g, dtype=torch.float64),
             torch.tensor(k % c.num_classes)) for k in range(n)]


def test_band_loss_is_the_training_objective_on_the_bands_draws():
    """Each band's value is DiffusionLoss (what the trainer minimises) on the band's timesteps
    and noise; a model scored on the same items as both splits reads the same, band for band."""
    model = tiny_model(num_classes=10)
    data = _items(6, 0, model)
    config = LossBandConfig(num=6, bands=4, batch_size=6, seed=3)
    result = loss_by_band(model, {"train": data, "held_out": list(data)}, config)
    assert result["loss"]["train"] == result["loss"]["held_out"]
    assert len(result["loss_by_block"]["train"]) == model.config.num_blocks
    # the value of band 2 recomputed with the trainer's objective
    order = torch.randperm(6, generator=seeded_generator(3)).tolist()
    x = torch.stack([data[i][0] for i in order])
    y = torch.stack([data[i][1] for i in order])
    lo, hi = result["bands"][2]
    g = seeded_generator(3, 0, 2)
    c = model.config
    t = torch.randint(lo, hi, (6, c.num_blocks), generator=g)
    noise = torch.randn((6, c.num_blocks, c.block_size, c.patch_dim), generator=g)
    with torch.no_grad():
        expected = DiffusionLoss(model)(x, y, t, noise.double()).item()
    assert result["loss"]["train"][2] == pytest.approx(expected, rel=1e-6)  # float32 MSE vs float64 sums
    # noise levels do different jobs: the bands' losses differ, and held-out data differs from training data
    assert len(set(result["loss"]["train"])) == 4
    other = loss_by_band(model, {"held_out": _items(6, 1, model)}, config)
    assert other["loss"]["held_out"] != result["loss"]["train"]


def test_band_edges_and_table():
    assert band_edges(1000, 4) == [(0, 250), (250, 500), (500, 750), (750, 1000)]
    assert band_edges(1000, 3)[-1][1] == 1000
    with pytest.raises(ValueError, match="bands=0"):
        band_edges(1000, 0)
    result = {"bands": [[0, 500], [500, 1000]], "loss": {"train": [0.1, 0.01], "held_out": [0.12, 0.01]},
              "loss_by_block": {"train": [0.05], "held_out": [0.06]}, "num": {"train": 4, "held_out": 4}}
    table = loss_band_table(result, 1000)
    assert table[2] == "| 0-499 | 0.10000 | 0.12000 | 1.200 |" and len(table) == 4  # one block: no block table


def test_held_out_split_and_recorded_data(tmp_path):
    assert held_out_data_config(DataConfig(name="fashion_mnist")).split == "test"
    with pytest.raises(ValueError, match="no held-out split"):
        held_out_data_config(DataConfig(name="image_folder", root="x"))
    model = tiny_model(num_classes=10)
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="does not record the data it was trained on"):
        recorded_splits(tmp_path / "m")


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_cli_on_fashion_mnist(tmp_path, capsys):
    model = tiny_model(dtype=torch.float32, num_classes=10, input_size=(32, 32), in_channels=1)
    model.save_pretrained(tmp_path / "m", extra_config={"_data": {"name": "fashion_mnist", "image_size": 32}})
    out = tmp_path / "bands.json"
    assert main(["loss-bands", str(tmp_path / "m"), "--num", "8", "--bands", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| timesteps (t / 1000) | train loss (N=8) | held-out loss (N=8) | held-out / train |" in printed
    saved = json.loads(out.read_text())
    assert saved["num"] == {"train": 8, "held_out": 8} and len(saved["loss"]["held_out"]) == 2
    assert main(["loss-bands", str(tmp_path / "nothing")]) == 2
