"""Exactness of block-autoregressive sampling (float64)."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from ardiff import SamplingSettings, make_generators, sample
from ardiff.diffusion.schedule import SAMPLERS, scheduler_config
from ardiff.models.checkpoint import save_pretrained
from helpers import tiny_model

TOL = 1e-9

SETTINGS = {
    "image_tiles": dict(),  # 8x8 input, patch 2 -> 4x4 tokens, four 2x2 tiles
    "image_rows": dict(block_layout="raster", block_size=4),  # one token row per block
    "video_frames": dict(input_size=(4, 4, 4), patch_size=2, block_layout="raster", block_size=8,
                         rope_axis_weights=(2, 1, 1)),  # 2 frames per block
    "token_wise": dict(block_layout="raster", block_size=1),
    "video_spatial_pos": dict(input_size=(4, 4, 4), patch_size=2, block_layout="raster", block_size=4,
                              rope_axis_weights=(2, 1, 1), spatial_pos_embed=True),  # RoPE + (row, col) table
}


class TrainingForwardModel:
    """Runs the SCAM *training* forward on the growing sequence at every step.

    Block i's prediction is taken from a full training layout [c_0..c_{i-1}; n_0..n_i]
    whose other noisy blocks hold junk: SCAM must make it irrelevant.
    """

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, *, noisy, noisy_blocks, cond, clean=None, **_):
        m = self._model
        i = noisy_blocks[0]
        B, G, S, P = noisy.shape
        outs = []
        for g in range(G):
            junk = torch.randn(B, i + 1, S, P, dtype=noisy.dtype)
            junk[:, i] = noisy[:, g]
            junk_cond = torch.randn(B, i + 1, cond.shape[-1], dtype=cond.dtype)
            junk_cond[:, i] = cond[:, g]
            eps = m.run(noisy=junk, noisy_blocks=tuple(range(i + 1)), cond=junk_cond, clean=clean)
            outs.append(eps[:, i])
        return torch.stack(outs, 1)


def labels(n=3):
    return torch.arange(n) % 10


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_cached_equals_uncached_equals_training_forward(setting, cfg_scale):
    model = tiny_model(**SETTINGS[setting])
    s = SamplingSettings(num_steps=4, cfg_scale=cfg_scale)
    cached = sample(model, labels(), s, generator=make_generators([1, 2, 3]))
    separate = sample(model, labels(), s, generator=make_generators([1, 2, 3]), context_pass="separate")
    uncached = sample(model, labels(), s, generator=make_generators([1, 2, 3]), use_cache=False)
    training = sample(TrainingForwardModel(model), labels(), s, generator=make_generators([1, 2, 3]),
                      use_cache=False)
    assert cached.dtype == torch.float64
    assert cached.abs().max() > 0.1  # not a degenerate all-zero sample
    assert (cached - uncached).abs().max() < TOL
    assert (cached - separate).abs().max() < TOL
    assert (uncached - training).abs().max() < TOL


def test_spatial_pos_embed_is_one_row_column_table_in_every_frame():
    from ardiff.nn.rope import sincos_embedding

    video = tiny_model(**SETTINGS["video_spatial_pos"])
    plain = tiny_model(**{**SETTINGS["video_spatial_pos"], "spatial_pos_embed": False})
    table = video.pos_embed.view(4, 4, -1)  # (frames, tokens of a frame in raster order, hidden)
    image = sincos_embedding(64, torch.tensor([(r, c) for r in range(2) for c in range(2)])).float()
    for frame in range(4):
        torch.testing.assert_close(table[frame], image.to(table.dtype))
    assert plain.pos_embed is None and table[0, 0].abs().max() > 0.5
    assert set(video.state_dict()) == set(plain.state_dict())  # a constant: checkpoints load either way
    plain.load_state_dict(video.state_dict())
    x = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64)
    t = torch.full((1, 4), 500)
    assert not torch.allclose(video(x, t, labels(1), x), plain(x, t, labels(1), x))
    with pytest.raises(ValueError, match="already hold the spatial position"):
        tiny_model(spatial_pos_embed=True, rope="absolute")


def test_stochastic_scheduler_and_vector_conditions():
    model = tiny_model(num_classes=0, cond_dim=6)
    sched = DDPMScheduler(**scheduler_config(model.config))
    cond = torch.randn(2, 4, 6, dtype=torch.float64)  # one vector per block
    s = SamplingSettings(num_steps=5, cfg_scale=3.0)
    a = sample(model, cond, s, generator=make_generators([5, 6]), scheduler=sched)
    b = sample(model, cond, s, generator=make_generators([5, 6]), scheduler=sched, use_cache=False)
    assert (a - b).abs().max() < TOL


def test_seeds_are_batch_independent():
    model = tiny_model()
    s = SamplingSettings(num_steps=4, cfg_scale=1.5)
    batch = sample(model, torch.tensor([3, 4, 5]), s, generator=make_generators([7, 8, 9]))
    alone = sample(model, torch.tensor([4]), s, generator=make_generators([8]))
    assert (batch[1] - alone[0]).abs().max() < 1e-12
    again = sample(model, torch.tensor([3, 4, 5]), s, generator=make_generators([7, 8, 9]))
    assert torch.equal(batch, again)


def test_guidance_interval():
    """Guidance only at the steps whose t / T lies in the interval; the others run one group."""
    model = tiny_model()
    s = SamplingSettings(num_steps=4, cfg_scale=3.0)
    gens = lambda: make_generators([1, 2])  # noqa: E731
    always = sample(model, labels(2), s, generator=gens())
    assert torch.equal(always, sample(model, labels(2), s.but(guidance_interval=(0.0, 1.0)), generator=gens()))
    # an interval that holds no step (the 4 steps sit near t = 999, 749, 499, 249) is the conditional branch
    never = sample(model, labels(2), s.but(guidance_interval=(0.0, 0.1)), generator=gens())
    plain = sample(model, labels(2), SamplingSettings(num_steps=4, cfg_scale=1.0), generator=gens())
    assert (never - plain).abs().max() < TOL
    # a partial interval differs from both, and the KV cache agrees with the recomputed context
    # although the number of noisy groups changes from step to step
    partial = sample(model, labels(2), s.but(guidance_interval=(0.4, 1.0)), generator=gens())
    assert (partial - always).abs().max() > 1e-3 and (partial - plain).abs().max() > 1e-3
    uncached = sample(model, labels(2), s.but(guidance_interval=(0.4, 1.0)), generator=gens(), use_cache=False)
    assert (partial - uncached).abs().max() < TOL
    for bad in [(0.5, 0.5), (0.7, 0.2), (-0.1, 0.5), (0.2, 1.5), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="guidance_interval"):  # refused by the settings, before sampling
            sample(model, labels(2), s.but(guidance_interval=bad), generator=gens())


class AutoguidedModel:
    """Reference for autoguidance: one model whose prediction adds ``(w - 1) (m(c) - g(c))`` to
    every group (the conditional one and, under CFG, the unconditional one), run with the
    context recomputed at every step (no cache)."""

    def __init__(self, model, guide, guide_scale, y):
        self._model, self._guide, self._guide_scale, self._y = model, guide, guide_scale, y

    def __getattr__(self, name):
        return getattr(self._model, name)

    def condition_vectors(self, t, cond_emb):
        self._t = t[:, :1]  # each model embeds the step's t with its own t-embedder
        return self._model.condition_vectors(t, cond_emb)

    def run(self, *, noisy, noisy_blocks, cond, clean=None, **_):
        guide_cond = self._guide.condition_vectors(self._t, self._guide.embed_condition(self._y))
        m = self._model.run(noisy=noisy, noisy_blocks=noisy_blocks, cond=cond, clean=clean)
        g = self._guide.run(noisy=noisy[:, :1], noisy_blocks=noisy_blocks[:1], cond=guide_cond, clean=clean)
        return m + (self._guide_scale - 1) * (m[:, :1] - g)


@pytest.mark.parametrize("setting", ["image_tiles", "video_frames"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_autoguidance_matches_its_formula_with_and_without_cache(setting, cfg_scale):
    """A guided step is m(c) + (cfg - 1)(m(c) - m(null)) + (w - 1)(m(c) - g(c)); the guide keeps its own cache."""
    model = tiny_model(**SETTINGS[setting])
    guide = tiny_model(seed=1, **SETTINGS[setting])
    s = SamplingSettings(num_steps=4, cfg_scale=cfg_scale, sampler="sde-dpmsolver++")
    gens = lambda: make_generators([1, 2, 3])  # noqa: E731
    y = labels()
    cached = sample(model, y, s, generator=gens(), guide_model=guide, guide_scale=2.0)
    for other in (dict(use_cache=False), dict(context_pass="separate")):
        again = sample(model, y, s, generator=gens(), guide_model=guide, guide_scale=2.0, **other)
        assert (cached - again).abs().max() < TOL
    expected = sample(AutoguidedModel(model, guide, 2.0, y), y, s, generator=gens(), use_cache=False)
    assert cached.abs().max() > 0.1 and (cached - expected).abs().max() < TOL
    assert (cached - sample(model, y, s, generator=gens())).abs().max() > 1e-3  # the guide matters
    # a model guiding itself adds nothing
    itself = sample(model, y, s, generator=gens(), guide_model=model, guide_scale=2.0)
    assert (itself - sample(model, y, s, generator=gens())).abs().max() < TOL


def test_autoguidance_follows_the_guidance_interval_and_rolls_past_the_trained_length():
    model = tiny_model(**SETTINGS["video_frames"])
    guide = tiny_model(seed=1, **SETTINGS["video_frames"])
    gens = lambda: make_generators([4, 5])  # noqa: E731
    s = SamplingSettings(num_steps=4, cfg_scale=1.0)
    kw = dict(guide_model=guide, guide_scale=3.0)
    plain = sample(model, labels(2), s, generator=gens())
    never = sample(model, labels(2), s.but(guidance_interval=(0.0, 0.1)), generator=gens(), **kw)  # no step in it
    assert (never - plain).abs().max() < TOL
    partial = sample(model, labels(2), s.but(guidance_interval=(0.4, 1.0)), generator=gens(), **kw)
    assert (partial - plain).abs().max() > 1e-3
    roll = dict(num_blocks=4, window=1, **kw)
    cached = sample(model, labels(2), s, generator=gens(), **roll)
    uncached = sample(model, labels(2), s, generator=gens(), use_cache=False, **roll)
    assert cached.shape[2] == 8 and (cached - uncached).abs().max() < TOL


def test_autoguidance_rejects_a_guide_that_does_not_fit():
    model = tiny_model()
    s = SamplingSettings(num_steps=2, cfg_scale=1.0)
    with pytest.raises(ValueError, match="guide_scale=1 leaves it unused"):
        sample(model, labels(2), s, guide_model=tiny_model(seed=1))
    with pytest.raises(ValueError, match="needs a guide_model"):
        sample(model, labels(2), s, guide_scale=2.0)
    with pytest.raises(ValueError, match="block_size: 4 vs 1"):
        sample(model, labels(2), s, guide_model=tiny_model(block_layout="raster", block_size=1), guide_scale=2.0)
    with pytest.raises(ValueError, match="num_classes"):
        sample(model, labels(2), s, guide_model=tiny_model(num_classes=5), guide_scale=2.0)
    with pytest.raises(ValueError, match="move it"):
        sample(model, labels(2), s, guide_model=tiny_model(dtype=torch.float32), guide_scale=2.0)


class HistoryGuidedModel:
    """Reference for history guidance: a block with context adds ``(w - 1) (m(c, h) - m(c, none))``
    to every group, ``m(c, none)`` being the block run alone as the first block; no cache."""

    def __init__(self, model, history_scale):
        self._model, self._history_scale = model, history_scale

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, *, noisy, noisy_blocks, cond, clean=None, **_):
        m = self._model.run(noisy=noisy, noisy_blocks=noisy_blocks, cond=cond, clean=clean)
        if clean is None:
            return m
        alone = self._model.run(noisy=noisy[:, :1], noisy_blocks=(0,), cond=cond[:, :1])
        return m + (self._history_scale - 1) * (m[:, :1] - alone)


@pytest.mark.parametrize("setting", ["video_frames", "video_spatial_pos"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_history_guidance_matches_its_formula_and_leaves_the_first_block(setting, cfg_scale):
    """A guided step of a block with context adds (w - 1)(m(c, h) - m(c, none)); block 0 has no history."""
    model = tiny_model(**SETTINGS[setting])
    s = SamplingSettings(num_steps=4, cfg_scale=cfg_scale, sampler="sde-dpmsolver++")
    history = s.but(history_scale=2.0)
    kw = dict(output="blocks")
    gens = lambda: make_generators([1, 2, 3])  # noqa: E731
    y = labels()
    cached = sample(model, y, history, generator=gens(), **kw)
    for other in (dict(use_cache=False), dict(context_pass="separate")):
        assert (cached - sample(model, y, history, generator=gens(), **kw, **other)).abs().max() < TOL
    expected = sample(HistoryGuidedModel(model, 2.0), y, s, generator=gens(), use_cache=False, **kw)
    assert cached.abs().max() > 0.1 and (cached - expected).abs().max() < TOL
    plain = sample(model, y, s, generator=gens(), **kw)
    assert (cached[:, 0] - plain[:, 0]).abs().max() < TOL  # the first block is drawn from the condition alone
    assert (cached[:, 1:] - plain[:, 1:]).abs().max() > 1e-3
    both = sample(model, y, history, generator=gens(), guide_model=tiny_model(seed=1, **SETTINGS[setting]),
                  guide_scale=1.5, **kw)
    assert (both - cached).abs().max() > 1e-3  # the two guidances add up


def test_a_frame_block_alone_reads_the_same_at_every_position():
    """Why history guidance may run the block at position 0: with relative RoPE (and a spatial
    table shared by every frame) a block without context does not know where it is."""
    for setting in ("video_frames", "video_spatial_pos"):
        model = tiny_model(**SETTINGS[setting])
        S, P = model.config.block_size, model.config.patch_dim
        x = torch.randn(2, 1, S, P, dtype=torch.float64)
        c = model.condition_vectors(torch.full((2, 1), 500), model.embed_condition(labels(2)))
        first = model.run(noisy=x, noisy_blocks=(0,), cond=c)
        for position in range(1, model.config.num_blocks):
            assert (model.run(noisy=x, noisy_blocks=(position,), cond=c) - first).abs().max() < TOL


def test_history_guidance_follows_the_interval_and_rolls_past_the_trained_length():
    model = tiny_model(**SETTINGS["video_frames"])
    gens = lambda: make_generators([4, 5])  # noqa: E731
    s = SamplingSettings(num_steps=4, cfg_scale=1.0, history_scale=3.0)
    plain = sample(model, labels(2), SamplingSettings(num_steps=4, cfg_scale=1.0), generator=gens())
    never = sample(model, labels(2), s.but(guidance_interval=(0.0, 0.1)), generator=gens())  # no step in it
    assert (never - plain).abs().max() < TOL
    roll = dict(num_blocks=4, window=1)
    cached = sample(model, labels(2), s, generator=gens(), **roll)
    uncached = sample(model, labels(2), s, generator=gens(), use_cache=False, **roll)
    assert cached.shape[2] == 8 and (cached - uncached).abs().max() < TOL


def test_history_guidance_rejects_what_it_cannot_guide():
    with pytest.raises(ValueError, match="history_scale needs a video model whose blocks are whole frames"):
        sample(tiny_model(), labels(2), SamplingSettings(cfg_scale=1.0, num_steps=2, history_scale=2.0))
    with pytest.raises(ValueError, match=r"history_scale=0.5 must be >= 1"):  # refused by the settings
        sample(tiny_model(**SETTINGS["video_frames"]), labels(2),
               SamplingSettings(cfg_scale=1.0, num_steps=2, history_scale=0.5))


def test_cfg_scale_one_is_conditional_branch():
    model = tiny_model()
    plain = sample(model, labels(2), SamplingSettings(cfg_scale=1.0, num_steps=4), generator=make_generators([1, 2]))

    # Make the unconditional branch identical to the conditional one: any scale must
    # then give the conditional branch, i.e. what scale 1 computes alone.
    original_null = model.null_condition
    model.null_condition = lambda b: model.embed_condition(labels(2))
    try:
        guided = sample(model, labels(2), SamplingSettings(cfg_scale=4.0, num_steps=4),
                        generator=make_generators([1, 2]))
    finally:
        model.null_condition = original_null
    assert (plain - guided).abs().max() < TOL
    # and with the real null class, guidance changes the result
    real = sample(model, labels(2), SamplingSettings(cfg_scale=4.0, num_steps=4), generator=make_generators([1, 2]))
    assert (plain - real).abs().max() > 1e-3


@pytest.mark.parametrize("use_cache", [True, False])
def test_block_hook_replacement_enters_context(use_cache):
    model = tiny_model()
    seen = []

    def hook(event):
        seen.append(event.index)
        assert event.blocks.shape[1] == event.index
        return torch.full_like(event.block, 0.5) if event.index == 1 else None

    s = SamplingSettings(cfg_scale=1.0, num_steps=3)
    out = sample(model, labels(2), s, generator=make_generators([1, 2]), on_block_end=hook,
                 use_cache=use_cache, output="blocks")
    assert seen == [0, 1, 2, 3]
    assert torch.all(out[:, 1] == 0.5)
    ref = sample(model, labels(2), s, generator=make_generators([1, 2]), on_block_end=hook,
                 use_cache=not use_cache, output="blocks")
    assert (out - ref).abs().max() < TOL  # the replaced block is the context of blocks 2, 3
    plain = sample(model, labels(2), s, generator=make_generators([1, 2]), output="blocks")
    assert (plain[:, 2:] - out[:, 2:]).abs().max() > 1e-4


def test_hook_shape_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="on_block_end returned shape"):
        sample(model, labels(1), SamplingSettings(cfg_scale=1.0, num_steps=2), on_block_end=lambda e: e.block[:, :1])


def test_ddim_float32_close():
    model = tiny_model(dtype=torch.float32)
    sched = DDIMScheduler(**scheduler_config(model.config))
    s = SamplingSettings(num_steps=6, cfg_scale=1.5)
    a = sample(model, labels(2), s, scheduler=sched, generator=make_generators([1, 2]))
    b = sample(model, labels(2), s, scheduler=sched, generator=make_generators([1, 2]), use_cache=False)
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_flex_backend_matches_sdpa_forward_on_cpu(compiled, monkeypatch):
    """The eager FlexAttention and the kernel torch.compile makes of it (what CUDA runs)."""
    from ardiff.nn import attention

    op = attention.flex_attention_op
    monkeypatch.setattr(attention, "flex_attention_op", lambda q, k, v, mask: op(q, k, v, mask, compiled=compiled))
    model = tiny_model(dtype=torch.float32)
    x0 = torch.randn(2, 3, 8, 8)
    xt = torch.randn(2, 3, 8, 8)
    t = torch.randint(0, 1000, (2, 4))
    with torch.no_grad():  # FlexAttention has no backward pass on CPU
        ref = model(xt, t, labels(2), x0)
    model.config.attention_backend = "flex"
    try:
        with torch.no_grad():
            out = model(xt, t, labels(2), x0)
    finally:
        model.config.attention_backend = "auto"
    assert torch.allclose(out, ref, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Named samplers and the settings recorded with a model
# ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_denoised", [False, True])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_named_samplers_are_exact_and_batch_independent(name, clip_denoised):
    model = tiny_model()
    s = SamplingSettings(num_steps=4, cfg_scale=2.0, sampler=name, clip_denoised=clip_denoised)
    cached = sample(model, labels(), s, generator=make_generators([1, 2, 3]))
    uncached = sample(model, labels(), s, generator=make_generators([1, 2, 3]), use_cache=False)
    alone = sample(model, labels()[1:2], s, generator=make_generators([2]))
    assert (cached - uncached).abs().max() < TOL
    assert (cached[1] - alone[0]).abs().max() < 1e-12


class CleanPredictionModel:
    """A tiny model's interface around a known clean-sample prediction ``x0 = f(x_t)``,
    returned as the matching epsilon: what a sampler does with it can be checked exactly."""

    def __init__(self, model, predict_clean):
        from ardiff.diffusion.schedule import NoiseSchedule

        self._model, self._predict_clean = model, predict_clean
        self._alphas_cumprod = NoiseSchedule.from_config(model.config).alphas_cumprod
        self._t = None

    def __getattr__(self, name):
        return getattr(self._model, name)

    def condition_vectors(self, t, emb):
        self._t = int(t.flatten()[0])
        return self._model.condition_vectors(t, emb)

    def run(self, *, noisy, **_):
        ab = self._alphas_cumprod[self._t].to(noisy.dtype)
        return (noisy - ab.sqrt() * self._predict_clean(noisy)) / (1 - ab).sqrt()


# The -karras samplers step between noise levels off the integer timestep grid (the model is
# told the nearest timestep), so a mock that answers for timestep t is not exact for them;
# their clipping is covered by test_clip_denoised_keeps_samples_in_the_pixel_range.
@pytest.mark.parametrize("name", [name for name in SAMPLERS if not name.endswith("-karras")])
def test_clipping_is_the_step_of_the_clipped_prediction(name):
    """clip_denoised must act as if the model had predicted the clipped sample. diffusers' DDIM
    by default clips its clean sample but keeps stepping along the unclipped epsilon."""
    model = tiny_model()
    overshooting = CleanPredictionModel(model, lambda x: 1.2 * x + 0.3)
    clipped_by_model = CleanPredictionModel(model, lambda x: (1.2 * x + 0.3).clamp(-1, 1))
    s = SamplingSettings(num_steps=6, cfg_scale=1.0, sampler=name)
    a = sample(overshooting, labels(), s.but(clip_denoised=True), generator=make_generators([1, 2, 3]),
               use_cache=False)
    b = sample(clipped_by_model, labels(), s, generator=make_generators([1, 2, 3]), use_cache=False)
    # 1e-5: the schedulers hold their coefficients in float32 (DDIM without the fix: 0.04)
    assert (a - b).abs().max() < 1e-5
    unclipped = sample(overshooting, labels(), s, generator=make_generators([1, 2, 3]), use_cache=False)
    assert (a - unclipped).abs().max() > 0.1  # the clipping did bind


def test_ddim_steps_between_the_grid_timesteps():
    """DDIM moves the sample to the next timestep of its grid (linspace: 999, 799, 599, 400, 200, 0
    for 6 steps), not to diffusers' guess t - 1000 // 6, and ends at the clean level."""
    from ardiff.diffusion.schedule import NoiseSchedule

    model = tiny_model(num_classes=0)
    mock = CleanPredictionModel(model, lambda x: 1.2 * x + 0.3)
    got = sample(mock, None, SamplingSettings(cfg_scale=1.0, num_steps=6, sampler="ddim"), batch_size=2,
                 use_cache=False, output="blocks", generator=make_generators([4, 5]))
    ab = NoiseSchedule.from_config(model.config).alphas_cumprod
    grid = [999, 799, 599, 400, 200, 0]
    gens = make_generators([4, 5])
    for i in range(got.shape[1]):
        x = torch.stack([torch.randn(got.shape[2:], generator=g, dtype=torch.float64) for g in gens])
        for k, t in enumerate(grid):
            x0 = 1.2 * x + 0.3
            eps = (x - ab[t].sqrt() * x0) / (1 - ab[t]).sqrt()
            a_next = ab[grid[k + 1]] if k + 1 < len(grid) else torch.tensor(1.0, dtype=torch.float64)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        assert (got[:, i] - x).abs().max() < 1e-5  # float32 alphas; the guessed stride is off by 1e-3


