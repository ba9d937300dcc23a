"""CUDA paths: FlexAttention training forward/backward, bf16, torch.compile. Skipped without a GPU.

Last run on a GPU (one H200, torch 2.11.0+cu130, 2026-12-04): the auto-backend and bf16 tests
passed; test_flex_equals_dense_forward_and_backward failed for all three block sizes (its
message was cut off by the session's time limit, cause not found); the sampling and compile
tests did not get to run. On the CPU (torch 2.13) the same models' training forward through
FlexAttention, eager and compiled, matches SDPA's to 6e-7 for block sizes 16, 4 and 64, so the
suspect is the CUDA kernels, most likely the backward. Until this test passes on a GPU,
attention_backend "auto" means SDPA on CUDA too, and "flex" must be asked for by name.
"""

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig, SamplingSettings, make_generators, sample, training_loss
from helpers import randomize

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """Compare kernels in true fp32: a Trainer built earlier in the session (train.tf32) may have
    switched TF32 on for the whole process."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def gpu_model(backend, dtype=torch.float32, **overrides):
    settings = dict(hidden_size=128, num_heads=2, input_size=(16, 16), block_size=16, attention_backend=backend)
    cfg = ACDiTConfig.preset("tiny", **{**settings, **overrides})
    torch.manual_seed(0)
    return randomize(ACDiT(cfg)).to("cuda", dtype)


def test_auto_backend_is_sdpa_on_cuda():
    model = gpu_model("auto")
    assert model._backend(torch.device("cuda"), cached=False) == "sdpa"
    assert model._backend(torch.device("cuda"), cached=True) == "sdpa"
    assert gpu_model("flex")._backend(torch.device("cuda"), cached=False) == "flex"


@pytest.mark.parametrize("block_size", [16, 4, 64])
def test_flex_equals_dense_forward_and_backward(block_size):
    flex, dense = gpu_model("flex", block_size=block_size), gpu_model("sdpa", block_size=block_size)
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(4, 3, 16, 16, device="cuda", generator=g)
    y = torch.tensor([0, 1, 2, 3], device="cuda")
    losses = []
    for model in (flex, dense):
        loss = training_loss(model, x, y, generator=torch.Generator("cuda").manual_seed(1))
        loss.backward()
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5), f"loss {losses[0].item()} vs {losses[1].item()}"
    # One line per mismatching parameter, so a cut-off log still says where and by how much.
    mismatched = [f"{n}: max |diff| {(a.grad - b.grad).abs().max().item():.2e}, "
                  f"max |grad| {b.grad.abs().max().item():.2e}"
                  for (n, a), b in zip(flex.named_parameters(), dense.parameters())
                  if not torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-5)]
    assert not mismatched, f"{len(mismatched)} gradients differ; first: " + "; ".join(mismatched[:3])


def test_bf16_autocast_training_step():
    model = gpu_model("auto")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(8, 3, 16, 16, device="cuda")
    y = torch.randint(0, 10, (8,), device="cuda")
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = training_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)


def test_cached_sampling_matches_uncached_on_cuda():
    model = gpu_model("auto").eval()
    y = torch.tensor([1, 2], device="cuda")
    s = SamplingSettings(num_steps=5, cfg_scale=2.0)
    # CPU generators: the noise is drawn on the CPU and moved to the GPU
    a = sample(model, y, s, generator=make_generators([1, 2]))
    b = sample(model, y, s, generator=make_generators([1, 2]), use_cache=False)
    assert (a - b).abs().max() < 1e-3


def test_compiled_training_forward_matches_eager():
    model = gpu_model("auto")
    x0 = torch.randn(4, 3, 16, 16, device="cuda")
    xt = torch.randn(4, 3, 16, 16, device="cuda")
    t = torch.randint(0, 1000, (4, 4), device="cuda")
    y = torch.tensor([0, 1, 2, 3], device="cuda")
    eager = model(xt, t, y, x0)
    compiled = torch.compile(model)(xt, t, y, x0)
    assert torch.allclose(eager, compiled, atol=1e-4)
