"""Importing released ACDiT checkpoints: opt-in pickles, config rebuild, exact weights.

The fake checkpoints follow /work/shared/reference/acdit_official.md: a torch.save'd dict
with ``model`` (our key names equal the release's), optional ``ema``, and ``args``.
"""

import argparse
import collections
import json

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig, SamplingSettings, make_generators, sample
from ardiff.models.official import (
    ARGS_NAME,
    convert_official,
    load_official_checkpoint,
    official_config,
    registry_size,
)
from helpers import randomize

IMAGE = dict(input_size=(8, 8), in_channels=4, patch_size=1, block_layout="tiles", block_size=16,
             depth=2, hidden_size=128, num_heads=2, num_classes=10, rope="official",
             rope_axis_weights=(1, 1))  # the release's image split, written out explicitly
IMAGE_ARGS = dict(model="ACDiT-tiny-test", vae_latent_size=4, patch_size=1, block_size=16, ar_len=4,
                  num_frames=1, image_size=64, vae_patch_pixels=8, nd_split=None, num_classes=10)
# 4 frames of 8x8 latents, patch 2 -> 4x4 tokens per frame; blocks of 2 frames.
VIDEO = dict(input_size=(4, 8, 8), in_channels=4, patch_size=2, block_layout="raster", block_size=32,
             depth=2, hidden_size=128, num_heads=2, num_classes=7, rope="official", rope_axis_weights=(2, 3, 3))
VIDEO_ARGS = dict(model="ACDiT-tiny-test", vae_latent_size=4, patch_size=2, block_size=32, ar_len=2,
                  num_frames=4, image_size=64, vae_patch_pixels=8, nd_split="2_3_3", num_classes=7)


def source_model(config: dict, seed: int = 0) -> ACDiT:
    torch.manual_seed(seed)
    return randomize(ACDiT(ACDiTConfig(**config)), seed).eval()


def write_ckpt(path, model: dict | None = None, ema: dict | None = None, args: dict | None = None, **extra):
    ckpt = {**extra}
    if model is not None:
        ckpt["model"] = model
    if ema is not None:
        ckpt["ema"] = ema
    if args is not None:
        ckpt["args"] = argparse.Namespace(**args)
    torch.save(ckpt, path)
    return path


@pytest.fixture
def image_ckpt(tmp_path):
    src, ema = source_model(IMAGE, 0), source_model(IMAGE, 1)
    path = write_ckpt(tmp_path / "ACDiT-tiny-img.pt", src.state_dict(), ema.state_dict(), IMAGE_ARGS)
    return path, src, ema


def assert_same_weights(a: ACDiT, b: ACDiT):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------
#                              Pickle safety
# ---------------------------------------------------------------------------
def test_pickle_is_refused_without_opt_in(image_ckpt, tmp_path):
    path, *_ = image_ckpt
    for call in (lambda: load_official_checkpoint(path), lambda: convert_official(path, tmp_path / "out")):
        with pytest.raises(ValueError, match="--allow-pickle") as err:
            call()
        assert "pickle" in str(err.value) and str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)
    return 0


class Gadget:
    """Stands for a malicious object: unpickling it would run ``_record_unpickling``."""

    def __reduce__(self):
        return (_record_unpickling, ())


class SneakyDict(collections.OrderedDict):
    pass


@pytest.mark.parametrize("payload, name", [(Gadget(), "_record_unpickling"), (SneakyDict(a=1), "SneakyDict")])
def test_objects_outside_allow_list_are_refused(tmp_path, payload, name):
    sd = source_model(IMAGE).state_dict()
    path = write_ckpt(tmp_path / "bad.pt", sd, args=IMAGE_ARGS, extra=payload)
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="outside the allow-list") as err:
        load_official_checkpoint(path, allow_pickle=True)
    msg = str(err.value)
    assert str(path) in msg and name in msg and "weights_only=False" not in msg
    assert not UNPICKLED  # the object's code never ran


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match="junk.pt"):
        load_official_checkpoint(path, allow_pickle=True)
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "nope.pt", allow_pickle=True)


