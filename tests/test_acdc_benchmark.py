"""`ardiff acdc benchmark` end to end with tiny models (the numbers are meaningless; the plumbing is not)."""

import json

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig
from ardiff.experiments.story_benchmark import BenchmarkConfig, run_benchmark, score_frames
from ardiff.worlds.reader import AttributeReader
from ardiff.worlds.story import StoryWorld
from helpers import needs_fmnist, randomize

TINY = dict(in_channels=3, patch_size=8, block_layout="raster", block_size=16, num_classes=0, cond_dim=64,
            depth=1, hidden_size=32, num_heads=2)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    arm = randomize(ACDiT(ACDiTConfig(input_size=(6, 32, 32), rope_axis_weights=(2, 1, 1), **TINY)), 0, 0.02)
    corrector = randomize(ACDiT(ACDiTConfig(input_size=(32, 32), **TINY)), 1, 0.02)
    arm.save_pretrained(root / "arm")
    corrector.save_pretrained(root / "corrector")
    AttributeReader(width=8, feature_dim=16).save_pretrained(root / "reader")
    return root


@needs_fmnist
def test_benchmark_writes_every_table_plot_and_strip(models, tmp_path):
    settings = ("dm_alone", "arm", "acdc_rule", "acdc_raw", "acdc2_rule", "long_arm", "long_acdc_rule", "inpaint")
    config = BenchmarkConfig(out=str(tmp_path / "bench"), arm=str(models / "arm"), corrector=str(models / "corrector"),
                             reader=str(models / "reader"), num_stories=2, long_stories=2, long_length=8,
                             window=3, sink_blocks=1, arm_steps=2, corrector_steps=4, arm_cfg=2.0,
                             corrector_cfg=2.0, settings=settings)
    logs = []
    summary = run_benchmark(config, log=logs.append)
    out = tmp_path / "bench"
    inpaint = json.loads((out / "settings" / "inpaint.json").read_text())
    assert inpaint["frames"] == 12 and 0 <= inpaint["defect_rate_after"] <= 1
    assert inpaint["repaired_frames"] == round(inpaint["defect_rate_before"] * 12)
    for name in settings[:-1]:
        r = json.loads((out / "settings" / f"{name}.json").read_text())
        for key in ("faithfulness", "identity", "consistency"):
            assert 0 <= r[key] <= 1 or key == "consistency"
        frames = 8 if name.startswith("long_") else 6
        assert len(r["per_frame"]["faithfulness"]) == frames
    table = (out / "story_table.md").read_text()
    assert table.startswith("| setting |") and "| ARM, defects inpainted | 12 |" in table
    # every setting beside the ARM alone on the same stories, with a paired interval (12-frame: the 12-frame ARM)
    assert "| minus ARM alone (same stories and seeds; paired bootstrap 95% interval) |" in table
    paired = table.split("| minus ARM alone")[1].split("\n\n")[0]
    assert f"| {summary['results']['acdc_rule']['label']} | " in paired
    assert f"| {summary['results']['long_acdc_rule']['label']} | " in paired
    assert f"| {summary['results']['arm']['label']} | " not in paired
    assert len(summary["results"]["arm"]["per_story"]["faithfulness"]) == 2
    assert (out / "error_accumulation.png").stat().st_size > 0
    assert (out / "strip_story_0.png").is_file() and (out / "strip_long_0.png").is_file()
    # the rule memory's rewrites are what the corrector saw
    assert summary["results"]["acdc_rule"]["example_prompts"][1] != summary["results"]["acdc_raw"]["example_prompts"][1]
    # ARM alone and ACDC start from the same seed: frame 1 before correction is the same draw,
    # and ACDC #2 equals full ACDC on its two corrected frames.
    from safetensors.torch import load_file

    f = {n: load_file(str(out / "settings" / f"{n}.safetensors"))["frames"] for n in ("acdc_rule", "acdc2_rule")}
    torch.testing.assert_close(f["acdc_rule"][:, :2], f["acdc2_rule"][:, :2])
    # a rerun skips finished settings
    logs.clear()
    run_benchmark(config, log=logs.append)
    assert all("already done" in line for line in logs)
    # --rescore recomputes the metrics from the saved frames, generating nothing
    logs.clear()
    again = run_benchmark(config, log=logs.append, rescore=True)
    assert sum("rescored" in line for line in logs) == len(settings) - 1
    assert again["results"]["arm"]["faithfulness"] == summary["results"]["arm"]["faithfulness"]
    assert again["results"]["acdc_rule"]["made_with"] == summary["results"]["acdc_rule"]["made_with"]
    # a finished setting made with other run parameters is an error, not a stale row
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"acdc_rule.json was made with t_prime=0.5, but this run asks for "
                                         r"t_prime=0.3: give another --out, or delete acdc_rule.json"):
        run_benchmark(replace(config, t_prime=0.3, settings=("arm", "acdc_rule")), log=logs.append)
    with pytest.raises(ValueError, match=r"arm.json was made with seed=0, but this run asks for seed=1"):
        run_benchmark(replace(config, seed=1, settings=("arm",)), log=logs.append)
    # what a setting does not depend on may change: the ARM alone is reused at another t'
    logs.clear()
    run_benchmark(replace(config, t_prime=0.3, settings=("arm", "dm_alone")), log=logs.append)
    assert all("already done" in line for line in logs)


