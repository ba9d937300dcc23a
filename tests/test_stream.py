"""`ardiff stream` and `ardiff.generate.stream`: a prompt schedule streamed block by block past
the trained length; frames handed out in order as each block is made; per-block conditions that
follow the schedule; re-caching at switches changes nothing; the MP4 holds every frame; every bad
input is one line with exit status 2."""

import dataclasses

import av
import pytest
import torch

import ardiff.generate.stream as stream_module
from ardiff import Pipeline
from ardiff.acdc.stream_correction import ChunkCorrection
from ardiff.cli import main
from ardiff.generate.stream import (
    ClassVocabulary,
    PromptSchedule,
    StreamSettings,
    stream,
)
from ardiff.models.checkpoint import save_pretrained
from helpers import tiny_model

# 8 frames of 32x32 in 4 blocks of 2 frames (as moving-fmnist), 10 Fashion-MNIST classes.
VIDEO = dict(input_size=(8, 32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=32,
             rope_axis_weights=(2, 1, 1), num_classes=10)
# A full-sequence corrector of 4-frame clips (one block), and an image corrector.
CLIP_CORRECTOR = dict(input_size=(4, 32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=64,
                      rope_axis_weights=(2, 1, 1), num_classes=10)
IMAGE_CORRECTOR = dict(input_size=(32, 32), in_channels=1, patch_size=8, block_layout="raster", block_size=16,
                       num_classes=10)
DATA = {"name": "moving_fashion_mnist"}
SAMPLING = {"num_steps": 2, "cfg_scale": 2.0}  # guided: the clean context is shared by both branches
# Past the trained 4 blocks: 10 blocks; switches at block 3 (it rides on the cache of blocks 0-1,
# which a re-cache rebuilds) and block 7 (the window slides there: the sampler rebuilds the cache).
SCHEDULE = "0:sneaker, 6:a red bag, 14:1"
FRAMES = 20


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream-models")
    extra = {"_sampling": SAMPLING, "_data": DATA}
    return {
        "video": str(save_pretrained(tiny_model(torch.float32, **VIDEO), root / "video", extra_config=extra)),
        "clip": str(save_pretrained(tiny_model(torch.float32, seed=1, **CLIP_CORRECTOR), root / "clip",
                                    extra_config=extra)),
        "image": str(save_pretrained(tiny_model(torch.float32, seed=2, **IMAGE_CORRECTOR), root / "image",
                                     extra_config={**extra, "_data": {"name": "fashion_mnist"}})),
        "unconditional": str(save_pretrained(tiny_model(torch.float32, **{**VIDEO, "num_classes": 0}),
                                             root / "unconditional", extra_config={"_sampling": {"num_steps": 2}})),
    }


@pytest.fixture(scope="module")
def pipe(models):
    return Pipeline.from_pretrained(models["video"], device="cpu")


def schedule_for(pipe, text=SCHEDULE, frames=FRAMES):
    return PromptSchedule.parse(text, ClassVocabulary.for_pipeline(pipe), frames, 2)


def test_schedule_grammar():
    vocabulary = ClassVocabulary.for_model(10, DATA)
    schedule = PromptSchedule.parse(" 0:Sneakers ,4:a red bag, 14:1", vocabulary, 20, 2)
    assert [(s.frame, s.class_id) for s in schedule.switches] == [(0, 7), (4, 8), (14, 1)]
    assert schedule.frame_classes(20) == [7] * 4 + [8] * 10 + [1] * 6
    assert schedule.block_classes(10, 2) == [7, 7, 8, 8, 8, 8, 8, 1, 1, 1]
    assert schedule.switch_blocks(2) == (2, 7)
    assert schedule.settling_frames(2) == (4, 5, 14, 15)
    assert schedule.describe(20, vocabulary) == "frames 0-3 sneaker (7), 4-13 bag (8), 14-19 trouser (1)"
    ids_only = ClassVocabulary.for_model(10, {"name": "image_folder"})
    assert PromptSchedule.parse("0:3", ids_only, 2, 1).frame_classes(2) == [3, 3]
    with pytest.raises(ValueError, match="give a class id"):
        PromptSchedule.parse("0:sneaker", ids_only, 2, 1)


def test_stream_past_the_trained_length_block_by_block(pipe, monkeypatch):
    conds = []
    original = Pipeline.__call__

    def spy(self, cond=None, *args, **kwargs):
        conds.append((cond.clone(), kwargs))
        return original(self, cond, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__call__", spy)
    handed = []
    settings = StreamSettings(num_frames=FRAMES, seed=3, num_clips=2, switch="continue")
    result = stream(pipe, schedule_for(pipe), settings, on_frames=lambda f, first: handed.append((first, f)))
    monkeypatch.undo()

    # Frames arrive one block (2 frames) at a time, in order, covering the stream once.
    assert [first for first, _ in handed] == list(range(0, FRAMES, 2))
    assert all(f.shape == (2, 2, 1, 32, 32) and f.dtype == torch.float32 for _, f in handed)
    assert result.frames.shape == (2, FRAMES, 1, 32, 32)
    assert torch.equal(torch.cat([f for _, f in handed], dim=1), result.frames)
    # One block loop, conditioned block by block as the schedule says, with the default window.
    (cond, kwargs), = conds
    assert cond.tolist() == [[7, 7, 7, 8, 8, 8, 8, 1, 1, 1]] * 2
    assert (kwargs["num_blocks"], kwargs["window"], kwargs["sink_blocks"]) == (10, 2, 1)
    assert (result.settings.window, result.settings.sink_blocks) == (2, 1)
    assert result.frame_classes == tuple([7] * 6 + [8] * 8 + [1] * 6)
    assert 0 < result.first_frame_seconds <= result.total_seconds and result.frames_per_second > 0
    # The stream is exactly the sampler's output for those conditions and seeds.
    expected = pipe(cond, seeds=[3, 4], num_blocks=10, window=2, sink_blocks=1)
    assert torch.equal(result.frames, expected.clamp(-1, 1).transpose(1, 2))


def test_recache_at_switches_is_bit_identical_to_keeping_the_cache(pipe):
    """ACDiT's clean context carries no condition, so rebuilding its K/V under the new prompt
    changes nothing: the frames are bit-identical."""
    schedule = schedule_for(pipe)
    keep = stream(pipe, schedule, StreamSettings(num_frames=FRAMES, num_clips=2, switch="continue"))
    recache = stream(pipe, schedule, StreamSettings(num_frames=FRAMES, num_clips=2, recache=True, switch="continue"))
    assert recache.recaches == 1  # before block 3; at block 7 the window slides (the sampler rebuilds anyway)
    assert keep.recaches == 0 and recache.recache_seconds > 0
    assert torch.equal(keep.frames, recache.frames)


def test_the_recache_check_is_not_vacuous(pipe, monkeypatch):
    """Rebuilding the cache from the context blocks in the wrong order changes the frames: the
    block after the switch does read the rebuilt cache."""
    rebuild = stream_module._Recache.__call__
    monkeypatch.setattr(stream_module._Recache, "__call__",
                        lambda self, event: rebuild(self, dataclasses.replace(event, blocks=event.blocks.flip(1))))
    schedule = schedule_for(pipe)
    keep = stream(pipe, schedule, StreamSettings(num_frames=FRAMES, switch="continue"))
    wrong = stream(pipe, schedule, StreamSettings(num_frames=FRAMES, recache=True, switch="continue"))
    assert wrong.recaches == 1 and not torch.equal(keep.frames, wrong.frames)


def test_correction_replaces_chunks_in_the_context_and_the_output(pipe, models):
    schedule = schedule_for(pipe, "0:sneaker, 8:bag", 16)
    plain = stream(pipe, schedule, StreamSettings(num_frames=16, switch="continue"))
    correction = ChunkCorrection.from_pretrained(models["clip"], t_prime=0.5, device="cpu")
    handed = []
    fixed = stream(pipe, schedule, StreamSettings(num_frames=16, switch="continue"), correction=correction,
                   on_frames=lambda f, first: handed.append((first, f.shape[1])))
    assert handed == [(0, 4), (4, 4), (8, 4), (12, 4)]  # a corrected chunk of 4 frames at a time
    # The first chunk is the plain stream's, corrected; what follows continues from the corrected frames.
    first = correction.correct(plain.frames[:, :4], 7, [0], 0, 0)
    torch.testing.assert_close(fixed.frames[:, :4], first.clamp(-1, 1), rtol=0, atol=1e-6)
    assert not torch.allclose(fixed.frames[:, 4:], plain.frames[:, 4:])
    assert fixed.correction_seconds > 0
    # An image corrector corrects every block's frames.
    per_frame = ChunkCorrection.from_pretrained(models["image"], t_prime=0.5, device="cpu")
    handed.clear()
    stream(pipe, schedule_for(pipe, "0:sneaker, 4:bag", 8), StreamSettings(num_frames=8, switch="continue"),
           correction=per_frame, on_frames=lambda f, first: handed.append((first, f.shape[1])))
    assert handed == [(0, 2), (2, 2), (4, 2), (6, 2)]


def test_cli_writes_every_frame_to_the_mp4_and_reports(models, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    argv = ["stream", models["video"], "--prompts", SCHEDULE, "--frames", str(FRAMES), "--out", str(out),
            "--num-clips", "2", "--recache", "--score", "--device", "cpu"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == FRAMES
    assert frames[0].width % 2 == 0 and frames[0].height > 64  # two captioned clips, scaled up
    for expected in ("first frames after", "frames/s", "CFG 2", "1 sink block + a window of 2 blocks",
                     "at a switch: context kept, re-cache on",
                     "frames 0-5 sneaker (7), 6-13 bag (8), 14-19 trouser (1)",
                     "0-15", "16-19", "(frames 6-7, 14-15 settling)", "overall", f"wrote {out}"):
        assert expected in text, (expected, text)


BAD = [
    ("--prompts 0:bag,48:sneaker,24:trouser --frames 144", "frame 24 (trouser) comes after frame 48"),
    ("--prompts 0:bag,48:sneaker --frames 40", "switch at frame 48 (sneaker) is past the last frame"),
    ("--prompts 0:bag,4:hat --frames 8", "'hat' names none of the model's classes"),
    ("--prompts 0:bag,4:12 --frames 8", "class 12 is out of range"),
    ("--prompts 0:bag --frames 0", "--frames: 0 must be a whole number >= 1"),
    ("--prompts 0:bag,5:sneaker --frames 8", "frame 5 is not on a block boundary"),
    ("--prompts 2:bag --frames 8", "must start at frame 0"),
    ("--prompts 0:bag,sneaker --frames 8", "'sneaker' is not FRAME:PROMPT"),
    ("--prompts 0:bag --frames 7", "--frames: 7 frames are not whole blocks"),
    ("--prompts 0:bag --frames 8 --window 3", "--window=3 + --sink-blocks=1 context blocks"),
    ("--prompts 0:bag --frames 8 --t-prime 0.5", "--t-prime T needs --correct"),
    ("--prompts 0:bag --frames 8 --out {out}/clip.gif", "must end in .mp4"),
    ("--prompts 0:bag,6:coat --frames 16 --correct {clip}", "switch prompts at multiples of 4"),
]


@pytest.mark.parametrize("command, fragment", BAD, ids=[c for c, _ in BAD])
def test_bad_input_is_one_line(models, tmp_path, capsys, command, fragment):
    out = tmp_path / "written"
    argv = ["stream", models["video"], *command.format(out=out, clip=models["clip"]).split()]
    if "--out" not in argv:
        argv += ["--out", str(out / "clip.mp4")]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("ardiff stream: error: "), err
    assert fragment in lines[0], lines[0]
    assert not out.exists()


def test_a_model_that_cannot_stream_is_one_line(models, tmp_path, capsys):
    for model, fragment in ((models["image"], "needs a video model"),
                            (models["unconditional"], "needs a class-conditional model")):
        code = main(["stream", model, "--prompts", "0:bag", "--frames", "8", "--out", str(tmp_path / "c.mp4")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err


def test_a_cut_starts_every_prompt_afresh(pipe):
    """switch='cut': each prompt's blocks are a fresh clip (no context from the prompt before), their
    noise continuing the same generators; the first prompt's blocks are those of a kept context."""
    from ardiff.utils.seeding import make_generators

    schedule = schedule_for(pipe)
    settings = StreamSettings(num_frames=FRAMES, seed=3)  # switch="cut" is the default
    cut = stream(pipe, schedule, settings)
    kept = stream(pipe, schedule, dataclasses.replace(settings, switch="continue"))
    gens = make_generators([3])
    pieces = []
    for start, end, label in ((0, 3, 7), (3, 7, 8), (7, 10, 1)):
        n = end - start
        window = dict(window=2, sink_blocks=1) if n > 4 else {}
        out = pipe(torch.full((1, n), label), generator=gens, num_blocks=n, **window)
        pieces.append(out.transpose(1, 2))
    assert torch.allclose(cut.frames, torch.cat(pieces, dim=1).clamp(-1, 1), atol=1e-6)
    assert torch.equal(cut.frames[:, :6], kept.frames[:, :6]) and not torch.equal(cut.frames, kept.frames)
    with pytest.raises(ValueError, match="switch='cut' keeps none"):
        StreamSettings(num_frames=FRAMES, switch="cut", recache=True).for_model(pipe.config)


# ---------------------------------------------------------------------------
#                     A live schedule (edited while the stream runs)
# ---------------------------------------------------------------------------
def _edit_after(live, vocabulary_pipe, first_frame_seen: int, text: str, applied: list):
    """An on_frames callback that replaces the schedule once the frames from ``first_frame_seen`` are in."""
    def on_frames(frames, first):
        if first == first_frame_seen:
            applied.append(live.update(schedule_for(vocabulary_pipe, text)))
    return on_frames


@pytest.mark.parametrize("switch", ["continue", "cut"])
def test_a_live_edit_applies_from_the_next_block_and_equals_the_schedule_as_made(pipe, switch):
    from ardiff.generate.stream import LiveSchedule

    settings = StreamSettings(num_frames=FRAMES, seed=3, switch=switch)
    live = LiveSchedule(schedule_for(pipe, "0:sneaker, 14:1"), FRAMES, 2)
    applied = []
    # After frames 4-5 (block 2) the user asks for a bag from frame 2 on: blocks 0-2 are made, so
    # the bag starts at frame 6; the switch to class 1 moves from 14 to 16.
    result = stream(pipe, live, settings, on_frames=_edit_after(live, pipe, 4, "0:sneaker, 2:bag, 16:1", applied))
    assert applied == [6]
    assert result.frame_classes == tuple([7] * 6 + [8] * 10 + [1] * 4)
    as_made = stream(pipe, schedule_for(pipe, "0:sneaker, 6:bag, 16:1"), settings)
    torch.testing.assert_close(result.frames, as_made.frames, rtol=0, atol=1e-5)
    unedited = stream(pipe, schedule_for(pipe, "0:sneaker, 14:1"), settings)
    assert torch.equal(result.frames[:, :6], unedited.frames[:, :6])
    assert not torch.allclose(result.frames[:, 6:], unedited.frames[:, 6:], atol=1e-3)


def test_a_stopped_live_stream_returns_the_frames_made(pipe):
    from ardiff.generate.stream import LiveSchedule

    live = LiveSchedule(schedule_for(pipe), FRAMES, 2)

    def on_frames(frames, first):
        if first == 4:
            live.stop()

    result = stream(pipe, live, StreamSettings(num_frames=FRAMES, switch="continue"), on_frames=on_frames)
    full = stream(pipe, schedule_for(pipe), StreamSettings(num_frames=FRAMES, switch="continue"))
    assert result.num_frames == 6 and result.frame_classes == (7,) * 6
    assert torch.equal(result.frames, full.frames[:, :6])
    with pytest.raises(ValueError, match="give each stream its own LiveSchedule"):
        stream(pipe, live, StreamSettings(num_frames=FRAMES, switch="continue"))
    with pytest.raises(ValueError, match="the live schedule is for 20 frames"):
        stream(pipe, LiveSchedule(schedule_for(pipe), FRAMES, 2), StreamSettings(num_frames=40, switch="continue"))


def test_a_live_update_is_checked_before_it_replaces_the_schedule(pipe, models):
    from ardiff.generate.stream import LiveSchedule

    live = LiveSchedule(schedule_for(pipe), FRAMES, 2)
    vocabulary = ClassVocabulary.for_pipeline(pipe)
    with pytest.raises(ValueError, match="past the last frame"):
        live.update(PromptSchedule.parse("0:bag, 30:1", vocabulary, 40, 2))
    assert live.schedule == schedule_for(pipe)
    # With a correction of 4-frame chunks, a switch inside a chunk is refused, mid-stream too.
    correction = ChunkCorrection.from_pretrained(models["clip"], t_prime=0.5, device="cpu")
    live = LiveSchedule(schedule_for(pipe, "0:sneaker", 16), 16, 2)
    errors = []

    def on_frames(frames, first):
        try:
            live.update(schedule_for(pipe, "0:sneaker, 10:bag", 16))
        except ValueError as e:
            errors.append(str(e))

    result = stream(pipe, live, StreamSettings(num_frames=16, switch="continue"), correction=correction,
                    on_frames=on_frames)
    assert len(errors) == 4 and "10" in errors[0] and result.frame_classes == (7,) * 16
