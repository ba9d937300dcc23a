import pytest
import torch
import torch.nn.functional as F

from ardiff.nn.attention import Span, dense_scam_mask, flex_attention_op, flex_scam_mask


def training_layout(T):
    layout = (Span.clean_run(0, T - 1), Span.noisy(tuple(range(T)))) if T > 1 else (Span.noisy((0,)),)
    return layout


def test_scam_rule_small_case():
    # T=3 blocks of 1 token: [c0 c1 | n0 n1 n2]
    layout = training_layout(3)
    m = dense_scam_mask(layout, layout, 1, torch.device("cpu")).int().tolist()
    assert m == [
        [1, 0, 0, 0, 0],  # c0 sees c0
        [1, 1, 0, 0, 0],  # c1 sees c0 c1
        [0, 0, 1, 0, 0],  # n0 sees itself only
        [1, 0, 0, 1, 0],  # n1 sees c0 and itself
        [1, 1, 0, 0, 1],  # n2 sees c0 c1 and itself
    ]


@pytest.mark.parametrize("T,S", [(1, 16), (2, 8), (4, 16), (7, 28), (14, 14), (3, 50)])
def test_dense_equals_flex_forward_cpu(T, S):
    layout = training_layout(T)
    L = sum(len(s.blocks) for s in layout) * S
    device = torch.device("cpu")
    dense = dense_scam_mask(layout, layout, S, device)
    block_mask = flex_scam_mask(layout, layout, S, device)
    g = torch.Generator().manual_seed(T * 100 + S)
    q, k, v = (torch.randn(2, 2, L, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    out = flex_attention_op(q, k, v, block_mask, compiled=False)
    assert torch.allclose(out, ref, atol=1e-5)
    # and the BlockMask's mask_mod agrees with the dense rule, element by element
    qi, ki = torch.arange(L)[:, None], torch.arange(L)[None]
    expected = dense if dense is not None else torch.ones(L, L, dtype=torch.bool)
    assert torch.equal(block_mask.mask_mod(0, 0, qi, ki), expected)


def test_dense_mask_cached_per_layout():
    layout = training_layout(4)
    a = dense_scam_mask(layout, layout, 8, torch.device("cpu"))
    b = dense_scam_mask(layout, layout, 8, torch.device("cpu"))
    assert a is b


def test_full_access_gives_no_mask():
    # cached sampling without CFG: the noisy block sees the whole cache and itself
    q = (Span.noisy((3,)),)
    k = (Span.clean_run(0, 3), Span.noisy((3,)))
    assert dense_scam_mask(q, k, 4, torch.device("cpu")) is None