@needs_fmnist
def test_score_frames_on_the_truth_is_perfect_for_a_perfect_reader(monkeypatch):
    world = StoryWorld("test")
    stories = [world.story(i) for i in range(3)]
    truth = torch.stack([world.render(s).transpose(0, 1) for s in stories])

    class Oracle(AttributeReader):
        """Reads the truth back (frames are matched to the stories' states by order)."""

        def read(self, frames, batch_size=256):
            from ardiff.worlds.reader import state_labels

            states = [s for story in stories for s in story.states]
            feats = frames.flatten(1)[:, :64]
            return state_labels(states[: frames.shape[0]]), feats

    metrics = score_frames(truth, stories, world, Oracle(width=8, feature_dim=16))
    assert metrics["faithfulness"] == 1.0 and metrics["fid_reader"] < 1e-3
    # identity kept is the kind and colour of frame 1: constant within a story
    assert metrics["identity"] == 1.0


def test_unknown_setting_is_an_error(models, tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark settings"):
        run_benchmark(BenchmarkConfig(out=str(tmp_path), settings=("nope",)))


@needs_fmnist
def test_video_table_pairs_noise_and_corrects_only_the_first_half(tmp_path):
    """A tiny 4-frame video ARM (blocks of 2 frames) makes 8-frame clips; the corrected setting
    differs from the uncorrected one in every frame (the correction and what follows from it),
    and both share the ARM's draws (same seeds)."""
    from safetensors.torch import load_file

    from ardiff.experiments.video_table import VideoBenchConfig, score_halves

    video = dict(in_channels=1, patch_size=8, block_layout="raster", num_classes=10, depth=1, hidden_size=32,
                 num_heads=2, rope_axis_weights=(2, 1, 1))
    torch.manual_seed(0)
    trained_on = {"_data": {"name": "moving_fashion_mnist", "speed": 1.0, "num_items": 1}}  # the reference clips
    randomize(ACDiT(ACDiTConfig(input_size=(4, 32, 32), block_size=32, **video)), 0, 0.02).save_pretrained(
        tmp_path / "arm", extra_config=trained_on)
    randomize(ACDiT(ACDiTConfig(input_size=(4, 32, 32), block_size=64, **video)), 1, 0.02).save_pretrained(
        tmp_path / "dit")
    cfg = VideoBenchConfig(arm=str(tmp_path / "arm"), corrector=str(tmp_path / "dit"), clips=3, real_clips=20,
                           window=1, sink_blocks=0, arm_steps=2, corrector_steps=4, arm_cfg=2.0, corrector_cfg=2.0)
    config = BenchmarkConfig(out=str(tmp_path / "bench"), settings=("video_arm", "video_acdc"), video=cfg)
    summary = run_benchmark(config, log=lambda *_: None)
    out = tmp_path / "bench"
    clips = {n: load_file(str(out / "settings" / f"{n}.safetensors"))["clips"] for n in ("video_arm", "video_acdc")}
    assert clips["video_arm"].shape == (3, 1, 8, 32, 32)
    assert not torch.allclose(clips["video_arm"][:, :, :4], clips["video_acdc"][:, :, :4])
    for name in ("video_arm", "video_acdc", "real"):
        r = summary["video"][name]
        assert len(r["per_frame_accuracy"]) == 8 and 0 <= r["first"]["class_accuracy"] <= 1
    table = (out / "story_table.md").read_text()
    assert "| class acc. 1-4 | class acc. 5-8 |" in table and "real test clips (N=3)" in table
    assert table.startswith("| setting | class acc.")  # only the video table: no empty story table above it
    assert "| ARM + ACDC (first half corrected, t'=0.5, CFG 2) (N=3) |" in table  # the correction as run
    assert "Minus the ARM alone, on the same 3 clips (paired bootstrap 95% intervals):" in table
    assert "- ARM + ACDC (first half corrected): class accuracy 1-4 " in table and "consistency 5-8 " in table
    assert len(summary["video"]["video_acdc"]["second"]["class_accuracy_by_clip"]) == 3
    # every Frechet distance of a generated row stands beside the real row's, its floor at the same N
    real, arm = summary["video"]["real"], summary["video"]["video_arm"]
    assert f"| {arm['first']['fid_frames']:.1f} [{real['first']['fid_frames']:.1f}] |" in table
    assert f"| {arm['second']['fvd_proxy']:.0f} [{real['second']['fvd_proxy']:.0f}] |" in table
    assert (out / "video_accuracy.png").is_file() and (out / "strip_video_0.png").is_file()
    # the drift with its bootstrap interval over clips, and ACDC's minus the ARM's, paired
    value, low, high = arm["drift_interval"]
    assert value == pytest.approx(arm["second"]["fid_frames"] - arm["first"]["fid_frames"]) and low <= high
    assert f"| {value:+.1f} [{low:+.1f}, {high:+.1f}] |" in table
    d = summary["video"]["video_acdc"]["drift_minus_arm"]
    assert d[0] == pytest.approx(summary["video"]["video_acdc"]["drift_interval"][0] - value)
    assert f"drift {d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}]" in table and "drift_minus_arm" not in arm
    # a rerun with another t' reuses the ARM's clips and refuses the stale correction
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"video_acdc.json was made with t_prime=0.5, but this run asks for "
                                         r"t_prime=0.3"):
        run_benchmark(replace(config, video=replace(cfg, t_prime=0.3)), log=lambda *_: None)
    # unless told otherwise the corrector is guided as strongly as the ARM
    from ardiff.experiments.video_table import VideoBench

    assert VideoBench(replace(cfg, arm_cfg=3.0, corrector_cfg=None)).corrector_cfg == 3.0
    assert VideoBench(replace(cfg, arm_cfg=3.0, corrector_cfg=1.5)).corrector_cfg == 1.5
    # a few-step student in the ARM's place: its own rows, on the same clips, against the ARM
    student = ACDiTConfig(input_size=(4, 32, 32), block_size=32, prediction_type="v_prediction", **video)
    randomize(ACDiT(student), 2, 0.02).save_pretrained(tmp_path / "student", extra_config={"_sampling": {
        "cfg_scale": 1.0, "num_steps": 2, "sampler": "consistency", "timesteps": [999, 499], "clip_denoised": True}})
    with pytest.raises(ValueError, match="need the model: pass --video-student DIR"):
        run_benchmark(replace(config, settings=("video_student",)), log=lambda *_: None)
    with_student = replace(config, settings=("video_arm", "video_student", "video_student_acdc"),
                           video=replace(cfg, student=str(tmp_path / "student")))
    summary = run_benchmark(with_student, log=lambda *_: None)
    assert summary["video"]["video_student"]["made_with"]["arm_sampler"] == "consistency"
    table = (out / "story_table.md").read_text()
    assert "| few-step student (N=3) |" in table and "- few-step student + ACDC: class accuracy 1-4" in table
    assert "Within-class spread of clips, frames 1-4 / 5-8" in table and "few-step student " in table
    # real clips scored against themselves: a perfect classifier-free check of the FVD proxy's floor
    real = torch.rand(6, 1, 8, 32, 32) * 2 - 1
    from ardiff.eval.features import FMNISTFeatures

    same = score_halves(real, torch.zeros(6, dtype=torch.long), real, FMNISTFeatures())
    assert abs(same["first"]["fvd_proxy"]) < 1e-3 and abs(same["second"]["fid_frames"]) < 1e-3
    with pytest.raises(ValueError, match="full-sequence video model"):
        run_benchmark(BenchmarkConfig(out=str(tmp_path / "b2"), settings=("video_arm",),
                                      video=VideoBenchConfig(arm=str(tmp_path / "arm"),
                                                             corrector=str(tmp_path / "arm"))),
                      log=lambda *_: None)


