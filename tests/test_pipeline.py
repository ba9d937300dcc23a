"""`Pipeline`: the one way anything samples. Every command samples the same tensor for the same
model, recorded settings and seed; overrides and errors are checked once; a seed's noise does
not depend on the device; save_pretrained round-trips the record."""

import pytest
import torch

from ardiff import Pipeline, SamplingSettings, make_generators
from ardiff.cli import main
from ardiff.generate import sample
from ardiff.generate.sampler import draw_noise
from ardiff.models.checkpoint import save_pretrained
from helpers import needs_fmnist, tiny_model

VIDEO = dict(input_size=(4, 32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=16,
             rope_axis_weights=(2, 1, 1), num_classes=10)
IMAGE = dict(input_size=(32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=4, num_classes=10)
# Every recorded setting away from its default, history guidance included.
RECORD = {"cfg_scale": 2.0, "num_steps": 3, "sampler": "sde-dpmsolver++", "clip_denoised": True,
          "history_scale": 1.5, "guidance_interval": [0.0, 0.7]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    video = save_pretrained(tiny_model(dtype=torch.float32, **VIDEO), root / "video",
                            extra_config={"_sampling": RECORD, "_data": {"name": "moving_fashion_mnist", "speed": 1.0}})
    image = save_pretrained(tiny_model(dtype=torch.float32, seed=1, **IMAGE), root / "image",
                            extra_config={"_sampling": {**RECORD, "history_scale": 1.0}})
    return {"video": video, "image": image}


class Spy:
    """Records every sample the pipeline returns, by seed, with the settings it ran."""

    def __init__(self, monkeypatch):
        self.by_path: dict[str, dict[int, torch.Tensor]] = {}
        self.settings: dict[str, list[SamplingSettings]] = {}
        self.path = None
        original = Pipeline.__call__
        spy = self

        def call(pipe, cond=None, seeds=None, **kwargs):
            out = original(pipe, cond, seeds, **kwargs)
            if spy.path is not None and seeds is not None and kwargs.get("use_cache", True):
                first = seeds if isinstance(seeds, int) else None
                seed_list = list(range(first, first + len(out))) if first is not None else list(seeds)
                spy.settings.setdefault(spy.path, []).append(pipe.settings)
                for s, x in zip(seed_list, out):
                    spy.by_path.setdefault(spy.path, {})[int(s)] = x
            return out

        monkeypatch.setattr(Pipeline, "__call__", call)


@needs_fmnist
def test_every_command_samples_the_same_tensor(models, tmp_path, monkeypatch):
    """sample, eval (built-in and --reference), sample-npz and the demo draw sample i with seed
    SEED + i and label i % K through the pipeline: for one model, its recorded settings (history
    guidance included) and one seed, they sample the same tensor. ACDC's ACDiT ARM runs the
    same recorded settings."""
    spy = Spy(monkeypatch)
    video, image, out = str(models["video"]), str(models["image"]), tmp_path
    seed = 10_007  # the demo scores seeds 10_000 + --seed
    runs = {
        "sample": ["sample", video, "--num", "4", "--seed", str(seed), "--out", f"{out}/a.gif"],
        "eval": ["eval", video, "--num", "4", "--seed", str(seed), "--no-floor", "--out", f"{out}/m.json"],
        "eval-reference": ["eval", video, "--reference", "moving-fmnist-test", "--num", "4", "--seed", str(seed),
                           "--out", f"{out}/r.json"],
        "sample-npz": ["sample-npz", video, "--num", "4", "--seed", str(seed), "--out", f"{out}/s.npz",
                       "--no-progress"],
        "demo": ["demo", "--image-model", image, "--video-model", video, "--num-eval", "10",
                 "--num-eval-videos", "4", "--seed", "7", "--out", f"{out}/demo"],
    }
    for name, argv in runs.items():
        spy.path = name
        assert main(argv) == 0, name
    recorded = SamplingSettings.recorded(video)
    assert recorded.history_scale == 1.5
    reference = spy.by_path["sample"]
    assert sorted(reference) == list(range(seed, seed + 4))
    for name in runs:
        assert all(s == recorded for s in spy.settings[name] if s.num_steps == 3 and s.history_scale != 1.0), name
        got = spy.by_path[name]
        for s in range(seed, seed + 4):
            assert torch.equal(got[s], reference[s]), f"{name}: seed {s} differs from ardiff sample"
    assert any(s == recorded for s in spy.settings["demo"])  # the demo's video part ran the recorded settings

    # The same tensor from the library: sample() with the recorded settings and per-sample seeds.
    pipe = Pipeline.from_pretrained(video, device="cpu")
    direct = sample(pipe.model, torch.arange(4), recorded, generator=make_generators(range(seed, seed + 4)))
    assert torch.equal(direct.float(), torch.stack([reference[s] for s in range(seed, seed + 4)]))

    # ACDC: the ACDiT ARM samples with the ARM's recorded settings too.
    seen = []
    import ardiff.acdc.native as native

    original_sample = native.sample

    def spy_sample(model, cond, settings, **kwargs):
        seen.append(settings)
        return original_sample(model, cond, settings, **kwargs)

    monkeypatch.setattr(native, "sample", spy_sample)
    spy.path = None
    assert main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", "none", "--num-frames", "4",
                 "--corrected-frames", "4", "--out", f"{out}/acdc"]) == 0
    assert seen and all(s == recorded for s in seen)


def test_overrides_defaults_and_errors(models, tmp_path):
    video = models["video"]
    pipe = Pipeline.from_pretrained(video, device="cpu", num_steps=5, cfg_scale=None)
    assert pipe.settings == SamplingSettings.from_record(RECORD).but(num_steps=5)
    assert "history guidance 1.5" in pipe.describe()
    with pytest.raises(TypeError, match="unknown sampling settings .'steps'."):
        Pipeline.from_pretrained(video, device="cpu", steps=5)
    image = models["image"]
    with pytest.raises(ValueError, match=r"config.json: history guidance \(history_scale\) needs a video model"):
        Pipeline.from_pretrained(image, device="cpu", history_scale=2.0)
    with pytest.raises(ValueError, match="guide_scale=2 needs a guide model"):
        Pipeline.from_pretrained(image, device="cpu", guide_scale=2.0)
    with pytest.raises(ValueError, match="needs guide_scale > 1"):
        Pipeline.from_pretrained(image, device="cpu", guide=image)
    unconditional = save_pretrained(tiny_model(dtype=torch.float32, **{**IMAGE, "num_classes": 0}), tmp_path / "u")
    pipe = Pipeline.from_pretrained(unconditional, device="cpu", num_steps=2)
    assert pipe.settings.cfg_scale == 1.0  # nothing to guide
    assert pipe(seeds=[3, 4]).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="unconditional: use cfg_scale=1"):
        Pipeline.from_pretrained(unconditional, device="cpu", cfg_scale=2.0)
    pipe = Pipeline.from_pretrained(image, device="cpu", num_steps=2)
    with pytest.raises(ValueError, match=r"class ids \[10\] out of range"):
        pipe([1, 10])
    with pytest.raises(ValueError, match="got 3 seeds for 2 samples"):
        pipe([1, 2], seeds=[1, 2, 3])


