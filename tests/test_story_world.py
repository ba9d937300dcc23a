"""The story world: grammar, rendering, text encoder, reader, datasets, rule memory on its stories."""

import pytest
import torch

from ardiff.worlds.reader import AttributeReader, evaluate_reader, state_labels
from ardiff.worlds.story import (
    BACKGROUNDS,
    ITEM_COLOURS,
    KIND_NAMES,
    SIZES,
    FrameState,
    StoryWorld,
    item_offset,
    read_story_states,
    render_frame,
)
from ardiff.worlds.text import ATTRIBUTES, StoryTextEncoder, build_vocab, sentence_attributes
from helpers import needs_fmnist


@pytest.fixture(scope="module")
def world():
    return StoryWorld("test")


@needs_fmnist
def test_stories_are_deterministic_and_follow_their_actions(world):
    a, b = world.story(3), StoryWorld("test").story(3)
    assert a.sentences == b.sentences and a.item_index == b.item_index
    assert world.story(4).sentences != a.sentences
    for i in range(50):
        story = world.story(i)
        assert len(story) == 6
        for prev, state, action in zip(story.states, story.states[1:], story.actions[1:]):
            assert action in prev.allowed_actions() and state == prev.apply(action)
            assert 0 <= state.row <= 2 and 0 <= state.col <= 2


@needs_fmnist
def test_first_sentence_says_everything_later_ones_do_not(world):
    for i in range(100):
        story = world.story(i)
        s0 = story.states[0]
        intro = sentence_attributes(story.sentences[0])
        assert intro["kind"] == KIND_NAMES.index(s0.kind) and intro["colour"] == list(ITEM_COLOURS).index(s0.colour)
        assert intro["background"] == list(BACKGROUNDS).index(s0.background)
        assert story.name in story.sentences[0]
        for sentence, action in zip(story.sentences[1:], story.actions[1:]):
            said = sentence_attributes(sentence)
            # a partial reference: never both kind and colour, never the background
            assert said["kind"] == len(KIND_NAMES) or said["colour"] == len(ITEM_COLOURS)
            assert said["background"] == len(BACKGROUNDS)
            assert ATTRIBUTES["action"][said["action"]] == action


@needs_fmnist
def test_longer_stories_and_train_split_items():
    long = StoryWorld("test", length=12).story(0)
    assert len(long) == 12 and len(set(long.states)) > 1
    train = StoryWorld("train").story(0)
    assert train.split == "train"


@needs_fmnist
def test_render_is_exact_outside_the_item(world):
    story = world.story(1)
    item = world.images[story.item_index]
    for state in (FrameState("bag", "yellow", "teal", "small", 0, 2), FrameState("boot", "red", "navy", "large", 2, 1)):
        frame = render_frame(item, state)
        side, r, c = SIZES[state.size], item_offset(state.size, state.row), item_offset(state.size, state.col)
        bg = torch.tensor(BACKGROUNDS[state.background]) / 255.0 * 2 - 1
        outside = torch.ones(32, 32, dtype=torch.bool)
        outside[r:r + side, c:c + side] = False
        torch.testing.assert_close(frame[:, outside], bg[:, None].expand(3, int(outside.sum())))
        # Inside, every pixel lies between the background and the item colour (alpha blending).
        inside = frame[:, r:r + side, c:c + side].flatten(1)
        fg = torch.tensor(ITEM_COLOURS[state.colour]) / 255.0 * 2 - 1
        d = (fg - bg)[:, None]
        alpha = ((inside - bg[:, None]) * d).sum(0) / (d * d).sum()
        torch.testing.assert_close(inside, bg[:, None] + alpha * d, atol=1e-5, rtol=0)
        assert alpha.min() >= -1e-6 and alpha.max() <= 1 + 1e-6 and alpha.max() > 0.5


def test_text_encoder_round_trip_and_cache(tmp_path):
    torch.manual_seed(0)
    enc = StoryTextEncoder(build_vocab(), dim=16, depth=1, heads=2).eval()
    texts = ["It hops to the left.", "Nova, the small yellow sneaker, rests at the top of a teal floor.", "zzz qqq"]
    direct = enc(texts)
    torch.testing.assert_close(enc.encode(texts), direct)
    torch.testing.assert_close(enc.encode(texts[0]), direct[0])
    enc.save_pretrained(tmp_path / "enc")
    again = StoryTextEncoder.from_pretrained(tmp_path / "enc")
    torch.testing.assert_close(again(texts), direct)
    assert enc.token_ids(["zzz"])[0, 0] == StoryTextEncoder.UNK


