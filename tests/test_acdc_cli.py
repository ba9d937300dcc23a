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
    config = json.loads((video / "config.json").read_text())  # the ARM records how it is to be sampled
    config["_sampling"] = {"cfg_scale": 2.0, "num_steps": 3, "sampler": "sde-dpmsolver++", "clip_denoised": True}
    (video / "config.json").write_text(json.dumps(config))
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
    # the recorded sampler and clipping reach the ARM; --arm-steps overrides the recorded steps
    assert {k: record["arm"][k] for k in ("sampler", "clip_denoised", "cfg_scale", "num_steps")} == {
        "sampler": "sde-dpmsolver++", "clip_denoised": True, "cfg_scale": 2.0, "num_steps": 2}
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
    # An image corrector corrects any number of frames: chunks of one frame here.
    assert main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", f"native:{image}", "--prompt", "a bag",
                 "--num-frames", "4", "--corrected-frames", "1", "--steps", "4", "--arm-steps", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert [c["corrected"] for c in record["chunks"]] == [True, False, False, False]
    with pytest.raises(SystemExit):
        main(["acdc", "video", "--arm", f"acdit:{video}", "--corrector", "magic", "--out", str(out)])
    assert "--corrector: 'magic': use builtin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["acdc", "video", "--arm", "acdit", "--out", str(out)])
    assert "needs a path" in capsys.readouterr().err


# ---------------------------------------------------------------------------
#                 acdc video: the paper's experiment (L frames, then N)
# ---------------------------------------------------------------------------
@pytest.fixture
def video_pair(tmp_path):
    """A tiny video ACDiT (4 frames, one frame a block) and a full-sequence video model of 4 frames."""
    video = tiny_model(dtype=torch.float32, input_size=(4, 8, 8), in_channels=1, patch_size=2, block_layout="raster",
                       block_size=16, rope_axis_weights=(2, 3, 3))
    dit = tiny_model(dtype=torch.float32, seed=1, input_size=(4, 8, 8), in_channels=1, patch_size=2,
                     block_layout="raster", block_size=64, rope_axis_weights=(2, 3, 3))
    video.save_pretrained(tmp_path / "video")
    dit.save_pretrained(tmp_path / "dit")
    return tmp_path / "video", tmp_path / "dit"


