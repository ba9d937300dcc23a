"""SDEdit correctors on tiny random diffusers components, saved and loaded from a local directory."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

from ardiff.acdc.correctors import AnimateDiffCorrector, SDEditCorrector, ddim_step, sdedit_schedule  # noqa: E402

SIZE = 16  # frames are SIZE x SIZE; the tiny VAE has factor 2 -> 8 x 8 latents
MAX_TOKENS = 12
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 set_alpha_to_one=False, steps_offset=1, clip_sample=False)


# -- tiny components --------------------------------------------------------------------------
def tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer with one token per character (no merges), built from files."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_TOKENS}))
    return CLIPTokenizer.from_pretrained(directory)


def tiny_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=SIZE // 2,
                                in_channels=in_channels, out_channels=4, cross_attention_dim=32,
                                attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def randomize(module: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Motion modules are zero-initialised (identity); give them weights so frames interact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return module


def build_sd(directory: Path) -> Path:
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), norm_num_groups=16, layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=SIZE)
    tokenizer = tiny_tokenizer(directory / "_tokenizer_src")
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37,
                                                num_attention_heads=4, num_hidden_layers=2,
                                                max_position_embeddings=MAX_TOKENS, projection_dim=32,
                                                bos_token_id=0, eos_token_id=1, pad_token_id=1))
    vae.save_pretrained(directory / "vae")
    text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer.save_pretrained(directory / "tokenizer")
    tiny_unet().save_pretrained(directory / "unet")
    # Real SD ships a PNDM config; the corrector must turn it into DDIM.
    PNDMScheduler(skip_prk_steps=True, **{k: v for k, v in SCHEDULER.items() if k != "clip_sample"}
                  ).save_pretrained(directory / "scheduler")
    return directory


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def corrector(sd_dir) -> SDEditCorrector:
    return SDEditCorrector.from_pretrained(sd_dir, num_inference_steps=10)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    adapter = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
                            motion_num_attention_heads=4, motion_max_seq_length=32)
    directory = tmp_path_factory.mktemp("tiny-motion-adapter")
    randomize(adapter, seed=1).save_pretrained(directory)
    return directory


def frames_like(num: int = 2, channels: int = 3, seed: int = 0, size: int = SIZE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(num, channels, size, size, generator=g) * 2 - 1


def spy_unet(monkeypatch, unet) -> list[tuple[torch.Tensor, int]]:
    """Record (sample, timestep) of every UNet call."""
    calls: list[tuple[torch.Tensor, int]] = []
    forward = unet.forward

    def recording(sample, timestep, *args, **kwargs):
        calls.append((sample.detach().clone(), int(timestep)))
        return forward(sample, timestep, *args, **kwargs)

    monkeypatch.setattr(unet, "forward", recording)
    return calls


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- the schedule -----------------------------------------------------------------------------
@pytest.mark.parametrize("t_prime,steps,t_start,expected", [
    (0.5, 50, 499, [499 - 20 * k for k in range(25)]),
    (0.3, 10, 299, [299, 199, 99]),
    (0.55, 10, 549, [549, 457, 365, 274, 182, 90]),  # 5.5 steps rounds half up to 6
    (1.0, 4, 999, [999, 749, 499, 249]),
    (0.02, 50, 19, [19]),
])
def test_schedule_exact_t_prime(t_prime, steps, t_start, expected):
    schedule = sdedit_schedule(t_prime, 1000, steps)
    assert schedule.t_prime == t_prime  # t' * 1000 is an integer: reported exactly
    assert schedule.t_start == t_start == schedule.timesteps[0]
    assert schedule.timesteps == expected


def test_schedule_properties_and_trailing_equivalence():
    for steps in (1, 7, 25, 50, 1000):
        for t_prime in (0.013, 0.29, 0.4, 0.57, 0.6, 0.999, 1.0):
            if t_prime * steps < 1:
                continue
            s = sdedit_schedule(t_prime, 1000, steps)
            assert s.t_prime == round(t_prime * 1000) / 1000 == t_prime
            assert len(s.timesteps) == int(t_prime * steps + 0.5 + 1e-9)
            assert s.timesteps[0] == round(t_prime * 1000) - 1
            assert all(a > b >= 0 for a, b in zip(s.timesteps, s.timesteps[1:]))
    # At t' = 1 the schedule is diffusers' "trailing" spacing.
    trailing = DDIMScheduler(**SCHEDULER, timestep_spacing="trailing")
    trailing.set_timesteps(50)
    assert sdedit_schedule(1.0, 1000, 50).timesteps == trailing.timesteps.tolist()
    # A t' that is not a multiple of 1 / T is rounded, and the rounded value is reported.
    assert sdedit_schedule(0.4567, 1000, 50).t_prime == 0.457


def test_schedule_guard_names_both_values_and_the_fix():
    with pytest.raises(ValueError, match=r"t_prime=0\.01 .*num_inference_steps=50.*at least 0\.02.*at least 100"):
        sdedit_schedule(0.01, 1000, 50)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            sdedit_schedule(bad, 1000, 50)
    with pytest.raises(ValueError, match="num_inference_steps=2000"):
        sdedit_schedule(0.5, 1000, 2000)


@pytest.mark.parametrize("prediction_type,clip", [("epsilon", False), ("v_prediction", False), ("sample", True),
                                                   ("epsilon", True)])
def test_ddim_step_equals_diffusers_on_a_uniform_grid(prediction_type, clip):
    """Where DDIMScheduler.step infers the right previous timestep (stride T // S), ours agrees."""
    config = dict(SCHEDULER, clip_sample=clip, prediction_type=prediction_type)
    scheduler = DDIMScheduler(**config, timestep_spacing="trailing")
    scheduler.set_timesteps(10)
    timesteps = sdedit_schedule(1.0, 1000, 10).timesteps
    assert timesteps == scheduler.timesteps.tolist()
    g = gen(3)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    for k, t in enumerate(timesteps):
        output = torch.randn(2, 4, 8, 8, generator=g)
        prev = timesteps[k + 1] if k + 1 < len(timesteps) else None
        ours = ddim_step(scheduler, output, t, prev, sample)
        theirs = scheduler.step(output, t, sample, eta=0.0, use_clipped_model_output=True).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        sample = theirs


# -- loading ----------------------------------------------------------------------------------
def test_from_pretrained_needs_a_local_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SDEditCorrector.from_pretrained(tmp_path / "nope")
    (tmp_path / "vae").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks the subfolder.*text_encoder"):
        SDEditCorrector.from_pretrained(tmp_path)


def test_loaded_corrector_uses_ddim_with_the_model_betas(corrector, sd_dir):
    assert isinstance(corrector.scheduler, DDIMScheduler)
    assert corrector.scheduler.config.beta_schedule == "scaled_linear"
    assert corrector.vae_scale_factor == 2 and not corrector.inpainting_unet


# -- SDEdit -----------------------------------------------------------------------------------
def test_exact_t_prime_and_the_noise_added(corrector, monkeypatch):
    calls = spy_unet(monkeypatch, corrector.unet)
    frames = frames_like(2)
    result = corrector.correct(frames, "a red cat", 0.3, gen(7))
    assert result.t_prime == 0.3 and result.extra["t_start"] == 299
    assert result.timesteps == [299, 199, 99] == [t for _, t in calls]  # round(0.3 * 10) = 3 steps
    assert result.frames.shape == frames.shape and result.frames.abs().max() <= 1

    # The first UNet input (batch = [uncond x2, cond x2]) is add_noise(clean latents, noise, 299).
    vae = corrector.vae
    with torch.no_grad():
        clean = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor
    noise = randn_tensor(clean.shape, generator=gen(7))
    expected = corrector.scheduler.add_noise(clean, noise, torch.tensor([299]))
    first = calls[0][0]
    assert first.shape == (4, 4, 8, 8)
    torch.testing.assert_close(first[2:], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first[:2], expected, rtol=1e-5, atol=1e-5)


def test_guard_error_in_correct(corrector):
    with pytest.raises(ValueError, match=r"t_prime=0\.05 with num_inference_steps=10"):
        corrector.correct(frames_like(1), "x", 0.05, gen())


def test_deterministic_given_the_generator(corrector):
    frames = frames_like(2)
    a = corrector.correct(frames, "a dog", 0.5, gen(1)).frames
    b = corrector.correct(frames, "a dog", 0.5, gen(1)).frames
    c = corrector.correct(frames, "a dog", 0.5, gen(2)).frames
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_prompt_and_guidance_matter(corrector, sd_dir):
    frames = frames_like(1)
    a = corrector.correct(frames, "a dog", 0.6, gen(1)).frames
    b = corrector.correct(frames, "a boat at sea", 0.6, gen(1)).frames
    assert (a - b).abs().max() > 1e-4
    plain = SDEditCorrector(corrector.vae, corrector.text_encoder, corrector.tokenizer, corrector.unet,
                            corrector.scheduler, guidance_scale=1.0, num_inference_steps=10)
    assert (plain.correct(frames, "a dog", 0.6, gen(1)).frames - a).abs().max() > 1e-4


def test_batching_does_not_change_the_result(corrector):
    frames = frames_like(3)
    whole = corrector.correct(frames, "a dog", 0.4, gen(5)).frames
    one_by_one = SDEditCorrector(corrector.vae, corrector.text_encoder, corrector.tokenizer, corrector.unet,
                                 corrector.scheduler, num_inference_steps=10, frames_per_pass=1)
    torch.testing.assert_close(one_by_one.correct(frames, "a dog", 0.4, gen(5)).frames, whole,
                               rtol=1e-4, atol=1e-4)


def test_mask_keeps_pixels_outside_exactly(corrector, monkeypatch):
    frames = frames_like(2)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 3:11, 5:13] = 1  # not aligned to the latent grid
    unmasked = corrector.correct(frames, "a dog", 0.6, gen(4)).frames
    calls = spy_unet(monkeypatch, corrector.unet)
    out = corrector.correct(frames, "a dog", 0.6, gen(4), mask=mask)
    keep = ~mask.bool().expand_as(frames)
    assert torch.equal(out.frames[keep], frames[keep])  # bit for bit
    assert not torch.allclose(out.frames[~keep], frames[~keep])
    assert out.extra["masked"]
    # Blended latents: at the second step the latents outside the (max-pooled) mask are the
    # original ones noised to that timestep with the same noise.
    vae = corrector.vae
    with torch.no_grad():
        clean = vae.encode(frames).latent_dist.mode() * vae.config.scaling_factor
    noise = randn_tensor(clean.shape, generator=gen(4))
    t1 = out.timesteps[1]
    known = corrector.scheduler.add_noise(clean, noise, torch.tensor([t1]))
    free = torch.nn.functional.max_pool2d(mask, 2).bool().expand_as(clean)
    second = calls[1][0][2:]
    torch.testing.assert_close(second[~free], known[~free], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(second[free], known[free], atol=1e-3)
    assert not torch.equal(out.frames, unmasked)


def test_mask_per_frame_and_validation(corrector):
    frames = frames_like(2)
    mask = torch.zeros(2, 1, SIZE, SIZE, dtype=torch.bool)
    mask[1] = True  # frame 0 is kept entirely, frame 1 may change
    out = corrector.correct(frames, "a dog", 0.5, gen(0), mask=mask).frames
    assert torch.equal(out[0], frames[0]) and not torch.equal(out[1], frames[1])
    with pytest.raises(ValueError, match="mask shape"):
        corrector.correct(frames, "a dog", 0.5, gen(0), mask=torch.ones(3, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="mask values"):
        corrector.correct(frames, "a dog", 0.5, gen(0), mask=torch.full((1, 1, SIZE, SIZE), 0.5))


def test_grey_frames_and_size_checks(corrector):
    grey = frames_like(2, channels=1)
    out = corrector.correct(grey, "a dog", 0.5, gen(0))
    assert out.frames.shape == grey.shape and out.frames.dtype == grey.dtype
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., :8, :] = 1
    kept = corrector.correct(grey, "a dog", 0.5, gen(0), mask=mask).frames
    assert torch.equal(kept[..., 8:, :], grey[..., 8:, :])
    with pytest.raises(ValueError, match="not divisible by the VAE factor 2"):
        corrector.correct(frames_like(1, size=15), "a dog", 0.5, gen(0))
    with pytest.raises(ValueError, match="4 channels"):
        corrector.correct(frames_like(1, channels=4), "a dog", 0.5, gen(0))


def test_inpainting_unet_with_nine_channels(corrector):
    torch.manual_seed(2)
    inpaint = SDEditCorrector(corrector.vae, corrector.text_encoder, corrector.tokenizer, tiny_unet(in_channels=9),
                              corrector.scheduler, num_inference_steps=10)
    assert inpaint.inpainting_unet
    frames = frames_like(1)
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 4:12, 4:12] = 1
    out = inpaint.correct(frames, "a dog", 0.5, gen(0), mask=mask)
    keep = ~mask.bool().expand_as(frames)
    assert torch.equal(out.frames[keep], frames[keep]) and out.extra["inpainting_unet"]
    assert inpaint.correct(frames, "a dog", 0.5, gen(0)).frames.shape == frames.shape


