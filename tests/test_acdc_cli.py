"""`ardiff acdc story|video` end to end on tiny saved models (offline)."""

import json

import pytest
import torch

from ardiff.cli import main
from helpers import tiny_model


@pytest.fixture
def saved_models(tmp_path):
    video = tiny_model(dtype=torch.float32, input_size=(4, 8, 8), in_channels=1, patch_size=2, block_layout="raster",
                       block_size=16, rope_axis_weights=(2, 3, 3))
    image = tiny_model(dtype=torch.float32, input_size=(8, 8), in_channels=1, patch_size=2, block_layout="tiles",
                       block_size=4)
    video.save_pretrained(tmp_path / "video")
    image.save_pretrained(tmp_path / "image")
    return tmp_path / "video", tmp_path / "image"


def test_story_with_rule_memory(saved_models, tmp_path, capsys):
    video, image = saved_models
    prompts = tmp_path / "story.txt"
    prompts.write_text("A sneaker rests on the floor.\nIt slides left.\nThe sneaker stops.\nIt spins.\n")
    out = tmp_path / "out"
    main(["acdc", "story", "--arm", f"acdit:{video}", "--corrector", f"native:{image}", "--memory", "rule",
          "--prompts", str(prompts), "--steps", "4", "--arm-steps", "2", "--correct", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "chunk 1: corrected at t'=0.500" in printed and "chunk 2: kept" in printed
    record = json.loads((out / "record.json").read_text())
    assert [c["corrected"] for c in record["chunks"]] == [True, True, False, False]
    assert record["rewritten_prompts"][1] != "It slides left."  # the memory named the subject
    for name in ("strip.png", "arm_vs_acdc.gif", "index.html"):
        assert (out / name).is_file(), name
    # record.json is enough to run it again: components, memory, settings, seed, versions.
    assert record["arm"]["spec"] == f"acdit:{video}" and record["corrector"]["spec"] == f"native:{image}"
    assert record["memory"] == {"spec": "rule", "class": "RuleBasedMemory", "fell_back": False,
                                "fallback_reasons": []}
    assert record["arguments"]["arm_steps"] == 2 and record["seed"] == 0 and record["t_prime"] == 0.5
    assert set(record["versions"]) >= {"ardiff", "torch", "diffusers"}
    page = (out / "index.html").read_text()
    assert "It slides left." in page and record["rewritten_prompts"][1] in page


def test_strip_has_a_true_arm_alone_row(saved_models, tmp_path):
    """The top row is the ARM alone with the same seed: where ACDC corrected chunk 1, the
    later chunks differ from the ARM alone; with nothing corrected the two rows are equal."""
    from PIL import Image

    video, image = saved_models
    runs = {}
    for correct in ("0", "1"):
        out = tmp_path / f"c{correct}"
        assert main(["acdc", "story", "--arm", f"acdit:{video}", "--corrector", f"native:{image}", "--steps", "4",
                     "--arm-steps", "2", "--correct", correct, "--t-prime", "0.9", "--out", str(out)]) == 0
        runs[correct] = out
    strip0, strip1 = (Image.open(runs[c] / "strip.png") for c in ("0", "1"))
    assert strip0.size == strip1.size and strip0.size[0] > 4 * 2 * 8 * 8  # labelled, 8x8 frames scaled up
    from safetensors.torch import load_file

    f0, f1 = (load_file(str(runs[c] / "frames.safetensors")) for c in ("0", "1"))
    assert torch.equal(f0["arm_alone"], f1["arm_alone"])  # the same seed: the same ARM-alone row
    assert torch.equal(f0["arm_alone"], f0["acdc"])  # nothing corrected: the rows agree
    assert not torch.equal(f1["arm_alone"][1:], f1["acdc"][1:])  # chunk 1 corrected: later chunks change too


def test_video_mode_and_bad_specs(saved_models, tmp_path, capsys):
    video, image = saved_models
    out = tmp_path / "v"
    main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", f"native:{image}", "--prompt", "a bag",
          "--chunks", "4", "--steps", "4", "--arm-steps", "2", "--out", str(out)])
    record = json.loads((out / "record.json").read_text())
    assert [c["corrected"] for c in record["chunks"]] == [True, False, False, False]
    with pytest.raises(SystemExit):
        main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", "magic", "--out", str(out)])
    assert "--corrector: 'magic': use builtin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["acdc", "video", "--arm", "acdit", "--out", str(out)])
    assert "needs a path" in capsys.readouterr().err
