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