# ---------------------------------------------------------------------------
#                                  Loading
# ---------------------------------------------------------------------------
def test_load_returns_state_dict_and_args(image_ckpt):
    path, src, ema = image_ckpt
    sd, args = load_official_checkpoint(path, allow_pickle=True)
    assert args == IMAGE_ARGS
    assert all(torch.equal(sd[k], v) for k, v in src.state_dict().items())
    sd_ema, _ = load_official_checkpoint(path, allow_pickle=True, use_ema=True)
    assert all(torch.equal(sd_ema[k], v) for k, v in ema.state_dict().items())


def test_use_ema_without_ema_falls_back_to_model(tmp_path):
    src = source_model(IMAGE)
    path = write_ckpt(tmp_path / "m.pt", src.state_dict(), args=IMAGE_ARGS)
    with pytest.warns(UserWarning, match="no 'ema'"):
        sd, _ = load_official_checkpoint(path, allow_pickle=True, use_ema=True)
    assert torch.equal(sd["x_embedder.weight"], src.x_embedder.weight)


def test_neither_model_nor_ema_lists_keys(tmp_path):
    path = write_ckpt(tmp_path / "opt.pt", args=IMAGE_ARGS, opt={"lr": 1.0})
    with pytest.raises(ValueError, match=r"neither 'model' nor 'ema'.*'args', 'opt'"):
        load_official_checkpoint(path, allow_pickle=True)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(tmp_path, prefix):
    src = source_model(IMAGE)
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    out = convert_official(write_ckpt(tmp_path / "p.pt", sd, args=IMAGE_ARGS), tmp_path / "out", allow_pickle=True)
    assert_same_weights(ACDiT.from_pretrained(out), src)


# ---------------------------------------------------------------------------
#                                 Conversion
# ---------------------------------------------------------------------------
def test_convert_image(image_ckpt, tmp_path):
    path, src, ema = image_ckpt
    out = convert_official(path, tmp_path / "out", allow_pickle=True)
    assert out == tmp_path / "out"
    model = ACDiT.from_pretrained(out)
    assert model.config == src.config
    assert (model.config.rope, model.config.block_layout, model.config.block_size) == ("official", "tiles", 16)
    assert model.config.rope_axis_weights == (1, 1)
    assert_same_weights(model, src)
    assert json.loads((out / ARGS_NAME).read_text()) == IMAGE_ARGS

    out_ema = convert_official(path, tmp_path / "out_ema", allow_pickle=True, use_ema=True)
    assert_same_weights(ACDiT.from_pretrained(out_ema), ema)


def test_converted_model_samples_exactly_like_the_source(image_ckpt, tmp_path):
    path, src, _ = image_ckpt
    model = ACDiT.from_pretrained(convert_official(path, tmp_path / "out", allow_pickle=True), dtype=torch.float64)
    src = src.to(torch.float64)
    labels = torch.tensor([3, 7])
    s = SamplingSettings(num_steps=3, cfg_scale=1.5)
    a = sample(src, labels, s, generator=make_generators([5, 6]))
    b = sample(model, labels, s, generator=make_generators([5, 6]))
    assert a.dtype == torch.float64 and a.abs().sum() > 0
    assert (a - b).abs().max().item() == 0


def test_convert_video(tmp_path):
    src = source_model(VIDEO)
    path = write_ckpt(tmp_path / "ACDiT-tiny-vid.pt", src.state_dict(), args=VIDEO_ARGS)
    model = ACDiT.from_pretrained(convert_official(path, tmp_path / "out", allow_pickle=True))
    c = model.config
    assert (c.block_layout, c.input_size, c.rope_axis_weights, c.block_size) == ("raster", (4, 8, 8), (2, 3, 3), 32)
    assert c == src.config
    assert_same_weights(model, src)