def test_diffusers_img2img_truncates_the_schedule(corrector, monkeypatch):
    """strength 0.55 with 10 steps: diffusers keeps int(10 * 0.55) = 5 steps of its leading grid
    [901, 801, ..., 1] and starts at 401 (an effective t' of 0.402); we start at 549 = round(0.55 *
    1000) - 1 and take round(5.5) = 6 steps."""
    pipe = StableDiffusionImg2ImgPipeline(vae=corrector.vae, text_encoder=corrector.text_encoder,
                                          tokenizer=corrector.tokenizer, unet=corrector.unet,
                                          scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    frames = frames_like(1)
    calls = spy_unet(monkeypatch, corrector.unet)
    pipe(prompt="a dog", image=(frames + 1) / 2, strength=0.55, num_inference_steps=10, guidance_scale=7.5,
         generator=gen(0), output_type="pt")
    theirs = [t for _, t in calls]
    calls.clear()
    ours = corrector.correct(frames, "a dog", 0.55, gen(0))
    assert theirs == [401, 301, 201, 101, 1]
    assert ours.timesteps == [t for _, t in calls] == [549, 457, 365, 274, 182, 90]
    assert ours.t_prime == 0.55


# -- AnimateDiff ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video_corrector(sd_dir, adapter_dir) -> AnimateDiffCorrector:
    return AnimateDiffCorrector.from_pretrained(sd_dir, motion_adapter=adapter_dir, num_inference_steps=4)


def test_animatediff_sixteen_frames(video_corrector, monkeypatch):
    assert isinstance(video_corrector.unet, UNetMotionModel)
    calls = spy_unet(monkeypatch, video_corrector.unet)
    frames = frames_like(16)
    out = video_corrector.correct(frames, "a dog running", 0.5, gen(0))
    assert out.frames.shape == frames.shape
    assert out.t_prime == 0.5 and out.timesteps == [499, 249] == [t for _, t in calls]
    assert calls[0][0].shape == (2, 4, 16, 8, 8)  # (guidance, C, F, h, w): one 16-frame video
    again = video_corrector.correct(frames, "a dog running", 0.5, gen(0)).frames
    assert torch.equal(out.frames, again)


def test_animatediff_frames_interact_and_chunks(video_corrector, monkeypatch):
    frames = frames_like(6)
    base = video_corrector.correct(frames, "a dog", 0.5, gen(0)).frames
    changed = frames.clone()
    changed[5] = -changed[5]
    other = video_corrector.correct(changed, "a dog", 0.5, gen(0)).frames
    assert (base[0] - other[0]).abs().max() > 1e-6  # the motion modules mix the frames

    chunked = AnimateDiffCorrector(video_corrector.vae, video_corrector.text_encoder, video_corrector.tokenizer,
                                   video_corrector.unet, video_corrector.scheduler, num_inference_steps=4,
                                   chunk_frames=4)
    calls = spy_unet(monkeypatch, video_corrector.unet)
    grey = frames_like(6, channels=1)
    out = chunked.correct(grey, "a dog", 0.5, gen(0))
    assert out.frames.shape == grey.shape
    assert [c[0].shape[2] for c in calls] == [4, 4, 2, 2]  # chunks of 4 then 2 frames, 2 steps each


def test_animatediff_loading_routes_and_errors(sd_dir, adapter_dir, video_corrector, tmp_path):
    with pytest.raises(ValueError, match="pass motion_adapter"):
        AnimateDiffCorrector.from_pretrained(sd_dir)
    with pytest.raises(FileNotFoundError, match="motion adapter directory"):
        AnimateDiffCorrector.from_pretrained(sd_dir, motion_adapter=tmp_path)
    with pytest.raises(TypeError, match="needs a UNetMotionModel"):
        AnimateDiffCorrector(video_corrector.vae, video_corrector.text_encoder, video_corrector.tokenizer,
                             tiny_unet(), video_corrector.scheduler)
    # A saved AnimateDiff pipeline directory: unet/ holds the UNetMotionModel itself.
    for name in ("vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / name).symlink_to(sd_dir / name)
    video_corrector.unet.save_pretrained(tmp_path / "unet")
    loaded = AnimateDiffCorrector.from_pretrained(tmp_path, num_inference_steps=4)
    frames = frames_like(4)
    torch.testing.assert_close(loaded.correct(frames, "a dog", 0.5, gen(0)).frames,
                               video_corrector.correct(frames, "a dog", 0.5, gen(0)).frames)
