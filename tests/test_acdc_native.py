"""ACDC with ardiff models: the pipeline, ACDiT as the ARM (correction inside the block loop),
an ardiff DiT as the SDEdit corrector."""

import pytest
import torch

from ardiff.acdc.base import ARM, Correction, Corrector, Memory
from ardiff.acdc.native import ACDiTARM, ClassPrompts, NativeCorrector
from ardiff.acdc.pipeline import ACDCPipeline, match_color, select_chunks
from ardiff.acdc.sdedit import sdedit_schedule
from ardiff.generate import SamplingSettings, sample
from helpers import tiny_model


def video_model(frames_per_block=1, **kw):
    return tiny_model(input_size=(4, 8, 8), in_channels=1, patch_size=2, block_layout="raster",
                      block_size=16 * frames_per_block, rope_axis_weights=(2, 3, 3), **kw)


class Negate(Corrector):
    """A deterministic stand-in corrector: returns -frames (and records what it saw)."""

    def __init__(self):
        self.seen = []

    def correct(self, frames, prompt, t_prime, generator, mask=None):
        self.seen.append((prompt, t_prime, torch.randint(0, 10**9, (1,), generator=generator).item()))
        return Correction(-frames, t_prime, [int(999 * t_prime)])


class ToyARM(ARM):
    """Chunk i = 0.5 * (mean of the context) + noise: later chunks visibly depend on the context."""

    def generate(self, prompts, on_chunk, generator):
        context = []
        for i, _ in enumerate(prompts):
            base = torch.stack(context).mean(0) * 0.5 if context else torch.zeros(1, 1, 4, 4)
            chunk = (base + 0.1 * torch.randn(1, 1, 4, 4, generator=generator)).clamp(-1, 1)
            replacement = on_chunk(i, chunk)
            context.append(chunk if replacement is None else replacement)
        return context

    def decode(self, chunk):
        return chunk

    def encode(self, frames):
        return frames.clone()


class Upper(Memory):
    def rewrite(self, prompts):
        return [p.upper() for p in prompts]


# ---------------------------------------------------------------------------
#                                  pipeline
# ---------------------------------------------------------------------------
def test_pipeline_corrects_selected_chunks_and_continues_from_them():
    corrector = Negate()
    pipe = ACDCPipeline(ToyARM(), corrector, Upper(), t_prime=0.4, progress=False)
    result = pipe.story(["a", "b", "c", "d"], seed=3, correct=2)  # ACDC #2
    assert [r.corrected for r in result.records] == [True, True, False, False]
    assert result.rewritten_prompts == ["A", "B", "C", "D"]
    assert [s[0] for s in corrector.seen] == ["A", "B"] and all(s[1] == 0.4 for s in corrector.seen)
    torch.testing.assert_close(result.corrected[:2], -result.uncorrected[:2])
    torch.testing.assert_close(result.corrected[2:], result.uncorrected[2:])
    # chunk 1 was made from the corrected chunk 0: its mean follows -chunk0
    baseline = ACDCPipeline(ToyARM(), None, progress=False).story(["a", "b", "c", "d"], seed=3)
    torch.testing.assert_close(baseline.uncorrected[0], result.uncorrected[0])
    assert not torch.allclose(baseline.uncorrected[1], result.uncorrected[1])
    assert all(not r.corrected for r in baseline.records)
    # deterministic, and per-chunk corrector seeds differ
    again = ACDCPipeline(ToyARM(), Negate(), Upper(), t_prime=0.4, progress=False).story(["a", "b", "c", "d"],
                                                                                         seed=3, correct=2)
    torch.testing.assert_close(again.corrected, result.corrected)
    assert result.records[0].seed != result.records[1].seed
    assert result.to_dict()["chunks"][0]["corrector_prompt"] == "A"


def test_select_chunks_and_bad_input():
    assert select_chunks(None, 3) == {0, 1, 2}
    assert select_chunks(1, 3) == {0} and select_chunks(5, 3) == {0, 1, 2}
    assert select_chunks([2], 3) == {2}
    with pytest.raises(ValueError, match=r"chunk indices \[3\] outside 0..2"):
        select_chunks([3], 3)
    with pytest.raises(ValueError, match="t_prime=0"):
        ACDCPipeline(ToyARM(), Negate(), t_prime=0)


