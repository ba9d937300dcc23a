"""Few-step students: the consistency sampler, v-prediction, trajectory distillation as a
training run (exact resume, recorded sampler), and the errors a user meets."""

import json

import pytest
import torch

from ardiff import ACDiT, ACDiTConfig, SamplingSettings
from ardiff.cli import main
from ardiff.diffusion.schedule import NoiseSchedule
from ardiff.generate.sampler import sample
from ardiff.models.checkpoint import save_pretrained
from ardiff.train import load_run_config, make_trainer
from ardiff.utils.seeding import make_generators
from helpers import tiny_model

STUDENT = SamplingSettings(cfg_scale=1.0, num_steps=4, sampler="consistency", timesteps=(999, 749, 499, 249))


# ----------------------------------------------------------------------------------------
# The few-step sampler
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", [dict(), dict(input_size=(4, 4, 4), patch_size=2, block_layout="raster",
                                                  block_size=8, rope_axis_weights=(2, 1, 1))])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampler_cached_equals_uncached(layout, steps):
    model = tiny_model(prediction_type="v_prediction", **layout)
    s = STUDENT.but(num_steps=steps)
    cached = sample(model, torch.arange(3), s, generator=make_generators([1, 2, 3]))
    uncached = sample(model, torch.arange(3), s, generator=make_generators([1, 2, 3]), use_cache=False)
    alone = sample(model, torch.arange(1, 2), s, generator=make_generators([2]))
    assert (cached - uncached).abs().max() < 1e-9
    assert (cached[1] - alone[0]).abs().max() < 1e-12


def test_consistency_sampler_rolls_the_window_past_the_trained_length():
    model = tiny_model(prediction_type="v_prediction", input_size=(4, 4, 4), patch_size=2, block_layout="raster",
                       block_size=4, rope_axis_weights=(2, 1, 1))  # 4 blocks of one frame
    cond = torch.tensor([[1, 1, 1, 2, 2, 2, 3, 3, 3]])  # a prompt schedule: one class per block
    kwargs = dict(num_blocks=9, window=2, sink_blocks=1, generator=make_generators([5]))
    cached = sample(model, cond, STUDENT, **kwargs)
    kwargs["generator"] = make_generators([5])
    uncached = sample(model, cond, STUDENT, use_cache=False, **kwargs)
    assert cached.shape == (1, 3, 9, 4, 4) and (cached - uncached).abs().max() < 1e-9


def test_consistency_step_predicts_clean_then_renoises():
    """Each step: the clean block the v-prediction implies, re-noised with fresh noise to the next
    timestep; the last step returns the clean prediction."""
    model = tiny_model(prediction_type="v_prediction", num_classes=0, input_size=(4, 4), patch_size=2,
                       block_size=4)
    seen = []
    got = sample(model, None, STUDENT.but(num_steps=2), batch_size=1, generator=make_generators([7]),
                 output="blocks", use_cache=False, on_step=lambda e: seen.append((e.index, e.timestep, e.x.clone())))
    assert [(i, t) for i, t, _ in seen] == [(0, 999), (0, 499)]
    ab = NoiseSchedule.from_config(model.config).alphas_cumprod
    x = seen[1][2]
    t = torch.full((1,), 499)
    v = model.run(noisy=x[:, None], noisy_blocks=(0,), cond=model.condition_vectors(t[:, None], None))[:, 0]
    clean = ab[499].sqrt() * x - (1 - ab[499]).sqrt() * v
    assert (got[:, 0] - clean).abs().max() < 1e-6  # the schedulers hold alphas in float32
    first = seen[0][2]
    assert torch.equal(first, torch.randn(first.shape, generator=make_generators([7])[0], dtype=first.dtype))


def test_student_timesteps_settings():
    assert STUDENT.step_timesteps == [999, 749, 499, 249]
    assert STUDENT.but(num_steps=2).step_timesteps == [999, 499]
    assert STUDENT.but(num_steps=1).step_timesteps == [999]
    assert "t = 999, 499" in STUDENT.but(num_steps=2).describe()
    assert STUDENT.evaluations_per_block(ACDiTConfig.preset("tiny")) == 4
    assert SamplingSettings.from_record(STUDENT.to_dict()) == STUDENT
    assert "timesteps" not in SamplingSettings().to_dict()  # other records stay as they were
    with pytest.raises(ValueError, match=r"num_steps=8: the student was distilled at 4 timesteps"):
        STUDENT.but(num_steps=8)
    with pytest.raises(ValueError, match="highest first"):
        SamplingSettings(sampler="consistency", num_steps=2, timesteps=(249, 999))
    with pytest.raises(ValueError, match="sampler 'ddim' spaces its own steps"):
        SamplingSettings(sampler="ddim", num_steps=2, timesteps=(999, 499))
    with pytest.raises(ValueError, match="reach past the model's 1000 training timesteps"):
        SamplingSettings(sampler="consistency", num_steps=1, timesteps=(1000,)).check_for(ACDiTConfig.preset("tiny"))
    guided = SamplingSettings(cfg_scale=2.0, num_steps=10, sampler="dpmsolver++", guidance_interval=(0, 0.6))
    assert guided.evaluations_per_block(ACDiTConfig.preset("tiny")) == 10 + 6  # 999, 888, ... 0: six at t <= 600


