"""train.init_from: a run starts from a saved model's weights (e.g. an image model -> a video model)."""

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig
from ardiff.train.trainer import initialise_from
from helpers import tiny_model


def test_image_weights_start_a_video_model(tmp_path):
    image = tiny_model(dtype=torch.float32, input_size=(8, 8), in_channels=1, patch_size=2)
    image.save_pretrained(tmp_path / "image")
    video = ACDiT(ACDiTConfig.preset("tiny", input_size=(4, 8, 8), in_channels=1, patch_size=2,
                                     block_layout="raster", block_size=16, rope_axis_weights=(2, 3, 3)))
    initialise_from(video, tmp_path / "image")
    for (name, p), (_, q) in zip(video.named_parameters(), image.named_parameters()):
        assert torch.equal(p, q), name


def test_mismatched_models_are_refused_with_the_reason(tmp_path):
    tiny_model(dtype=torch.float32).save_pretrained(tmp_path / "m")
    wider = ACDiT(ACDiTConfig.preset("tiny", hidden_size=128))
    with pytest.raises(ValueError, match=r"does not fit this model \(shape mismatch"):
        initialise_from(wider, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        initialise_from(wider, tmp_path / "nowhere")


def test_average_of_models_is_the_mean_of_their_weights(tmp_path):
    from ardiff.models.checkpoint import average_pretrained, load_extras

    for seed in (0, 1, 2):
        tiny_model(dtype=torch.float32, seed=seed).save_pretrained(
            tmp_path / f"m{seed}", extra_config={"_sampling": {"cfg_scale": 1.5 + seed}})
    out = average_pretrained(ACDiT, [tmp_path / f"m{s}" for s in (0, 1, 2)], tmp_path / "avg")
    models = [ACDiT.from_pretrained(tmp_path / f"m{s}") for s in (0, 1, 2)]
    averaged = ACDiT.from_pretrained(out)
    assert averaged.config == models[0].config
    for name, p in averaged.state_dict().items():
        expected = sum(m.state_dict()[name].double() for m in models) / 3
        torch.testing.assert_close(p.double(), expected, rtol=0, atol=1e-6)
    assert any(not torch.equal(p, models[0].state_dict()[k]) for k, p in averaged.state_dict().items())
    extras = load_extras(out)
    assert extras["sampling"] == {"cfg_scale": 1.5}  # the first model's recorded sampling
    assert extras["averaged_from"] == [str(tmp_path / f"m{s}") for s in (0, 1, 2)]


def test_saved_model_files_are_readable_like_any_file_written_here(tmp_path):
    """safetensors creates its files owner-only; a model directory's files all follow the umask."""
    import os

    old = os.umask(0o022)
    try:
        tiny_model(dtype=torch.float32).save_pretrained(tmp_path / "m")
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "m").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