def test_video_makes_n_frames_and_corrects_the_first_l(video_pair, tmp_path, capsys):
    video, dit = video_pair
    out = tmp_path / "v"
    args = ["acdc", "video", "--arm", f"acdit:{video}", "--corrector", f"native:{dit}", "--prompt", "a bag moving",
            "--num-frames", "8", "--corrected-frames", "4", "--steps", "4", "--arm-steps", "2", "--out", str(out)]
    assert main([*args, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "8 frames in 2 chunks of 4 frames (4 ARM blocks each)" in plan and "frames 0..3" in plan
    assert "2 blocks + 1 sink block(s)" in plan and not out.exists()  # the dry run loads and writes nothing
    assert main(args) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["num_frames"] == 8 and record["corrected_frames"] == [0, 1, 2, 3]
    assert [c["corrected"] for c in record["chunks"]] == [True, False]
    assert record["window"] == 2 and record["sink_blocks"] == 1  # past the trained 4 frames
    assert set(record["metrics"]) == {"arm_alone", "acdc"}
    from safetensors.torch import load_file

    frames = load_file(str(out / "frames.safetensors"))
    assert frames["acdc"].shape == (2, 4, 1, 8, 8)
    assert torch.equal(frames["arm_alone"][0], frames["arm_alone"][0])
    assert not torch.equal(frames["arm_alone"][1], frames["acdc"][1])  # the continuation saw the corrected clip
    assert "metrics, ARM + ACDC" in capsys.readouterr().out


def test_video_layout_errors(video_pair, tmp_path, capsys):
    video, dit = video_pair
    common = ["acdc", "video", "--arm", f"acdit:{video}", "--corrector", f"native:{dit}", "--out", str(tmp_path / "x")]
    for extra, message in ((["--num-frames", "10", "--corrected-frames", "4"], "multiple of --corrected-frames 4"),
                           (["--num-frames", "8", "--corrected-frames", "6"], "up to 4"),
                           (["--num-frames", "4", "--corrected-frames", "2"], "corrects clips of 4 frames")):
        assert main([*common, *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_chunked_arm_equals_the_joined_block_loop():
    """Without correction, making 2-block chunks one after the other (each with the earlier
    ones as a clean prefix) gives the same frames as the KV-cached block loop (float64)."""
    from ardiff.acdc.native import ACDiTARM
    from ardiff.acdc.pipeline import ACDCPipeline
    from ardiff.generate import SamplingSettings

    model = tiny_model(input_size=(4, 8, 8), block_layout="raster", block_size=16, rope_axis_weights=(2, 3, 3))
    s = SamplingSettings(num_steps=3, cfg_scale=2.0)
    joined = ACDCPipeline(ACDiTARM(model, lambda p: 3, s), progress=False)
    chunked = ACDCPipeline(ACDiTARM(model, lambda p: 3, s, chunk_blocks=2), progress=False)
    a = joined.video("a bag", num_chunks=4, seed=5, correct=0).frames(corrected=False)
    b = chunked.video("a bag", num_chunks=2, seed=5, correct=0).frames(corrected=False)
    assert a.shape == b.shape == (4, 3, 8, 8)
    assert torch.allclose(a, b, atol=1e-10)


def test_metrics_with_a_tiny_random_clip(tmp_path):
    """The CLIP path of the run metrics: frame consistency and text-image similarity."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from ardiff.experiments.acdc_report import run_metrics

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "bag</w>": 3, "moving</w>": 4}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    config = CLIPConfig(text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                                     "num_attention_heads": 2, "num_hidden_layers": 1, "max_position_embeddings": 16},
                        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                       "num_hidden_layers": 1, "image_size": 32, "patch_size": 8},
                        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    processor.save_pretrained(tmp_path / "clip")
    frames = torch.rand(2, 3, 1, 8, 8) * 2 - 1
    scores = run_metrics({"arm_alone": frames, "acdc": frames.flip(0)}, ["a bag moving", "a bag"],
                         clip_dir=tmp_path / "clip")
    for row in ("arm_alone", "acdc"):
        assert -1 <= scores[row]["clip_frame_consistency"] <= 1
        assert -100 <= scores[row]["clip_text_similarity"] <= 100
    assert scores["arm_alone"]["clip_frame_consistency"] != 1.0


def test_benchmark_guidance_flags_reach_the_configs(monkeypatch, tmp_path):
    """--corrector-cfg and --video-corrector-cfg override the correctors' recorded guidance;
    without them the benchmark keeps the recorded one (None)."""
    import ardiff.experiments.story_benchmark as story_benchmark

    seen = []

    def fake_run(config, device="cpu", rescore=False):
        seen.append(config)
        (tmp_path / "b" / "story_table.md").parent.mkdir(exist_ok=True)
        (tmp_path / "b" / "story_table.md").write_text("table\n")
        return {"results": {"arm": {}}, "video": {}}

    monkeypatch.setattr(story_benchmark, "run_benchmark", fake_run)
    out = str(tmp_path / "b")
    assert main(["acdc", "benchmark", "--out", out, "--corrector-cfg", "3", "--video-corrector-cfg", "6",
                 "--video-t-prime", "0.3"]) == 0
    assert main(["acdc", "benchmark", "--out", out]) == 0
    assert (seen[0].corrector_cfg, seen[0].video.corrector_cfg, seen[0].video.t_prime) == (3.0, 6.0, 0.3)
    assert (seen[1].corrector_cfg, seen[1].video.corrector_cfg) == (None, None)