def test_sde_sampler_adds_noise_the_default_ode_does_not():
    model = tiny_model()
    s = SamplingSettings(num_steps=4, cfg_scale=2.0)  # the default sampler
    default = sample(model, labels(), s, generator=make_generators([1, 2, 3]))
    ode = sample(model, labels(), s.but(sampler="dpmsolver++"), generator=make_generators([1, 2, 3]))
    sde = sample(model, labels(), s.but(sampler="sde-dpmsolver++"), generator=make_generators([1, 2, 3]))
    assert torch.equal(default, ode)
    assert (sde - ode).abs().max() > 0.05


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match=r"unknown sampler 'euler'; choose one of dpmsolver\+\+, sde-dpmsolver\+\+"):
        sample(tiny_model(), labels(), SamplingSettings(cfg_scale=1.0, num_steps=2, sampler="euler"))
    # a sampler is named in the settings; scheduler= takes a scheduler object only
    with pytest.raises(TypeError, match=r"SamplingSettings\(sampler=\.\.\.\)"):
        sample(tiny_model(), labels(), SamplingSettings(cfg_scale=1.0, num_steps=2), scheduler="ddim")


def test_sampling_settings_recorded_with_a_model(tmp_path):
    model = tiny_model()
    save_pretrained(model, tmp_path / "plain")
    assert SamplingSettings.recorded(tmp_path / "plain") == SamplingSettings()
    tuned = {"_sampling": {"cfg_scale": 3.0, "sampler": "sde-dpmsolver++"}}
    save_pretrained(model, tmp_path / "tuned", extra_config=tuned)
    tuned = SamplingSettings.recorded(tmp_path / "tuned")
    assert tuned == SamplingSettings(cfg_scale=3.0, num_steps=25, sampler="sde-dpmsolver++")
    assert tuned.but(cfg_scale=None, num_steps=7, sampler=None) == SamplingSettings(3.0, 7, "sde-dpmsolver++")
    save_pretrained(model, tmp_path / "clipped", extra_config={"_sampling": {"clip_denoised": True}})
    assert SamplingSettings.recorded(tmp_path / "clipped").clip_denoised
    assert not SamplingSettings.recorded(tmp_path / "clipped").but(clip_denoised=False).clip_denoised
    save_pretrained(model, tmp_path / "typo", extra_config={"_sampling": {"cfg": 3.0}})
    with pytest.raises(ValueError, match=r"config\.json: _sampling: unknown keys \['cfg'\]"):
        SamplingSettings.recorded(tmp_path / "typo")
    save_pretrained(model, tmp_path / "bad", extra_config={"_sampling": {"sampler": "euler"}})
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        SamplingSettings.recorded(tmp_path / "bad")