def test_shipped_text_encoder_tells_sentences_apart():
    enc = StoryTextEncoder.from_pretrained()
    v = enc.encode(["It hops to the left.", "It hops to the right.", "a red bag on a navy floor.",
                    "a red bag on a teal floor."])
    assert (v[0] - v[1]).norm() > 0.1 * v[0].norm() and (v[2] - v[3]).norm() > 0.1 * v[2].norm()
    logits = enc.logits(v)
    assert ATTRIBUTES["action"][logits["action"][0].argmax()] == "left"
    assert ATTRIBUTES["background"][logits["background"][3].argmax()] == "teal"
    assert logits["kind"][0].argmax() == len(KIND_NAMES)  # "It" says nothing about the kind


def test_reader_shapes_errors_and_round_trip(tmp_path):
    reader = AttributeReader(width=8, feature_dim=16)
    logits, feats = reader(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 16) and logits["kind"].shape == (2, len(KIND_NAMES))
    with pytest.raises(ValueError, match="3, 32, 32"):
        reader(torch.zeros(2, 1, 32, 32))
    reader.save_pretrained(tmp_path / "r", metrics={"kind": 0.5})
    again = AttributeReader.from_pretrained(tmp_path / "r")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(again(x)[1], reader.eval()(x)[1])
    labels = state_labels([FrameState("bag", "red", "navy", "large", 2, 0)])
    assert labels["kind"].item() == KIND_NAMES.index("bag") and labels["row"].item() == 2


@needs_fmnist
def test_shipped_reader_reads_held_out_renders():
    # Measured on 2000 renders at training time: kind 94.6%, colours 100% (docs/story_world.md).
    accuracy = evaluate_reader(AttributeReader.from_pretrained(), StoryWorld("test", seed=5), count=400)
    assert accuracy["kind"] >= 0.92, accuracy
    for attribute in ("colour", "background", "size", "row", "col"):
        assert accuracy[attribute] >= 0.98, accuracy


@needs_fmnist
def test_datasets_give_frames_and_sentence_vectors():
    from ardiff.worlds.datasets import StoryDataset, StoryFrameDataset

    stories = StoryDataset("train", length=6, num_stories=10)
    x, c = stories[3]
    assert x.shape == (3, 6, 32, 32) and c.shape == (6, 64) and c.dtype == torch.float32
    story = stories.world.story(3)
    torch.testing.assert_close(c, stories.encoder.encode(story.sentences))
    frames = StoryFrameDataset("train", num_frames=10)
    y, v = frames[2]
    assert y.shape == (3, 32, 32) and v.shape == (64,)
    assert torch.equal(frames[2][0], y)


@needs_fmnist
def test_rule_memory_carries_the_subject_of_world_stories(world):
    from ardiff.acdc.memory import RuleBasedMemory

    memory = RuleBasedMemory(expand_bare_names=True)
    cases = {
        "Nova, the small yellow sneaker, rests at the top left of a teal floor.": "Nova the small yellow sneaker",
        "Meet Milo, a large red boot at the left of a navy floor.": "Milo the large red boot",
        "At the bottom of a maroon floor sits Bram, a large pink sandal.": "Bram the large pink sandal",
        "Luna is a small white bag, resting at the centre of a black floor.": "Luna the small white bag",
    }
    for intro, referent in cases.items():
        name = referent.split()[0]
        kind = referent.split()[-1]
        colour = referent.split()[-2]
        out = memory.rewrite([intro, "It hops to the left.", f"The {kind} grows.", f"The {colour} one sinks lower.",
                              f"{name} slides right."])
        assert out[1:] == [f"{referent} hops to the left.", f"{referent} grows.", f"{referent} sinks lower.",
                           f"{referent} slides right."], out
    # Without expand_bare_names a sentence naming the subject is kept, as before.
    assert RuleBasedMemory().rewrite(list(cases)[:1] + ["Nova slides right."])[1] == "Nova slides right."
    for i in range(30):  # every later sentence of a world story ends up naming kind and colour
        story = world.story(i)
        for sentence in memory.rewrite(story.sentences)[1:]:
            said = sentence_attributes(sentence)
            assert said["kind"] < len(KIND_NAMES) and said["colour"] < len(ITEM_COLOURS), sentence


