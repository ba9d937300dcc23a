import torch

from ardiff import training_loss
from ardiff.diffusion.schedule import NoiseSchedule
from helpers import tiny_model


def test_training_forward_is_skip_causal():
    """Changing clean block j changes only the predictions of noisy blocks > j."""
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    xt = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (2, 4), generator=g)
    y = torch.tensor([1, 2])
    base = model.to_blocks(model(xt, t, y, x0))
    blocks = model.to_blocks(x0)
    blocks[:, 1] += 1.0
    changed = model.to_blocks(model(xt, t, y, model.from_blocks(blocks)))
    diff = (changed - base).abs().amax(dim=(0, 2, 3))
    assert diff[0] == 0 and diff[1] == 0
    assert diff[2] > 1e-6 and diff[3] > 1e-6
    # a noisy block's timestep only affects that block
    t2 = t.clone()
    t2[:, 2] = 999 - t2[:, 2]
    other = model.to_blocks(model(xt, t2, y, x0))
    d = (other - base).abs().amax(dim=(0, 2, 3))
    assert d[2] > 1e-6 and d[0] == 0 and d[1] == 0 and d[3] == 0


def test_clean_stream_is_label_independent():
    """The clean context's keys do not depend on the label, while the noisy block's output does."""
    from ardiff import KVCache

    model = tiny_model()
    x0 = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    clean = model.to_blocks(x0)[:, :3]
    noisy = torch.randn(2, 1, *clean.shape[2:], dtype=torch.float64)
    keys, outputs = [], []
    for label in (1, 7):
        cond = model.condition_vectors(torch.full((2, 1), 500), model.embed_condition(torch.tensor([label, label])))
        cache = KVCache.allocate(model, 2)
        outputs.append(model.run(noisy=noisy, noisy_blocks=(3,), cond=cond, clean=clean, clean_first_block=0,
                                 cache=cache))
        keys.append(cache.keys[:, :, :, : 3 * 4].clone())
    assert torch.equal(keys[0], keys[1])
    assert not torch.allclose(outputs[0], outputs[1])


def test_training_loss_backward_and_per_block_timesteps():
    model = tiny_model(dtype=torch.float32)
    model.train()
    x = torch.randn(4, 3, 8, 8)
    loss = training_loss(model, x, torch.tensor([0, 1, 2, 3]), generator=torch.Generator().manual_seed(0),
                         cond_drop_prob=0.5)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_noise_schedule_is_ddpm_linear():
    from ardiff import ACDiTConfig

    sched = NoiseSchedule.from_config(ACDiTConfig.preset("tiny"))
    betas = 1 - sched.alphas_cumprod[1:] / sched.alphas_cumprod[:-1]
    assert abs(betas[0].item() - (1e-4 + (0.02 - 1e-4) / 999)) < 1e-6
    assert abs(betas[-1].item() - 0.02) < 1e-6
    assert sched.num_train_timesteps == 1000
