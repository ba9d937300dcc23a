"""Latent space end to end: image folder -> VAE latent cache -> training -> sampling decoded by the VAE."""

import numpy as np
import pytest
import torch
from PIL import Image

from ardiff import ACDiT
from ardiff.cli import main
from ardiff.models.checkpoint import load_extras


@pytest.fixture
def tiny_vae_dir(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16),
                        latent_channels=4, layers_per_block=1, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    return tmp_path / "vae"


def test_latent_training_and_decoded_sampling(tmp_path, tiny_vae_dir, capsys):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
    common = ["--set", "data.name=image_folder", "--set", f"data.root={tmp_path / 'images'}",
              "--set", "data.image_size=16"]
    main(["encode-latents", "fmnist", "--vae", str(tiny_vae_dir), "--out", str(tmp_path / "latents"),
          "--shard-size", "3", *common])
    assert "wrote 8 latents of shape (4, 8, 8)" in capsys.readouterr().out

    main(["train", "fmnist", "--out-dir", str(tmp_path / "run"), "--no-progress",
          "--set", "data.name=latents", "--set", f"data.root={tmp_path / 'latents'}",
          "--set", "model.input_size=[8, 8]", "--set", "model.in_channels=4", "--set", "model.patch_size=2",
          "--set", "model.block_size=4", "--set", "model.num_classes=2", "--set", "model.depth=1",
          "--set", "model.hidden_size=64", "--set", "model.num_heads=1", "--set", "train.steps=2",
          "--set", "train.batch_size=4", "--set", "train.tensorboard=false",
          "--set", "sample.num_images=2", "--set", "sample.num_steps=2", "--set", "sample.clip_denoised=false"])
    extras = load_extras(tmp_path / "run" / "model")
    assert extras["vae"]["path"] == str(tiny_vae_dir)
    # the training sample grid was decoded to 16x16 RGB images (2 images side by side, 2px padding)
    grid = Image.open(tmp_path / "run" / "samples" / "step_00000002.png")
    assert grid.mode == "RGB" and grid.size == (2 * 18 + 2, 18 + 2)

    assert main(["sample", str(tmp_path / "run" / "model"), "--num", "3", "--steps", "2", "--scale", "1",
                 "--no-labels", "--out", str(tmp_path / "s.png")]) == 0
    img = Image.open(tmp_path / "s.png")
    assert img.mode == "RGB" and img.size == (2 * 18 + 2, 2 * 18 + 2)  # 3 images on a 2x2 grid
    model = ACDiT.from_pretrained(tmp_path / "run" / "model")
    assert model.config.in_channels == 4

    # ardiff export records the same VAE as the model ardiff train exported
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "exported"), "--dtype", "float16"]) == 0
    assert load_extras(tmp_path / "exported")["vae"] == extras["vae"]
