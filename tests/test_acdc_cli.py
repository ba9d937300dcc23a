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
    assert (out / "strip.png").is_file() and (out / "uncorrected_vs_corrected.gif").is_file()


def test_video_mode_and_bad_specs(saved_models, tmp_path):
    video, image = saved_models
    out = tmp_path / "v"
    main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", f"native:{image}", "--prompt", "a bag",
          "--chunks", "4", "--steps", "4", "--arm-steps", "2", "--out", str(out)])
    record = json.loads((out / "record.json").read_text())
    assert [c["corrected"] for c in record["chunks"]] == [True, False, False, False]
    with pytest.raises(ValueError, match="--corrector 'magic'"):
        main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", "magic", "--out", str(out)])
    with pytest.raises(ValueError, match="needs a path"):
        main(["acdc", "video", "--arm", "acdit", "--out", str(out)])
