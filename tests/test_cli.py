import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from ardiff import ACDiT, SamplingSettings
from ardiff.cli import build_parser, main
from ardiff.data.fashion_mnist import DEBIAN_DIR
from ardiff.models.checkpoint import load_extras
from ardiff.models.resolve import resolve_model_dir

HAVE_FMNIST = (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("demo", "train", "sample", "convert-official", "bench"):
        assert cmd in out
    for cmd in ("train", "sample"):
        assert build_parser().parse_args([cmd, "x"]).command == cmd


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_train_then_sample(tmp_path, capsys):
    run_dir = tmp_path / "run"
    main(["train", "fmnist", "--out-dir", str(run_dir), "--no-progress",
          "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "model.depth=1",
          "--set", "model.hidden_size=64", "--set", "model.num_heads=1", "--set", "train.tensorboard=false",
          "--set", "sample.num_images=0", "--set", "sample.sampler=sde-dpmsolver++"])
    assert "finished at step 4" in capsys.readouterr().out
    model = ACDiT.from_pretrained(run_dir / "model")
    assert model.config.depth == 1
    # The run's sampler and data travel with the model.
    assert SamplingSettings.recorded(run_dir / "model").sampler == "sde-dpmsolver++"
    assert load_extras(run_dir / "model")["data"]["name"] == "fashion_mnist"
    main(["sample", str(run_dir / "model"), "--classes", "0,7", "--num", "2", "--steps", "2",
          "--out", str(tmp_path / "grid.png")])
    assert (tmp_path / "grid.png").is_file()
    with pytest.raises(SystemExit):  # argparse names the choices
        main(["sample", str(run_dir / "model"), "--sampler", "euler", "--out", str(tmp_path / "x.png")])
    assert "invalid choice: 'euler'" in capsys.readouterr().err
    assert main(["sample", str(run_dir / "model"), "--classes", "12", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "--classes [12] out of range" in capsys.readouterr().err

    # Killed after the last checkpoint, before the export: --resume exports the model and says so.
    import shutil

    weights = load_file(str(run_dir / "model" / "model.safetensors"))
    shutil.rmtree(run_dir / "model")
    resume = ["train", "fmnist", "--out-dir", str(run_dir), "--no-progress", "--resume",
              "--set", "train.steps=4", "--set", "train.batch_size=8", "--set", "model.depth=1",
              "--set", "model.hidden_size=64", "--set", "model.num_heads=1", "--set", "train.tensorboard=false",
              "--set", "sample.num_images=0", "--set", "sample.sampler=sde-dpmsolver++"]
    assert main(resume) == 0
    assert "without a complete model: exported it from the last checkpoint" in capsys.readouterr().out
    again = load_file(str(run_dir / "model" / "model.safetensors"))
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)
    assert main(resume) == 2  # now complete: nothing to do
    assert "already finished at step 4" in capsys.readouterr().err


def test_sample_missing_model_dir(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "is neither a model directory" in capsys.readouterr().err


@pytest.mark.skipif(not HAVE_FMNIST, reason="Debian package dataset-fashion-mnist not installed")
def test_demo_quick(tmp_path, capsys):
    main(["demo", "--out", str(tmp_path), "--num-eval", "40", "--num-eval-videos", "4", "--steps", "2"])
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out
    report = (tmp_path / "report.md").read_text()
    assert "class accuracy" in report and "frame consistency" in report
    for name in ("fmnist_classes.png", "moving_fmnist.gif", "moving_fmnist_frames.png", "report.json"):
        assert (tmp_path / name).is_file(), name
    report = json.loads((tmp_path / "report.json").read_text())
    for part, model in (("image_model", "fmnist"), ("video_model", "moving-fmnist")):
        recorded = dataclasses.asdict(SamplingSettings.recorded(resolve_model_dir(model)))
        assert report[part]["sampling"] == json.loads(json.dumps({**recorded, "num_steps": 2}))
    # The class grid shows the scored samples: 4 per class here, one row per class.
    from PIL import Image

    assert Image.open(tmp_path / "fmnist_classes.png").size[1] > 2 * Image.open(tmp_path / "fmnist_classes.png").size[0]
    assert main(["demo", "--out", str(tmp_path), "--num-eval", "5"]) == 2
    assert "at least 10 images" in capsys.readouterr().err


def test_guidance_interval_from_the_flag_and_as_recorded(tmp_path, capsys):
    """A recorded _sampling.guidance_interval is the default of sample, sample-npz and eval;
    --guidance-interval overrides it (0 1: every step); sample files record it in their job."""
    import torch

    from ardiff.eval.sample_files import load_sample_npz
    from ardiff.models.checkpoint import save_pretrained
    from helpers import tiny_model

    image = dict(input_size=(8, 8), in_channels=1, patch_size=2, block_layout="tiles", block_size=4, num_classes=10)
    model = tiny_model(dtype=torch.float32, **image)
    plain = save_pretrained(model, tmp_path / "plain", extra_config={"_sampling": {"cfg_scale": 3.0}})
    recorded = save_pretrained(model, tmp_path / "recorded",
                               extra_config={"_sampling": {"cfg_scale": 3.0, "guidance_interval": [0.0, 0.6]}})
    assert SamplingSettings.recorded(recorded).guidance_interval == (0.0, 0.6)
    assert SamplingSettings.recorded(plain).guidance_interval is None
    broken = save_pretrained(model, tmp_path / "broken", extra_config={"_sampling": {"guidance_interval": [0.6]}})
    with pytest.raises(ValueError, match=r"broken/config.json: _sampling: guidance_interval=\(0.6,\) must be"):
        SamplingSettings.recorded(broken)
    argv = ["--num", "2", "--steps", "4", "--no-progress"]
    files = {}
    for name, source, flags in (("plain", plain, []), ("recorded", recorded, []),
                                ("flag", plain, ["--guidance-interval", "0", "0.6"]),
                                ("every", recorded, ["--guidance-interval", "0", "1"])):
        files[name] = tmp_path / f"{name}.npz"
        assert main(["sample-npz", str(source), *argv, *flags, "--out", str(files[name])]) == 0
    jobs = {k: load_sample_npz(f).job for k, f in files.items()}
    assert jobs["recorded"]["guidance_interval"] == jobs["flag"]["guidance_interval"] == [0.0, 0.6]
    assert "guidance_interval" not in jobs["plain"] and "guidance_interval" not in jobs["every"]
    images = {k: load_sample_npz(f).images for k, f in files.items()}
    assert (images["recorded"] == images["flag"]).all() and (images["every"] == images["plain"]).all()
    assert (images["recorded"] != images["plain"]).any()  # the unguided steps change the samples
    assert main(["sample", str(recorded), "--num", "1", "--steps", "2", "--out", str(tmp_path / "a.png")]) == 0
    assert "CFG 3 at t/T in [0, 0.6]" in capsys.readouterr().out
    assert main(["sample", str(recorded), "--num", "1", "--steps", "2", "--guidance-interval", "0", "1",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "CFG 3)" in capsys.readouterr().out


def test_guidance_interval_in_a_run_config_is_checked_and_recorded(tmp_path):
    from ardiff.train.config import build_run_config
    from ardiff.train.trainer import model_record

    raw = {"model": {"preset": "tiny"}, "sample": {"guidance_interval": [0.1, 0.7]}}
    assert model_record(build_run_config(raw))["_sampling"]["guidance_interval"] == [0.1, 0.7]
    for bad in ([0.7, 0.1], [0.5]):
        with pytest.raises(ValueError, match=r"sample: guidance_interval=.* must be \(low, high\)"):
            build_run_config({**raw, "sample": {"guidance_interval": bad}})
    with pytest.raises(ValueError, match="sample.guidance_interval must be a list, got 'half'"):
        build_run_config({**raw, "sample": {"guidance_interval": "half"}})


def test_history_scale_from_the_flag_and_as_recorded(tmp_path, capsys):
    """--history-scale reaches the sampler, a recorded _sampling.history_scale is the default,
    and sample files record it in their job."""
    import torch

    from ardiff.eval.sample_files import load_sample_npz
    from ardiff.models.checkpoint import save_pretrained
    from helpers import tiny_model

    video = dict(input_size=(4, 8, 8), in_channels=1, patch_size=2, block_layout="raster", block_size=32,
                 rope_axis_weights=(2, 1, 1), num_classes=10)
    model = tiny_model(dtype=torch.float32, **video)
    plain = save_pretrained(model, tmp_path / "plain")
    recorded = save_pretrained(model, tmp_path / "recorded", extra_config={"_sampling": {"history_scale": 1.5}})
    assert SamplingSettings.recorded(recorded).history_scale == 1.5
    argv = ["--num", "1", "--steps", "2", "--classes", "3"]
    assert main(["sample", str(plain), *argv, "--history-scale", "2", "--out", str(tmp_path / "a.gif")]) == 0
    assert "history guidance 2)" in capsys.readouterr().out
    assert main(["sample", str(recorded), *argv, "--out", str(tmp_path / "b.gif")]) == 0
    assert "history guidance 1.5)" in capsys.readouterr().out
    assert main(["sample", str(recorded), *argv, "--history-scale", "1", "--out", str(tmp_path / "c.gif")]) == 0
    assert "history guidance" not in capsys.readouterr().out
    assert main(["sample-npz", str(plain), "--num", "2", "--steps", "2", "--history-scale", "2",
                 "--out", str(tmp_path / "s.npz"), "--no-progress"]) == 0
    assert load_sample_npz(tmp_path / "s.npz").job["history_scale"] == 2.0
    assert main(["sample-npz", str(plain), "--num", "2", "--steps", "2", "--out", str(tmp_path / "t.npz"),
                 "--no-progress"]) == 0
    assert "history_scale" not in load_sample_npz(tmp_path / "t.npz").job  # as files made before it existed