def test_v_prediction_training_target():
    """A v-prediction model trains towards sqrt(a) eps - sqrt(1 - a) x0."""
    from ardiff.diffusion.schedule import DiffusionLoss

    model = tiny_model(prediction_type="v_prediction")
    loss = DiffusionLoss(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([[10, 500, 900, 999], [0, 1, 2, 3]])
    noise = torch.randn(2, 4, 4, 12, dtype=torch.float64)
    prediction, target = loss._prediction(x, torch.tensor([1, 2]), t, noise)
    ab = loss.schedule.alphas_cumprod[t][..., None, None]
    assert torch.allclose(target.double(), ab.sqrt() * noise - (1 - ab).sqrt() * model.to_blocks(x), atol=1e-6)


# ----------------------------------------------------------------------------------------
# Distillation as a training run
# ----------------------------------------------------------------------------------------
TEACHER_SAMPLING = {"cfg_scale": 2.0, "num_steps": 6, "sampler": "dpmsolver++", "clip_denoised": True,
                    "guidance_interval": [0.0, 0.6]}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    model = tiny_model(dtype=torch.float32, in_channels=1, num_classes=4)
    return save_pretrained(model, tmp_path_factory.mktemp("teacher") / "teacher",
                           extra_config={"_sampling": TEACHER_SAMPLING})


def distill_run(teacher, out, **train):
    settings = {"steps": 6, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 2, "log_every": 1,
                "sample_every": 0, "tensorboard": False, **train}
    overrides = [f"distill.teacher={teacher}", "distill.num_trajectories=12", "distill.trajectory_batch=5",
                 "distill.timesteps=[999, 499]", f"train.out_dir={out}", "sample.num_images=0",
                 *(f"train.{k}={json.dumps(v)}" for k, v in settings.items())]
    return load_run_config(None, overrides)


def test_student_run_config_comes_from_the_teacher(teacher_dir, tmp_path):
    run = distill_run(teacher_dir, tmp_path / "run")
    assert run.model.prediction_type == "v_prediction" and run.model.hidden_size == 64
    assert run.train.init_from == str(teacher_dir) and run.train.class_dropout == 0.0
    s = run.sample.settings()
    assert (s.sampler, s.num_steps, s.timesteps, s.cfg_scale, s.clip_denoised) == ("consistency", 2, (999, 499), 1.0,
                                                                                   True)


def test_trajectories_are_the_teachers_ode_through_the_student_timesteps(teacher_dir, tmp_path):
    from ardiff.train.distill import TRAJECTORY_STREAM, teacher_ode_settings
    from ardiff.utils.seeding import hashed_seed

    run = distill_run(teacher_dir, tmp_path / "run")
    trainer = make_trainer(run, device="cpu", progress=False)
    bank = trainer.dataset
    assert bank.states.shape == (12, 4, 2, 4, 4) and bank.images.shape == (12, 1, 8, 8)
    teacher = ACDiT.from_pretrained(teacher_dir)
    ode = teacher_ode_settings(run.distill, teacher.config, SamplingSettings.from_record(TEACHER_SAMPLING))
    assert ode.sampler == "dpmsolver++" and {999, 499} <= set(ode.timesteps) and ode.cfg_scale == 2.0
    gens = make_generators([hashed_seed(0, TRAJECTORY_STREAM, i) for i in (5, 6)])
    again = sample(teacher, torch.tensor([1, 2]), ode, generator=gens)
    assert torch.allclose(bank.images[5:7], again, atol=1e-6)  # file 2 holds trajectories 5..9
    noise = torch.randn(4, 4, generator=make_generators([hashed_seed(0, TRAJECTORY_STREAM, 5)])[0])
    assert torch.equal(bank.states[5, 0, 0], noise)  # the state at t = 999 is the block's starting noise
    last = sorted(p.name for p in (tmp_path / "run" / "trajectories").iterdir())[-1]
    assert last == "trajectories_0000010.safetensors"


def test_a_run_keeps_the_trajectory_files_it_has(teacher_dir, tmp_path):
    from ardiff.train.distill import TrajectoryBank

    run = distill_run(teacher_dir, tmp_path / "run")
    small = make_trainer(run, device="cpu", progress=False).dataset
    files = tmp_path / "run" / "trajectories"
    stamps = {p.name: p.stat().st_mtime_ns for p in files.glob("*.safetensors")}
    grown = distill_run(teacher_dir, tmp_path / "run")
    grown.distill.num_trajectories = 14
    bank = make_trainer(grown, device="cpu", progress=False).dataset
    assert len(bank) == 14 and torch.equal(bank.states[:12], small.states)
    kept = {name: t for name, t in stamps.items() if name != "trajectories_0000010.safetensors"}  # 10, 11 now
    assert all((files / name).stat().st_mtime_ns == t for name, t in kept.items())
    other = distill_run(teacher_dir, tmp_path / "run")
    other.distill.teacher_cfg = 3.0
    with pytest.raises(ValueError, match="drawn with another teacher or other settings"):
        make_trainer(other, device="cpu", progress=False)
    assert isinstance(bank, TrajectoryBank)


def test_bench_sets_teacher_beside_student(teacher_dir, tmp_path):
    from ardiff.experiments.speed_bench import bench_teacher_student

    make_trainer(distill_run(teacher_dir, tmp_path / "run", steps=1), device="cpu", progress=False).fit()
    (row,) = bench_teacher_student(100.0, pairs=[(str(teacher_dir), str(tmp_path / "run" / "model"))])
    assert row["teacher"]["evaluations_per_block"] == 6 + 3  # 999, 833, 666, 500, 333, 166: three at t/T <= 0.6
    assert row["student"]["evaluations_per_block"] == 2
    assert row["speedup"] == row["student"]["samples_per_s"] / row["teacher"]["samples_per_s"] > 1.5


def test_distillation_resumes_exactly_and_records_the_sampler(teacher_dir, tmp_path):
    whole = make_trainer(distill_run(teacher_dir, tmp_path / "whole"), device="cpu", progress=False)
    whole.fit()
    first = make_trainer(distill_run(teacher_dir, tmp_path / "split"), device="cpu", progress=False)
    first.fit(max_steps=4)
    resumed = make_trainer(distill_run(teacher_dir, tmp_path / "split"), resume=True, device="cpu", progress=False)
    assert resumed.step == 4
    resumed.fit()
    for name, p in whole.model.named_parameters():
        assert torch.equal(p, dict(resumed.model.named_parameters())[name]), name
    config = json.loads((tmp_path / "whole" / "model" / "config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert config["_sampling"]["sampler"] == "consistency" and config["_sampling"]["timesteps"] == [999, 499]
    record = config["_distillation"]
    assert record["method"] == "ode-regression" and record["teacher_cfg_scale"] == 2.0
    assert record["teacher_sampling"]["guidance_interval"] == [0.0, 0.6]


def test_the_student_learns_the_teachers_jump(teacher_dir, tmp_path):
    """Regression onto the trajectories' ends: the loss falls well below where it starts."""
    trainer = make_trainer(distill_run(teacher_dir, tmp_path / "run", steps=60, lr=3e-3, batch_size=12),
                           device="cpu", progress=False)
    trainer.fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


# ----------------------------------------------------------------------------------------
# What a user meets
# ----------------------------------------------------------------------------------------
def test_distill_refuses_a_teacher_of_another_layout(teacher_dir, tmp_path, capsys):
    config = tmp_path / "distill.yaml"
    config.write_text("model:\n  input_size: [32, 32]\n  patch_size: 4\ndistill:\n  num_trajectories: 4\n")
    assert main(["distill", str(teacher_dir), "--config", str(config), "--out-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "has another layout than this config: model.input_size=[32, 32] (teacher: [8, 8])" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_student_refuses_guidance_it_distilled_away(teacher_dir, tmp_path, capsys):
    run = distill_run(teacher_dir, tmp_path / "run", steps=1)
    make_trainer(run, device="cpu", progress=False).fit()
    model = str(tmp_path / "run" / "model")
    assert main(["sample", model, "--cfg", "3", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distilled into its weights" in err[0] and "sample the teacher" in err[0]
    assert main(["sample", model, "--steps", "3", "--out", str(tmp_path / "s.png")]) == 2
    assert "the student was distilled at 2 timesteps [999, 499]; use 1 to 2 steps" in capsys.readouterr().err
    assert main(["sample", model, "--steps", "1", "--num", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert "1 consistency (predict clean, re-noise) steps per block (t = 999)" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------
# The shipped student
# ----------------------------------------------------------------------------------------
def test_shipped_fmnist_fast_draws_its_classes_in_four_evaluations_per_block():
    from ardiff import Pipeline
    from ardiff.eval.features import FMNISTFeatures
    from ardiff.eval.metrics import class_accuracy

    pipe = Pipeline.from_pretrained("fmnist-fast", device="cpu")
    assert pipe.settings.evaluations_per_block(pipe.config) == 4 and pipe.extras["distillation"]["teacher"] == "fmnist"
    labels = torch.arange(60) % 10
    images = pipe(labels, seeds=range(500, 560))
    assert images.shape == (60, 1, 32, 32) and images.abs().max() <= 1 + 1e-4  # clipped (LCM keeps c_skip ~ 4e-8)
    _, logits = FMNISTFeatures()(images)
    assert class_accuracy(logits, labels) >= 0.9  # 96.1% at N = 1000 (docs/models/fmnist-fast.md)