def test_video_mode_corrects_the_first_chunk_only():
    result = ACDCPipeline(ToyARM(), Negate(), progress=False).video("a fox runs", num_chunks=3, seed=0)
    assert [r.corrected for r in result.records] == [True, False, False]
    assert result.frames().shape == (3, 1, 4, 4)


def test_match_color_pins_moments_and_respects_the_mask():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 3, 8, 8, generator=g) * 0.5
    drifted = (ref * 1.5 + 0.2).clamp(-1, 1)
    out = match_color(drifted, ref)
    torch.testing.assert_close(out.mean((0, 2, 3)), ref.mean((0, 2, 3)), atol=1e-5, rtol=0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    out = match_color(drifted, ref, mask)
    assert torch.equal(out[..., 4:], drifted[..., 4:])


# ---------------------------------------------------------------------------
#                     ACDiT as the ARM: correction inside the block loop
# ---------------------------------------------------------------------------
def test_acdit_arm_decode_encode_round_trip():
    arm = ACDiTARM(video_model(frames_per_block=2), prompt_to_cond=lambda p: int(p))
    block = torch.randn(32, 4, dtype=torch.float64)
    frames = arm.decode(block.clamp(-1, 1))
    assert frames.shape == (2, 1, 8, 8)
    torch.testing.assert_close(arm.encode(frames), block.clamp(-1, 1))
    with pytest.raises(ValueError, match="do not fit a chunk"):
        arm.encode(torch.zeros(1, 1, 8, 8))


def test_corrected_blocks_enter_the_kv_cache_exactly():
    """The joined mode equals an uncached reference run whose hook applies the same correction."""
    model = video_model()
    s = SamplingSettings(num_steps=3, cfg_scale=2.0)
    arm = ACDiTARM(model, prompt_to_cond=lambda p: int(p), settings=s)
    prompts = ["1", "2", "3", "4"]
    result = ACDCPipeline(arm, Negate(), progress=False).story(prompts, seed=5, correct=[0, 2])

    def reference_hook(event):
        if event.index in (0, 2):
            return arm.encode(-arm.decode(event.block[0]))[None]
        return None

    g = torch.Generator().manual_seed(5)
    ref = sample(model, torch.tensor([[1, 2, 3, 4]]), s, generator=[g],
                 use_cache=False, on_block_end=reference_hook)  # (1, 1, 4, 8, 8)
    torch.testing.assert_close(result.frames(), ref[0].transpose(0, 1).clamp(-1, 1), atol=1e-9, rtol=0)
    # and the corrections changed what came after them
    plain = ACDCPipeline(arm, None, progress=False).story(prompts, seed=5)
    torch.testing.assert_close(plain.uncorrected[0], result.uncorrected[0])
    assert not torch.allclose(plain.uncorrected[1], result.uncorrected[1])


def test_acdit_arm_samples_with_the_sampler_it_is_given():
    """An ARM given a sampler name and clipping samples exactly as ``sample`` does with them
    (the CLI passes a model's recorded settings this way), and not as the default sampler."""
    model = video_model()
    s = SamplingSettings(num_steps=3, cfg_scale=2.0)
    given = s.but(sampler="sde-dpmsolver++", clip_denoised=True)
    arm = ACDiTARM(model, prompt_to_cond=lambda p: int(p), settings=given)
    result = ACDCPipeline(arm, None, progress=False).story(["1", "2", "3", "4"], seed=5)
    ref = sample(model, torch.tensor([[1, 2, 3, 4]]), given, generator=[torch.Generator().manual_seed(5)])
    torch.testing.assert_close(result.frames(), ref[0].transpose(0, 1).clamp(-1, 1), atol=1e-9, rtol=0)
    default = ACDCPipeline(ACDiTARM(model, prompt_to_cond=lambda p: int(p), settings=s), None,
                           progress=False).story(["1", "2", "3", "4"], seed=5)
    assert not torch.allclose(default.frames(), result.frames())


def test_acdit_arm_errors():
    with pytest.raises(ValueError, match="video model whose blocks are whole frames"):
        ACDiTARM(tiny_model(), prompt_to_cond=int)
    arm = ACDiTARM(video_model(), prompt_to_cond=lambda p: int(p))
    with pytest.raises(ValueError, match="makes 4 chunks of 1 frames; got 2 prompts"):
        arm.generate(["1", "2"], lambda i, c: None, torch.Generator())


def test_class_prompts():
    names = ClassPrompts(["t-shirt", "shirt", "ankle boot", "bag"])
    assert names("A red T-shirt on a line") == 0
    assert names("his old shirts") == 1
    assert names("an Ankle Boot") == 2
    with pytest.raises(ValueError, match="names none of the model's classes: t-shirt, shirt"):
        names("a hat")
    assert ClassPrompts(["bag"], allow_none=True)("It turns.") is None


def test_prompts_without_a_class_get_the_null_class():
    model = video_model()
    arm = ACDiTARM(model, prompt_to_cond=ClassPrompts([str(k) for k in range(10)], allow_none=True))
    assert arm._conditions(["a 3", "it moves", "a 7", "on"]).tolist() == [[3, 10, 7, 10]]


# ---------------------------------------------------------------------------
#                              native corrector
# ---------------------------------------------------------------------------
def dit(block_size=16):
    return tiny_model(input_size=(8, 8), in_channels=1, patch_size=2, block_layout="raster", block_size=block_size)


@pytest.mark.parametrize("block_size", [16, 4])  # a DiT, and a 4-block ACDiT correcting block by block
def test_native_corrector_exact_t_prime_mask_and_determinism(block_size):
    corrector = NativeCorrector(dit(block_size=block_size), prompt_to_cond=int, num_steps=10, cfg_scale=1.5)
    frames = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    a = corrector.correct(frames, "3", 0.6, torch.Generator().manual_seed(0))
    b = corrector.correct(frames, "3", 0.6, torch.Generator().manual_seed(0))
    assert a.t_prime == 0.6 and a.timesteps[0] == 599 and len(a.timesteps) == 6
    assert a.timesteps == sdedit_schedule(0.6, 1000, 10).timesteps
    assert torch.equal(a.frames, b.frames) and a.frames.shape == frames.shape
    assert not torch.allclose(a.frames, frames)
    c = corrector.correct(frames, "4", 0.6, torch.Generator().manual_seed(0))
    assert not torch.allclose(a.frames, c.frames)  # the prompt (class) matters
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    m = corrector.correct(frames, "3", 0.6, torch.Generator().manual_seed(0), mask=mask)
    outside = ~mask.bool().expand_as(frames)
    assert torch.equal(m.frames[outside], frames[outside])
    assert not torch.allclose(m.frames[~outside], frames[~outside])


def test_native_corrector_video_clips():
    """A full-sequence video model (one block of 4 frames) corrects whole clips: one clip
    (F, C, H, W) as ACDC's video chunk, or a batch of clips with a generator each."""
    corrector = NativeCorrector(video_model(frames_per_block=4), prompt_to_cond=int, num_steps=10, cfg_scale=1.5)
    clips = torch.rand(2, 4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    one = corrector.correct(clips[1], "3", 0.5, torch.Generator().manual_seed(1))
    assert one.frames.shape == (4, 1, 8, 8) and not torch.allclose(one.frames, clips[1])
    both = corrector.correct(clips, ["2", "3"], 0.5, [torch.Generator().manual_seed(s) for s in (0, 1)])
    assert both.frames.shape == clips.shape
    torch.testing.assert_close(both.frames[1], one.frames)  # a clip does not depend on its batch
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., :4, :] = 1  # the top half of every frame
    m = corrector.correct(clips[0], "2", 0.6, torch.Generator().manual_seed(0), mask=mask)
    outside = ~mask.bool().expand_as(clips[0])
    assert torch.equal(m.frames[outside], clips[0][outside])
    assert not torch.allclose(m.frames[~outside], clips[0][~outside])
    with pytest.raises(ValueError, match="clips of 4 frames"):
        corrector.correct(clips[0, :3], "2", 0.5, torch.Generator())


def test_native_corrector_errors():
    corrector = NativeCorrector(dit(), prompt_to_cond=int)
    with pytest.raises(ValueError, match="do not match the model"):
        corrector.correct(torch.zeros(1, 3, 8, 8), "1", 0.5, torch.Generator())
