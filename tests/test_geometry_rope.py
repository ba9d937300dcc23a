import math

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig
from ardiff.models.acdit import block_token_order, raster_coordinates
from ardiff.nn.rope import RopeND, apply_rope, official_base, paper_base


def test_patchify_channel_fastest_and_roundtrip():
    cfg = ACDiTConfig(input_size=(4, 4), in_channels=2, patch_size=2, block_layout="raster", block_size=4,
                      depth=1, hidden_size=32, num_heads=2, num_classes=0)
    model = ACDiT(cfg)
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    tokens = model.to_blocks(x).view(4, 8)
    # token 0 = top-left 2x2 patch, features ordered (p1, p2, C): channel fastest
    expected = torch.stack([x[0, :, 0, 0], x[0, :, 0, 1], x[0, :, 1, 0], x[0, :, 1, 1]]).reshape(-1)
    assert torch.equal(tokens[0], expected)
    assert torch.equal(model.from_blocks(model.to_blocks(x)), x)


def test_square_tile_order():
    cfg = ACDiTConfig(input_size=(4, 4), in_channels=1, patch_size=1, block_layout="tiles", block_size=4,
                      depth=1, hidden_size=32, num_heads=2, num_classes=0)
    order = block_token_order(cfg).tolist()
    # 2x2 tiles in raster order, raster inside a tile
    assert order == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def test_video_roundtrip_frame_major():
    cfg = ACDiTConfig(input_size=(4, 4, 4), in_channels=3, patch_size=2, block_layout="raster", block_size=8,
                      depth=1, hidden_size=48, num_heads=2, num_classes=0, rope_axis_weights=(2, 1, 1))
    model = ACDiT(cfg)
    x = torch.randn(2, 3, 4, 4, 4)
    blocks = model.to_blocks(x)
    assert blocks.shape == (2, 2, 8, 12)  # 2 blocks of 2 frames x (2x2) tokens
    assert torch.equal(model.from_blocks(blocks), x)
    # block 0 holds frames 0-1 only
    x2 = x.clone()
    x2[:, :, 2:] = 0
    assert torch.equal(model.to_blocks(x2)[:, 0], blocks[:, 0])


def test_paper_base_rule():
    assert paper_base(16) == 100 and paper_base(40) == 200
    assert official_base(16) == 100 and official_base(40) == 200


def _rope(mode, head_dim=64, grid=(16, 16), weights=None):
    return RopeND(head_dim, grid, mode, weights)


@pytest.mark.parametrize("grid,weights", [((16, 16), None), ((4, 8, 8), (2, 3, 3)), ((6, 6), (1, 3))])
def test_paper_rope_norm_preserving_and_shift_invariant(grid, weights):
    rope = _rope("paper", 64, grid, weights)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(50, 64, generator=g, dtype=torch.float64)
    k = torch.randn(50, 64, generator=g, dtype=torch.float64)
    pq = torch.randint(0, 10, (50, len(grid)), generator=g)
    pk = torch.randint(0, 10, (50, len(grid)), generator=g)
    shift = torch.tensor([3, 5, 7][: len(grid)])

    def rot(x, pos):
        cos, sin = rope.tables(pos)
        return apply_rope(x, cos, sin, rope.rotation_groups())

    assert torch.allclose(rot(q, pq).norm(dim=-1), q.norm(dim=-1), atol=1e-12)
    dots = (rot(q, pq) * rot(k, pk)).sum(-1)
    dots_shifted = (rot(q, pq + shift) * rot(k, pk + shift)).sum(-1)
    assert torch.allclose(dots, dots_shifted, atol=1e-10)


def test_paper_rope_is_block_diagonal_per_axis():
    rope = _rope("paper", 64, (16, 16))
    q = torch.randn(1, 64, dtype=torch.float64)
    cos, sin = rope.tables(torch.tensor([[5, 0]]))  # move along axis 0 only
    out = apply_rope(q, cos, sin, rope.rotation_groups())
    assert torch.equal(out[:, 32:], q[:, 32:])  # axis-1 segment untouched
    assert not torch.allclose(out[:, :32], q[:, :32])
    assert rope.rotation_groups() == ((0, 32), (32, 32))  # rotations stay inside each axis segment


def test_official_rope_quirks():
    rope = _rope("official", 64, (16, 16))
    cos, sin = rope.tables(torch.tensor([[3, 7], [4, 8]]))
    groups = rope.rotation_groups()
    # rotate-half pairs channel j with j + 32 across the whole head (mixes the axes)
    assert groups == ((0, 64),)
    # exponent runs 0..1 inclusive: first frequency 1, last 1/base (= 1/100)
    f = rope._frequencies()[0]
    assert f[0] == 1.0 and math.isclose(f[-1].item(), 1 / 100)
    # per-axis table [f, f]: channel 16 of axis h repeats channel 0's frequency
    angles = torch.atan2(sin[0].abs(), cos[0])
    assert math.isclose(angles[0].item(), angles[16].item())
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 64, generator=g, dtype=torch.float64)
    out = apply_rope(q, cos, sin, groups)
    assert not torch.allclose(out.norm(dim=-1), q.norm(dim=-1), rtol=1e-3)  # not norm-preserving
    # not shift-invariant
    k = torch.randn(2, 64, generator=g, dtype=torch.float64)
    c2, s2 = rope.tables(torch.tensor([[5, 9], [6, 10]]))
    d1 = (apply_rope(q, cos, sin, groups) * apply_rope(k, cos, sin, groups)).sum(-1)
    d2 = (apply_rope(q, c2, s2, groups) * apply_rope(k, c2, s2, groups)).sum(-1)
    assert not torch.allclose(d1, d2, atol=1e-6)


def test_official_rope_video_split():
    rope = _rope("official", 64, (16, 16, 16), (2, 3, 3))
    assert rope.segments == [16, 24, 24]
    assert raster_coordinates((2, 3)).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_rope_backward_matches_autograd():
    rope = _rope("paper", 64, (4, 8, 8), (2, 3, 3))
    cos, sin = rope.tables(torch.randint(0, 8, (10, 3)))
    x = torch.randn(2, 10, 64, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin, rope.rotation_groups()), (x,))