def test_cli_sampler_choices_are_the_library_samplers():
    from ardiff.cli import SAMPLER_CHOICES

    assert SAMPLER_CHOICES == tuple(SAMPLERS)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_clip_denoised_keeps_samples_in_the_pixel_range(name):
    model = tiny_model()
    s = SamplingSettings(num_steps=4, cfg_scale=6.0, sampler=name)
    free = sample(model, labels(), s, generator=make_generators([1, 2, 3]))
    clipped = sample(model, labels(), s.but(clip_denoised=True), generator=make_generators([1, 2, 3]))
    # Unclipped (diffusers clips DDIM/DDPM by default; the named samplers must not), the guided
    # predictions of a random model overshoot; clipped, only the last step's small noise term
    # can leave [-1, 1].
    assert free.abs().max() > 1.5
    assert clipped.abs().max() < 1.05


def test_clip_denoised_needs_a_sampler_by_name():
    model = tiny_model()
    with pytest.raises(ValueError, match="clip_denoised=True needs a sampler given by name"):
        sample(model, labels(), SamplingSettings(cfg_scale=1.0, num_steps=2, clip_denoised=True),
               scheduler=DDIMScheduler())


def test_settings_carry_every_setting_and_round_trip_through_their_record():
    s = SamplingSettings(cfg_scale=3.0, num_steps=7, sampler="ddpm", clip_denoised=True)
    assert s.to_dict() == dict(num_steps=7, cfg_scale=3.0, sampler="ddpm", clip_denoised=True,
                               history_scale=1.0, guidance_interval=None)
    assert SamplingSettings.from_record(json.loads(json.dumps(s.to_dict()))) == s
    interval = s.but(guidance_interval=[0.2, 0.6])
    assert interval.guidance_interval == (0.2, 0.6) and interval.to_dict()["guidance_interval"] == [0.2, 0.6]
    assert SamplingSettings.from_record(json.loads(json.dumps(interval.to_dict()))) == interval
    assert s.but(guidance_interval=(0, 1)).guidance_interval is None  # every step: no interval
    with pytest.raises(ValueError, match=r"guidance_interval=\(0.6, 0.2\) must be \(low, high\)"):
        s.but(guidance_interval=(0.6, 0.2))
    # sampling with the settings is sampling with each of them: steps, CFG, and the named
    # sampler with its clipping (the scheduler object the settings make)
    model = tiny_model()
    a = sample(model, labels(), s, generator=make_generators([1, 2, 3]))
    b = sample(model, labels(), SamplingSettings(cfg_scale=3.0, num_steps=7), generator=make_generators([1, 2, 3]),
               scheduler=s.scheduler(model.config))
    assert torch.equal(a, b)