@needs_fmnist
def test_state_memory_reads_every_state_back_from_the_text(world):
    from ardiff.experiments.story_benchmark import StoryStateMemory

    train = StoryWorld("train")
    stories = [world.story(i) for i in range(150)] + [world.story(i, 12) for i in range(50)] + \
              [train.story(i) for i in range(50)]
    assert {s.sentences[0].split()[0] for s in stories} >= {"Meet", "At"}  # several intro phrasings
    memory = StoryStateMemory()
    for story in stories:
        assert read_story_states(story.sentences) == story.states, story.sentences
        captions = memory.rewrite(story.sentences)
        assert captions == [s.caption(with_layout=True) for s in story.states]
        assert memory.rewrite(story.sentences[:3]) == captions[:3]  # causal: later sentences change nothing
    assert memory.rewrite([]) == []


def test_state_memory_refuses_text_outside_the_grammar():
    from ardiff.experiments.story_benchmark import StoryStateMemory

    memory = StoryStateMemory()
    intro = "Nova, the small yellow sneaker, rests at the top left of a teal floor."
    with pytest.raises(ValueError, match="sentence 1 .*rule memory"):
        memory.rewrite(["Once upon a time a fox lived in a wood.", "It hops to the left."])
    with pytest.raises(ValueError, match="sentence 2 'It dances.'"):
        memory.rewrite([intro, "It dances."])
    with pytest.raises(ValueError, match="sentence 2 .*'left'.*top left"):  # already in the left column
        memory.rewrite([intro, "It hops to the left."])
    assert memory.rewrite([intro, "It slides right.", "Nova grows."])[1:] == [
        "a small yellow sneaker at the top of a teal floor.", "a large yellow sneaker at the top of a teal floor."]


@needs_fmnist
def test_corrector_score_reads_frames_drawn_from_full_captions(tmp_path):
    import json
    import subprocess
    import sys

    from ardiff import ACDiT, ACDiTConfig
    from ardiff.experiments.text_to_frame import score_text_to_frame
    from ardiff.generate import Pipeline, SamplingSettings

    torch.manual_seed(0)
    model = ACDiT(ACDiTConfig(input_size=(32, 32), in_channels=3, patch_size=4, block_size=64, num_classes=0,
                              block_layout="raster",
                              cond_dim=64, depth=1, hidden_size=32, num_heads=2)).eval()
    encoder = StoryTextEncoder.from_pretrained()
    pipe = Pipeline(model, SamplingSettings(cfg_scale=2.0, num_steps=2))
    a = score_text_to_frame(pipe, encoder, num=5, seed=3, batch_size=2, progress=False)
    b = score_text_to_frame(pipe, encoder, num=5, seed=3, batch_size=5, progress=False)
    assert torch.equal(a["frames"], b["frames"]) and a["frames"].shape == (5, 3, 32, 32)  # batch-independent
    assert a["captions"][0].startswith("a ") and " at the " in a["captions"][0]
    assert set(a["accuracy"]) == {"kind", "colour", "background", "size", "row", "col"}
    assert all(0 <= v <= 1 for v in a["accuracy"].values())
    # The reader reads the true renders almost perfectly: the scale an untrained model is judged on.
    assert a["reader_on_true_renders"]["colour"] == 1.0 and a["accuracy"]["colour"] < 1.0
    assert score_text_to_frame(pipe, encoder, num=5, seed=4, progress=False)["captions"] != a["captions"]
    with pytest.raises(ValueError, match="single-frame model"):
        two = ACDiT(ACDiTConfig(input_size=(2, 32, 32), in_channels=3, patch_size=4, block_size=64, num_classes=0,
                                block_layout="raster",
                                cond_dim=64, depth=1, hidden_size=24, num_heads=2))
        score_text_to_frame(Pipeline(two, SamplingSettings(cfg_scale=2.0, num_steps=2)), encoder, num=1,
                            progress=False)
    model.save_pretrained(tmp_path / "m")
    out = subprocess.run([sys.executable, "-m", "ardiff.cli", "world", "score-corrector", str(tmp_path / "m"),
                          "--num", "3", "--steps", "2", "--out", str(tmp_path / "s"), "--no-progress"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "row and col" in out.stdout
    scores = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert scores["num"] == 3 and scores["num_steps"] == 2 and (tmp_path / "s" / "frames.png").is_file()
