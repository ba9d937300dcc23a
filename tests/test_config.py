import pytest
import torch

from ardiff import ACDiT, ACDiTConfig

OFFICIAL_COUNTS = {"B": 130_305_028, "L": 457_851_908, "XL": 674_856_708, "H": 950_959_620}


@pytest.mark.parametrize("name", list(OFFICIAL_COUNTS))
def test_preset_parameter_counts_match_official(name):
    with torch.device("meta"):
        model = ACDiT(ACDiTConfig.preset(name))  # paper image setting: 4ch, 32x32, patch 1, 1000 classes
    count = model.num_parameters()
    assert abs(count - OFFICIAL_COUNTS[name]) / OFFICIAL_COUNTS[name] < 0.005
    assert count == OFFICIAL_COUNTS[name]


def test_patch2_parameter_count():
    with torch.device("meta"):
        model = ACDiT(ACDiTConfig.preset("XL", patch_size=2, block_size=64))
    assert model.num_parameters() == 674_884_368


def test_small_presets():
    tiny = ACDiT(ACDiTConfig.preset("tiny"))
    assert tiny.num_parameters() < 1_000_000
    s = ACDiTConfig.preset("S")
    assert (s.depth, s.hidden_size, s.num_heads) == (12, 384, 6)
    with pytest.raises(ValueError, match="unknown ACDiT preset 'Q'"):
        ACDiTConfig.preset("Q")


def test_state_dict_keys_follow_release_names():
    keys = set(ACDiT(ACDiTConfig.preset("tiny")).state_dict())
    for k in ["t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight",
              "x_embedder.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.q_norm.weight",
              "blocks.0.attn.k_norm.weight", "blocks.0.attn.proj.bias", "blocks.1.mlp.fc2.weight",
              "blocks.1.adaLN_modulation.1.weight", "final_layer.norm_final.weight",
              "final_layer.adaLN_modulation.1.bias", "final_layer.linear.weight"]:
        assert k in keys
    assert "x_embedder.bias" not in keys
    assert not any("rope" in k or "token_order" in k for k in keys)


def test_error_head_dim_not_splittable():
    # head dim 64 over (t, h, w) with equal weights: 64/3 is not an integer.
    with pytest.raises(ValueError, match=r"head dim 64 cannot be split across 3 RoPE axes.*rope_axis_weights"):
        ACDiTConfig.preset("S", input_size=(4, 8, 8), block_layout="raster", block_size=64)
    cfg = ACDiTConfig.preset("S", input_size=(4, 8, 8), block_layout="raster", block_size=64,
                             rope_axis_weights=(2, 3, 3))
    assert cfg.num_blocks == 4


def test_error_block_size_not_dividing():
    with pytest.raises(ValueError, match=r"block_size=48 does not divide the sequence of 256 tokens"):
        ACDiTConfig.preset("S", input_size=(16, 16), block_layout="raster", block_size=48)


def test_error_tiles_not_square():
    with pytest.raises(ValueError, match=r"tiles are not square: block_size=32"):
        ACDiTConfig.preset("S", input_size=(16, 16), block_layout="tiles", block_size=32)
    with pytest.raises(ValueError, match=r"tiles of 3x3 tokens do not divide the token grid 16x16"):
        ACDiTConfig.preset("S", input_size=(16, 16), block_layout="tiles", block_size=9)


def test_other_config_errors():
    with pytest.raises(ValueError, match="not divisible by patch_size=3"):
        ACDiTConfig.preset("S", input_size=(28, 28), patch_size=3)
    with pytest.raises(ValueError, match="'tiles' is for images"):
        ACDiTConfig.preset("S", input_size=(4, 8, 8), block_size=64)
    with pytest.raises(ValueError, match="rope='official'.*head dim is fixed at 64"):
        ACDiTConfig.preset("tiny", rope="official")
    with pytest.raises(ValueError, match=r"unknown ACDiTConfig keys \['depthh'\]"):
        ACDiTConfig.from_dict({"depthh": 3})


def test_config_roundtrip_json():
    cfg = ACDiTConfig.preset("tiny", rope_axis_weights=(1, 1))
    again = ACDiTConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_bad_input_shape_and_labels(tiny):
    model = tiny()
    with pytest.raises(ValueError,
                       match=r"input of shape \(2, 3, 9, 8\) does not match the model: expected \(B, 3, 8, 8\)"):
        model.to_blocks(torch.zeros(2, 3, 9, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="class label 11 is out of range"):
        model.embed_condition(torch.tensor([11]))
