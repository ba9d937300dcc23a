"""Rolling KV window: generation past the trained length with re-based positions."""

import pytest
import torch

from ardiff import SamplingSettings, make_generators, sample
from ardiff.generate import context_schedule
from helpers import tiny_model

VIDEO = dict(input_size=(4, 4, 4), patch_size=2, block_layout="raster", block_size=4,
             rope_axis_weights=(2, 1, 1))  # 4 frames of 2x2 tokens, one frame per block: T = 4


class PositionRecorder:
    """Wraps a model and records every block position its forward passes use."""

    def __init__(self, model):
        self._model, self.positions = model, set()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def run(self, **kw):
        self.positions.update(kw.get("noisy_blocks") or ())
        clean = kw.get("clean")
        if clean is not None:
            start = kw.get("clean_first_block", 0)
            self.positions.update(range(start, start + clean.shape[1]))
        return self._model.run(**kw)


def test_schedule():
    assert context_schedule(4, 4) == [(), (0,), (0, 1), (0, 1, 2)]
    assert context_schedule(7, 4, window=2, sink_blocks=1)[3:] == [(0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5)]
    assert context_schedule(6, 4, window=3)[4:] == [(1, 2, 3), (2, 3, 4)]


@pytest.mark.parametrize("window,sinks", [(3, 0), (2, 1)])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_window_within_trained_length_is_exactly_the_normal_path(window, sinks, cfg_scale):
    model = tiny_model(torch.float32, **VIDEO)
    labels = torch.tensor([1, 4])
    s = SamplingSettings(num_steps=4, cfg_scale=cfg_scale)
    plain = sample(model, labels, s, generator=make_generators([0, 1]))
    rolled = sample(model, labels, s, generator=make_generators([0, 1]), num_blocks=4, window=window,
                    sink_blocks=sinks)
    assert torch.equal(plain, rolled)


@pytest.mark.parametrize("window,sinks", [(3, 0), (2, 1), (1, 1)])
def test_past_trained_length_cached_equals_uncached_and_positions_stay_trained(window, sinks):
    model = tiny_model(torch.float64, **VIDEO)
    labels = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 1, 2, 2, 3, 3, 4]])
    s = SamplingSettings(num_steps=3, cfg_scale=2.0)
    runs = {}
    for use_cache in (True, False):
        recorder = PositionRecorder(model)
        runs[use_cache] = sample(recorder, labels, s, generator=make_generators([5, 6]),
                                 num_blocks=9, window=window, sink_blocks=sinks, use_cache=use_cache)
        assert max(recorder.positions) <= 3  # only trained positions 0..T-1
    assert runs[True].shape == (2, 3, 9, 4, 4)  # 9 frames from a 4-frame model
    torch.testing.assert_close(runs[True], runs[False], rtol=0, atol=1e-9)
    # Until the window first drops a block, frames are those of plain 4-frame sampling.
    short = sample(model, labels[:, :4], s, generator=make_generators([5, 6]))
    kept = sinks + window + 1
    torch.testing.assert_close(runs[True][:, :, :kept], short[:, :, :kept], rtol=0, atol=1e-9)


def test_dropped_blocks_do_not_matter():
    """Window 1: block 4 sees block 3 alone. Editing block 2 and restoring block 3 leaves
    block 4 bit-identical; a window of 3 (which keeps block 2) does not."""
    model = tiny_model(torch.float64, **VIDEO)
    labels = torch.tensor([[2] * 6])

    def run(window, reference=None):
        def hook(event):
            if reference is not None and event.index == 2:
                return event.block + 1.0
            if reference is not None and event.index == 3:
                return reference[:, 3]
        return sample(model, labels, SamplingSettings(cfg_scale=1.0, num_steps=2), generator=make_generators([3]),
                      num_blocks=6, window=window, on_block_end=hook, output="blocks")

    for window, same in ((1, True), (3, False)):
        plain = run(window)
        edited = run(window, reference=plain)
        assert torch.equal(plain[:, 3], edited[:, 3])
        assert torch.equal(plain[:, 4], edited[:, 4]) is same


@pytest.mark.parametrize("autoguided", [False, True])
@pytest.mark.parametrize("split", [1, 3, 5])
def test_prefix_continues_a_run_exactly(split, autoguided):
    """Blocks 0..K-1 given as a prefix, with the generators that made them: the rest equals the
    one-call run (within and past the trained length, cache rebuilt or riding; the
    autoguidance model's own cache too)."""
    model = tiny_model(torch.float64, **VIDEO)
    labels = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 1, 2, 2, 3]])
    s = SamplingSettings(num_steps=3, cfg_scale=2.0)
    kw = dict(num_blocks=7, window=2, sink_blocks=1, output="blocks")
    if autoguided:
        kw.update(guide_model=tiny_model(torch.float64, seed=1, **VIDEO), guide_scale=1.5)
    whole = sample(model, labels, s, generator=make_generators([5, 6]), **kw)
    generators = make_generators([5, 6])
    head = sample(model, labels[:, :split], s, generator=generators, **{**kw, "num_blocks": split})
    rest = sample(model, labels, s, generator=generators, prefix=head, **kw)
    assert torch.equal(rest[:, :split], head)
    torch.testing.assert_close(rest, whole, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="prefix must be"):
        sample(model, labels, s, generator=make_generators([5, 6]), prefix=head[:1], **kw)


def test_errors_name_the_fix():
    model = tiny_model(torch.float32, **VIDEO)
    s = SamplingSettings(cfg_scale=1.0, num_steps=2)
    with pytest.raises(ValueError, match="window=W"):
        sample(model, torch.tensor([[1] * 6]), s, num_blocks=6)
    with pytest.raises(ValueError, match="sink_blocks \\+ window <= 3"):
        sample(model, torch.tensor([[1] * 6]), s, num_blocks=6, window=3, sink_blocks=1)
    image = tiny_model(torch.float32)
    with pytest.raises(ValueError, match="whole frames"):
        sample(image, torch.tensor([1]), s, num_blocks=6, window=2)
