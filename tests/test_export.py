"""ardiff export: a model directory from any checkpoint of a run (EMA or raw weights, fp32/fp16/bf16)."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from ardiff import ACDiT
from ardiff.cli import main
from ardiff.models.checkpoint import load_extras
from ardiff.train import Trainer
from ardiff.train import checkpoint as ckpt
from ardiff.train.config import build_run_config
from ardiff.train.export import export_checkpoint

TINY_MODEL = dict(input_size=[28, 28], in_channels=1, patch_size=7, block_layout="tiles", block_size=4,
                  depth=2, hidden_size=64, num_heads=2, num_classes=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-step run with checkpoints at steps 3 and 6 (kept both) and its exported model."""
    out = tmp_path_factory.mktemp("run")
    run = build_run_config({"model": dict(TINY_MODEL),
                            "train": {"out_dir": str(out), "steps": 6, "batch_size": 8, "checkpoint_every": 3,
                                      "keep_checkpoints": 2, "log_every": 1, "lr": 1e-3, "ema_decay": 0.9,
                                      "tensorboard": False},
                            "sample": {"num_images": 0, "cfg_scale": 2.5}})
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(64, 1, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (64,), generator=g))
    trainer = Trainer(run, dataset=data, progress=False)
    trainer.fit()
    raw = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return out, raw


def weights(directory):
    return load_file(str(directory / "model.safetensors"))


def test_default_export_is_what_train_exports(trained, tmp_path):
    run, _ = trained
    out = export_checkpoint(run, tmp_path / "m")
    mine, trains = weights(out), weights(run / "model")
    assert mine.keys() == trains.keys()
    assert all(torch.equal(mine[k], trains[k]) for k in mine)
    extras, train_extras = load_extras(out), load_extras(run / "model")
    assert extras["sampling"] == train_extras["sampling"] and extras["sampling"]["cfg_scale"] == 2.5
    assert extras["data"] == train_extras["data"]
    assert extras["exported_from"] == {"checkpoint": str(run / "checkpoints" / "step_00000006"), "step": 6,
                                       "weights": "ema", "dtype": "float32"}


def test_raw_weights_and_an_earlier_step(trained, tmp_path):
    run, raw = trained
    out = export_checkpoint(run, tmp_path / "raw", weights="model")
    assert all(torch.equal(weights(out)[k], raw[k]) for k in raw)
    assert any(not torch.equal(weights(out)[k], weights(run / "model")[k]) for k in raw)  # not the EMA
    early = export_checkpoint(run, tmp_path / "s3", step=3)
    step3 = ckpt.read_checkpoint(run / "checkpoints" / "step_00000003")["ema"]
    assert all(torch.equal(weights(early)[k], step3[k]) for k in step3)
    same = export_checkpoint(run / "checkpoints" / "step_00000003", tmp_path / "s3b")  # a checkpoint directory
    assert all(torch.equal(weights(same)[k], step3[k]) for k in step3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_storage_loads_into_float32(trained, tmp_path, dtype):
    run, _ = trained
    name = str(dtype).removeprefix("torch.")
    out = export_checkpoint(run, tmp_path / name, dtype=name)
    stored = weights(out)
    assert {t.dtype for t in stored.values()} == {dtype}
    full = ACDiT.from_pretrained(run / "model")
    half = ACDiT.from_pretrained(out)
    assert half.dtype == torch.float32
    for (k, a), b in zip(half.state_dict().items(), full.state_dict().values()):
        assert torch.equal(a, b.to(dtype).float()), k
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.55 * (run / "model" / "model.safetensors").stat().st_size


def test_bad_input_names_what_to_do(trained, tmp_path):
    run, _ = trained
    with pytest.raises(FileNotFoundError, match=r"no complete checkpoint of step 4 .* step_00000003, step_00000006"):
        export_checkpoint(run, tmp_path / "x", step=4)
    with pytest.raises(ValueError, match=r"is one checkpoint; --step picks"):
        export_checkpoint(run / "checkpoints" / "step_00000003", tmp_path / "x", step=3)
    with pytest.raises(FileNotFoundError, match=r"holds no complete checkpoint"):
        export_checkpoint(tmp_path, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match=r"is not a directory"):
        export_checkpoint(tmp_path / "missing", tmp_path / "x")
    with pytest.raises(ValueError, match=r"weights='best'; choose one of ema, model"):
        export_checkpoint(run, tmp_path / "x", weights="best")
    assert not (tmp_path / "x").exists()


def test_needs_only_the_weights_it_exports(trained, tmp_path):
    import shutil

    run, _ = trained
    copy = tmp_path / "step_00000006"
    shutil.copytree(run / "checkpoints" / "step_00000006", copy)
    (copy / "optimizer.safetensors").write_bytes(b"damaged")
    out = export_checkpoint(copy, tmp_path / "m")
    assert all(torch.equal(weights(out)[k], v) for k, v in weights(run / "model").items())
    (copy / "ema.safetensors").write_bytes(b"damaged")
    with pytest.raises(ValueError, match=r"checkpoint .*step_00000006 is unreadable"):
        export_checkpoint(copy, tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_cli(trained, tmp_path, capsys):
    run, raw = trained
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--weights", "model", "--dtype", "float16"]) == 0
    assert "raw weights" in capsys.readouterr().out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_exported_from"]["weights"] == "model" and config["_exported_from"]["dtype"] == "float16"
    assert main(["export", str(run), "--out", str(tmp_path / "n"), "--step", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no complete checkpoint of step 5" in err
    with pytest.raises(SystemExit):
        main(["export", str(run), "--out", str(tmp_path / "n"), "--dtype", "int8"])