def test_seeds_batches_and_save_pretrained(models, tmp_path):
    pipe = Pipeline.from_pretrained(models["image"], device="cpu", num_steps=2)
    labels = torch.tensor([3, 1, 4, 1, 5])
    whole = pipe(labels, seeds=range(20, 25))
    assert whole.dtype == torch.float32 and whole.device.type == "cpu" and whole.shape == (5, 1, 32, 32)
    assert whole.min() >= -1 and whole.max() <= 1  # the recorded clipping
    in_pieces = pipe(labels, seeds=20, batch_size=2)  # an int: the first seed
    torch.testing.assert_close(in_pieces, whole, atol=1e-4, rtol=0)  # batch round-off only
    assert torch.equal(pipe(labels[3:], seeds=[23, 24]), pipe(labels[3:], seeds=[23, 24]))
    saved = pipe.save_pretrained(tmp_path / "copy")
    again = Pipeline.from_pretrained(saved, device="cpu")
    assert again.settings == pipe.settings and again.settings.num_steps == 2
    assert torch.equal(again(labels, seeds=range(20, 25)), whole)


def test_noise_is_drawn_on_the_cpu_whatever_the_device():
    """A seed means the same noise on every device: CPU generators draw on the CPU and the
    noise is moved (a CUDA or meta device would otherwise draw its own stream)."""
    generators = make_generators([5, 6])
    assert all(g.device.type == "cpu" for g in generators)
    cpu = draw_noise((2, 3, 4), make_generators([5, 6]), "cpu", torch.float32)
    expected = torch.stack([torch.randn((3, 4), generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    assert torch.equal(cpu, expected)
    meta = draw_noise((2, 3, 4), make_generators([5, 6]), "meta", torch.float32)
    assert meta.device.type == "meta" and meta.shape == (2, 3, 4)  # drawn on the CPU, then moved
    if torch.cuda.is_available():
        assert torch.equal(draw_noise((2, 3, 4), make_generators([5, 6]), "cuda", torch.float32).cpu(), cpu)