@needs_fmnist
def test_ablations_t_prime_sweep_and_acdc_k(models, tmp_path):
    """The ablation settings: ACDC #k corrects exactly the first k frames (with and without
    memory), the t' sweep changes only the noise level; their table, layout-kept scores and plot."""
    from safetensors.torch import load_file

    from ardiff.experiments.benchmark_settings import expand_settings

    settings = expand_settings(["arm", "acdc_rule", "acdc1_rule", "acdc3_raw", "acdc_raw", "acdc_rule_t03",
                                "acdc_state_t03", "dm_alone_state"])
    config = BenchmarkConfig(out=str(tmp_path / "bench"), arm=str(models / "arm"), corrector=str(models / "corrector"),
                             reader=str(models / "reader"), num_stories=2, arm_steps=2, corrector_steps=4, arm_cfg=2.0,
                             corrector_cfg=2.0, settings=settings)
    summary = run_benchmark(config, log=lambda *_: None)
    out = tmp_path / "bench"
    f = {n: load_file(str(out / "settings" / f"{n}.safetensors"))["frames"] for n in settings}
    torch.testing.assert_close(f["acdc1_rule"][:, :1], f["acdc_rule"][:, :1])  # #1: frame 1 as full ACDC
    torch.testing.assert_close(f["acdc3_raw"][:, :3], f["acdc_raw"][:, :3])  # #3 without memory
    assert not torch.allclose(f["acdc_rule_t03"], f["acdc_rule"])  # another t'
    assert not torch.allclose(f["acdc1_rule"][:, 1:], f["acdc_rule"][:, 1:])  # later frames differ
    results = summary["results"]
    assert all(0 <= results[n]["layout_kept"] <= 1 for n in settings if n not in ("arm", "dm_alone_state"))
    table = (out / "story_table.md").read_text()
    assert "| ablation | faithfulness | per frame | ARM's layout kept |" in table and "t'=0.3" in table
    assert (out / "ablations.png").stat().st_size > 0
    # the state memory hands the corrector each frame's true caption, read from the text
    story = StoryWorld("test").story(0)
    assert results["acdc_state_t03"]["example_prompts"] == [s.caption() for s in story.states]
    assert results["dm_alone_state"]["example_prompts"] == [s.caption() for s in story.states]
    assert "ARM + ACDC (state memory), t'=0.3" in table
    assert expand_settings(["ablations"])[0] == "acdc1_rule" and "acdc_rule_t07" in expand_settings(["all"])
    with pytest.raises(ValueError, match="unknown benchmark setting 'nope'"):
        expand_settings(["nope"])