def test_unknown_fields_are_inferred_from_shapes():
    src = source_model(IMAGE)
    args = {k: v for k, v in IMAGE_ARGS.items() if k not in ("model", "patch_size", "num_classes", "num_frames")}
    assert official_config(src.state_dict(), args) == src.config
    # Without image_size, the side follows from ar_len x block_size.
    args = {k: v for k, v in IMAGE_ARGS.items() if k != "image_size"}
    assert official_config(src.state_dict(), args) == src.config


def test_registry_names():
    assert registry_size("ACDiT-XL") == "XL" and registry_size("ACDiT-H") == "H"
    assert registry_size("acdit_l/2") == "L" and registry_size("ACDiT-tiny-test") is None
    assert registry_size(None) is None


def test_registry_size_disagreeing_with_weights_is_reported():
    src = source_model(IMAGE)
    with pytest.raises(ValueError, match=r"(?s)hidden_size=1152.*ACDiT-XL.*missing keys.*shape mismatches"):
        official_config(src.state_dict(), {**IMAGE_ARGS, "model": "ACDiT-XL"})


@pytest.mark.parametrize("drop, field", [(("block_size", "ar_len"), "block_size"),
                                         (("image_size", "ar_len"), "image_size")])
def test_missing_args_name_the_field(drop, field):
    src = source_model(IMAGE)
    args = {k: v for k, v in IMAGE_ARGS.items() if k not in drop}
    with pytest.raises(ValueError, match=field):
        official_config(src.state_dict(), args)


def test_inconsistent_args_are_reported():
    src = source_model(IMAGE)
    with pytest.raises(ValueError, match="ar_len=5"):
        official_config(src.state_dict(), {**IMAGE_ARGS, "ar_len": 5})
    with pytest.raises(ValueError, match="nd_split"):
        official_config(src.state_dict(), {**IMAGE_ARGS, "nd_split": "2_3_3"})


def test_wrong_shape_or_missing_key_is_named(tmp_path):
    sd = source_model(IMAGE).state_dict()
    bad = dict(sd)
    bad["blocks.1.mlp.fc1.weight"] = torch.zeros(256, 128)
    path = write_ckpt(tmp_path / "shape.pt", bad, args=IMAGE_ARGS)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight: checkpoint \(256, 128\), model \(512, 128\)"):
        convert_official(path, tmp_path / "out", allow_pickle=True)

    missing = {k: v for k, v in sd.items() if k != "final_layer.linear.bias"}
    path = write_ckpt(tmp_path / "missing.pt", missing, args=IMAGE_ARGS)
    with pytest.raises(ValueError, match=r"missing keys \(1\):\s+final_layer\.linear\.bias"):
        convert_official(path, tmp_path / "out", allow_pickle=True)

    extra = {**sd, "pos_embed": torch.zeros(1, 64, 128)}
    with pytest.raises(ValueError, match=r"unexpected keys \(1\):\s+pos_embed"):
        official_config(extra, IMAGE_ARGS)
    assert not (tmp_path / "out").exists()


def test_cli_convert_official(image_ckpt, tmp_path, capsys):
    from ardiff.cli import main

    path, _, ema = image_ckpt
    assert main(["convert-official", str(path), str(tmp_path / "refused")]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    main(["convert-official", str(path), str(tmp_path / "out"), "--allow-pickle", "--ema"])
    assert "wrote" in capsys.readouterr().out
    assert_same_weights(ACDiT.from_pretrained(tmp_path / "out"), ema)


def test_shape_check_under_meta_device_after_transformers_is_imported():
    """transformers changes how CPU constants mix with meta tensors; the tables are built on the CPU."""
    import transformers  # noqa: F401

    from ardiff import ACDiT, ACDiTConfig

    with torch.device("meta"):
        model = ACDiT(ACDiTConfig.preset("tiny", input_size=(4, 8, 8), block_layout="raster", block_size=16,
                                         rope_axis_weights=(2, 3, 3)))
    assert next(model.parameters()).device.type == "meta"