def test_karras_samplers_spend_their_steps_at_low_noise():
    """The -karras samplers are their plain solvers on Karras et al.'s noise levels: more of
    the 25 steps below t = 100 (where texture is made), the same first step, ending clean."""
    from ardiff.diffusion.schedule import sampling_scheduler

    cfg = tiny_model().config
    for plain in ("dpmsolver++", "sde-dpmsolver++"):
        steps = {}
        for name in (plain, plain + "-karras"):
            sched = sampling_scheduler(cfg, name)
            sched.set_timesteps(25)
            steps[name] = sched.timesteps.tolist()
            assert sched.config.algorithm_type == plain
        assert steps[plain][0] == steps[plain + "-karras"][0] == 999
        assert sum(t < 100 for t in steps[plain]) == 2  # 80, 40
        assert sum(t < 100 for t in steps[plain + "-karras"]) == 6  # 86, 47, 24, 10, 3, 0


def test_reports_name_the_solver_and_its_noise_levels():
    assert SamplingSettings(2.5, 25, "sde-dpmsolver++-karras", True).describe() == (
        "25 SDE-DPM-Solver++ steps per block on Karras noise levels, CFG 2.5, predicted clean samples clipped to "
        "[-1, 1]")
    assert SamplingSettings(6, 20, "dpmsolver++").describe() == "20 DPM-Solver++ (ODE) steps per block, CFG 6"
