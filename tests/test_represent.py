"""The representation experiment (Table 4 analog) and the position-encoding ablation modes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ardiff import ACDiT, ACDiTConfig, SamplingSettings, make_generators, sample
from ardiff.cli import main
from ardiff.experiments.represent import (
    Classifier,
    RepresentSettings,
    feature_stream,
    layer_decay_groups,
    run_represent,
)
from ardiff.models.checkpoint import save_pretrained
from helpers import randomize, tiny_model


def test_clean_stream_is_causal_over_blocks_and_label_free():
    model = tiny_model()  # 4x4 tokens in four 2x2-token tiles
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    blocks = model.to_blocks(x)
    feats = model.token_features(x)
    S = model.config.block_size
    later = blocks.clone()
    later[:, 1:] = torch.randn_like(later[:, 1:])
    changed = model.token_features(model.from_blocks(later))
    assert torch.allclose(changed[:, :S], feats[:, :S], atol=1e-12)  # block 0 sees only itself
    assert not torch.allclose(changed[:, S:], feats[:, S:])
    assert feature_stream(model) == "clean"
    dit = tiny_model(block_size=model.config.num_tokens)
    assert feature_stream(dit) == "denoiser" and dit.token_features(x, "denoiser").shape == feats.shape


@pytest.mark.parametrize("rope", ["none", "absolute"])
def test_ablation_modes_sample_exactly_with_the_cache(rope):
    model = tiny_model(rope=rope, num_classes=3)
    y = torch.tensor([0, 2])
    s = SamplingSettings(num_steps=2, cfg_scale=1.5)
    a = sample(model, y, s, generator=make_generators([0, 1]), use_cache=True)
    b = sample(model, y, s, generator=make_generators([0, 1]), use_cache=False)
    assert (a - b).abs().max() < 1e-9
    if rope == "none":  # no position at all: permuting the tokens of a block permutes its outputs
        assert torch.equal(model.rope_cos, torch.ones_like(model.rope_cos))
    else:
        assert model.pos_embed.shape == (model.config.num_tokens, model.config.hidden_size)
        assert "pos_embed" not in model.state_dict()  # a constant: checkpoints keep their keys


def test_ablation_modes_differ_and_are_validated():
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    outs = {r: tiny_model(rope=r).token_features(x) for r in ("paper", "none", "absolute")}
    assert not torch.allclose(outs["paper"], outs["none"]) and not torch.allclose(outs["none"], outs["absolute"])
    with pytest.raises(ValueError, match="rope='absolute'.*hidden size 66"):
        ACDiTConfig.preset("tiny", rope="absolute", hidden_size=66, num_heads=1)
    with pytest.raises(ValueError, match="choose one of"):
        ACDiTConfig.preset("tiny", rope="learned")


def test_layer_decay_groups():
    model = tiny_model(dtype=torch.float32)
    groups = layer_decay_groups(Classifier(model, 4, "clean"), 1.0, 0.5, 0.05)
    scales = sorted({g["lr_scale"] for g in groups})
    depth = model.config.depth
    assert scales == sorted(0.5 ** k for k in range(depth + 2))
    assert all(g["weight_decay"] == 0 for g in groups if all(p.ndim == 1 for p in g["params"]))


@pytest.fixture(scope="module")
def folder_task(tmp_path_factory):
    """Two classes of 8x8 RGB images, told apart by colour, and a tiny model for them."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / "data" / cls).mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "data" / cls / f"{i}.png")
    torch.manual_seed(0)
    model = save_pretrained(randomize(ACDiT(ACDiTConfig.preset("tiny", num_classes=2)), std=0.05), root / "model")
    return root / "data", model


def test_linear_probe_and_finetune_on_an_image_folder(folder_task):
    data, model = folder_task
    linear = run_represent(str(model), RepresentSettings(mode="linear", data=str(data)))
    assert linear["stream"] == "clean" and linear["num_train"] == 32 and linear["num_test"] == 8
    assert linear["top1"] >= 0.875  # colour is linearly readable from any reasonable features
    tuned = run_represent(str(model), RepresentSettings(mode="finetune", data=str(data), epochs=2, batch_size=8))
    assert 0 <= tuned["top1"] <= 1 and tuned["steps"] == 8 and "no mixup/cutmix" in tuned["deviations_from_mae"]
    again = run_represent(str(model), RepresentSettings(mode="finetune", data=str(data), epochs=2, batch_size=8))
    assert again["top1"] == tuned["top1"] and again["final_loss"] == tuned["final_loss"]  # seeded
    scratch = run_represent(str(model), RepresentSettings(mode="linear", data=str(data), from_scratch=True))
    assert scratch["init"] == "scratch"


def test_represent_command_json(folder_task, capsys, tmp_path):
    data, model = folder_task
    assert main(["represent", str(model), "--data", str(data), "--mode", "linear", "--json",
                 "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[: out.rindex("}") + 1])
    assert 0 <= result["top1"] <= 1 and json.loads((tmp_path / "r.json").read_text())["top1"] == result["top1"]


def test_a_latent_model_reads_the_vae_latents_of_the_images(folder_task, tmp_path):
    from diffusers import AutoencoderKL

    from ardiff.data.latents import VAERecord

    data, _ = folder_task
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                  layers_per_block=1, norm_num_groups=4, sample_size=16).save_pretrained(tmp_path / "vae")
    torch.manual_seed(0)
    model = randomize(ACDiT(ACDiTConfig.preset("tiny", in_channels=4, input_size=(4, 4), block_size=1,
                                               num_classes=2)), std=0.05)
    directory = save_pretrained(model, tmp_path / "latent",
                                extra_config={"_vae": VAERecord(str(tmp_path / "vae"), 0.5).to_dict()})
    result = run_represent(str(directory), RepresentSettings(mode="linear", data=str(data)))
    assert result["num_train"] == 32 and 0 <= result["top1"] <= 1  # 8x8 images -> 4x4 latents
