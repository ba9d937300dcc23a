"""Self-Forcing DMD: rollouts on the student's own blocks with gradient through one block's final
step, the distribution-matching loss, and the run (two steps end to end, exact resume, errors)."""

import json

import pytest
import torch

from ardiff import ACDiT, SamplingSettings
from ardiff.models.checkpoint import save_pretrained
from ardiff.train import load_run_config, make_trainer
from ardiff.train.dmd import DMDDistiller, ScoreFunction, dmd_loss, exit_settings, rollout
from ardiff.utils.seeding import make_generators
from helpers import tiny_model

TIMESTEPS = (999, 749, 499, 249)
TEACHER_SAMPLING = {"cfg_scale": 2.0, "num_steps": 6, "sampler": "dpmsolver++", "clip_denoised": True,
                    "guidance_interval": [0.0, 0.6]}


# ----------------------------------------------------------------------------------------
# The rollout: the sampler's blocks, gradient through the chosen block's final step only
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("exit_step,block", [(1, 0), (2, 3), (4, 2)])
def test_rollout_is_the_sampler_with_one_differentiable_final_step(exit_step, block):
    student = tiny_model(prediction_type="v_prediction").train()
    cond = torch.tensor([0, 3])
    calls = []  # (grad enabled) for every forward through the final layer
    student.final_layer.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    got = rollout(student, cond, TIMESTEPS, exit_step, block, make_generators([1, 2]), clip_denoised=True)
    assert calls.count(True) == 1 and len(calls) == 4 * exit_step + 1  # one forward with gradient, at the end
    from ardiff.generate.sampler import sample

    plain = sample(student, cond, exit_settings(TIMESTEPS, exit_step, True), generator=make_generators([1, 2]),
                   output="blocks")
    assert (got.detach() - plain).abs().max() < 1e-9  # the recomputed step is the sampler's step (float64)
    assert got.requires_grad and got.grad_fn is not None
    weights = torch.randn_like(got)
    (got * weights).sum().backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert grads  # it reaches the student's weights ...
    # ... through the chosen block alone: the same loss on that block gives the same gradients
    student.zero_grad()
    again = rollout(student, cond, TIMESTEPS, exit_step, block, make_generators([1, 2]), clip_denoised=True)
    params = list(student.parameters())
    for other in set(range(4)) - {block}:  # every other block is a constant
        assert all(g is None or not g.any() for g in torch.autograd.grad(again[:, other].sum(), params,
                                                                         allow_unused=True, retain_graph=True))
    (again[:, block] * weights[:, block]).sum().backward()
    for n, p in student.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-12) if n in grads else p.grad is None, n


def test_long_rollouts_roll_the_window_and_recompute_the_chosen_step_in_it():
    student = tiny_model(prediction_type="v_prediction")  # 4 blocks trained
    kwargs = dict(num_blocks=7, window=2, sink_blocks=1)
    from ardiff.generate.sampler import sample

    for block in (1, 6):
        got = rollout(student, torch.tensor([2]), TIMESTEPS, 3, block, make_generators([4]), True, **kwargs)
        plain = sample(student, torch.tensor([2]), exit_settings(TIMESTEPS, 3, True), generator=make_generators([4]),
                       output="blocks", **kwargs)
        assert got.shape == (1, 7, 4, 12) and (got.detach() - plain).abs().max() < 1e-9


def test_rollout_context_is_the_students_own_blocks():
    """Changing the student changes later blocks through their context (its own earlier blocks)."""
    student = tiny_model(prediction_type="v_prediction")
    a = rollout(student, torch.tensor([1]), TIMESTEPS, 2, 1, make_generators([3]), True, grad=False)
    plain = tiny_model(prediction_type="v_prediction")
    from ardiff.generate.sampler import sample

    prefix = a[:, :1].clone() + 0.1  # another first block ...
    b = sample(plain, torch.tensor([1]), exit_settings(TIMESTEPS, 2, True), generator=make_generators([3]),
               output="blocks", prefix=prefix)
    assert (a[:, 1:] - b[:, 1:]).abs().max() > 1e-6  # ... another rest


def test_dmd_loss_gradient_is_the_normalised_score_difference():
    x = torch.randn(3, 4, 5, requires_grad=True)
    real, fake = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    loss, direction = dmd_loss(x, real, fake)
    loss.backward()
    weight = 1 / (x.detach() - real).abs().mean(dim=(1, 2), keepdim=True)
    assert torch.allclose(x.grad, (fake - real) * weight / x.numel(), atol=1e-6)
    assert torch.allclose(direction, (fake - real) * weight)
    same, _ = dmd_loss(x, real, real)
    assert same.item() == 0.0  # the fake score fits the real one: nothing to move


def test_score_function_guides_only_inside_its_interval():
    model = tiny_model(dtype=torch.float64, num_classes=4)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    noise = torch.randn_like(x)
    t = torch.tensor([900, 300])
    plain = ScoreFunction(model)(noise, t, torch.tensor([1, 2]), x)
    guided = ScoreFunction(model, 3.0, (0.0, 0.6))(noise, t, torch.tensor([1, 2]), x)
    assert torch.equal(plain[0], guided[0]) and not torch.allclose(plain[1], guided[1])


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd")
    teacher = save_pretrained(tiny_model(dtype=torch.float32, in_channels=1, num_classes=4), root / "teacher",
                              extra_config={"_sampling": TEACHER_SAMPLING})
    student = tiny_model(dtype=torch.float32, seed=1, in_channels=1, num_classes=4, prediction_type="v_prediction")
    student_dir = save_pretrained(student, root / "student")
    return teacher, student_dir


def dmd_run(models, out, *extra, **train):
    teacher, student = models
    settings = {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 2, "log_every": 1,
                "sample_every": 0, "tensorboard": False, **train}
    overrides = [f"distill.teacher={teacher}", "distill.method=dmd", f"distill.init_student={student}",
                 "distill.num_trajectories=8", "distill.critic_updates=2", f"train.out_dir={out}",
                 "sample.num_images=0", *extra, *(f"train.{k}={json.dumps(v)}" for k, v in settings.items())]
    return load_run_config(None, overrides)


def test_two_dmd_steps_end_to_end(models, tmp_path):
    run = dmd_run(models, tmp_path / "run", steps=2)
    trainer = make_trainer(run, device="cpu", progress=False)
    assert isinstance(trainer, DMDDistiller) and run.model.prediction_type == "v_prediction"
    start = ACDiT.from_pretrained(models[1])
    critic_start = {n: p.clone() for n, p in trainer.critic.named_parameters()}
    with_grad = []  # the student's forwards with gradient enabled, per step
    trainer.model.final_layer.register_forward_hook(lambda m, i, o: with_grad.append((trainer.step,
                                                                                     torch.is_grad_enabled())))
    trainer.fit()
    # step 0 updates the student: one forward with gradient (the chosen block's final step) among
    # the whole rollout's; step 1 updates only the fake score
    assert [s for s, grad in with_grad if grad] == [0] and sum(1 for s, _ in with_grad if s == 1) >= 4
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    assert "dmd_loss" in log[0] and "critic_loss" in log[0] and "dmd_loss" not in log[1]  # 2 critic updates
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, dict(start.named_parameters())[n])]
    assert moved  # the student learned from its rollout ...
    assert any(not torch.equal(p, critic_start[n]) for n, p in trainer.critic.named_parameters())  # ... the critic too
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (checkpoint / "critic.safetensors").is_file() and (checkpoint / "critic_optimizer.safetensors").is_file()
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["_distillation"]["method"] == "dmd" and config["_sampling"]["sampler"] == "consistency"


def test_dmd_resumes_exactly(models, tmp_path):
    whole = make_trainer(dmd_run(models, tmp_path / "whole", "distill.regression_weight=0.5"), device="cpu",
                         progress=False)
    whole.fit()
    first = make_trainer(dmd_run(models, tmp_path / "split", "distill.regression_weight=0.5"), device="cpu",
                         progress=False)
    first.fit(max_steps=2)
    resumed = make_trainer(dmd_run(models, tmp_path / "split", "distill.regression_weight=0.5"), resume=True,
                           device="cpu", progress=False)
    assert resumed.step == 2
    resumed.fit()
    for a, b in ((whole.model, resumed.model), (whole.critic, resumed.critic)):
        for name, p in a.named_parameters():
            assert torch.equal(p, dict(b.named_parameters())[name]), name
    assert all(torch.equal(whole.ema[n], resumed.ema[n]) for n in whole.ema)


@pytest.mark.parametrize("override,message", [
    ("distill.method=progressive", "distill.method='progressive'; choose one of ode-regression, dmd"),
    ("distill.critic_updates=0", "distill.critic_updates=0 must be >= 1"),
    ("distill.dmd_t_range=[0.5, 0.2]", r"distill.dmd_t_range=\[0.5, 0.2\] must be 0 <= low < high <= 1"),
])
def test_dmd_settings_errors(models, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        dmd_run(models, tmp_path / "run", override)


def test_dmd_rolls_out_past_the_trained_length(models, tmp_path):
    run = dmd_run(models, tmp_path / "run", "distill.rollout_blocks=6", "distill.rollout_window=2", steps=3)
    trainer = make_trainer(run, device="cpu", progress=False)
    trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {r["block"] for r in log} <= set(range(6)) and "dmd_loss" in log[0]
    with pytest.raises(ValueError, match=r"rollout_blocks=6 is past the trained length \(4 blocks\): set "
                                         r"distill.rollout_window"):
        dmd_run(models, tmp_path / "run", "distill.rollout_blocks=6")
    with pytest.raises(ValueError, match="distill.rollout_window / rollout_sink_blocks: sink_blocks"):
        dmd_run(models, tmp_path / "run", "distill.rollout_blocks=6", "distill.rollout_window=3")


def test_dmd_refuses_a_real_score_of_other_data(models, tmp_path):
    other = save_pretrained(tiny_model(dtype=torch.float32, in_channels=3, num_classes=4), tmp_path / "rgb")
    with pytest.raises(ValueError, match=r"distill.real_score=.*does not model the teacher's samples \(in_channels"):
        dmd_run(models, tmp_path / "run", f"distill.real_score={other}")


def test_regression_runs_refuse_dmd_settings(models, tmp_path):
    teacher, student = models
    with pytest.raises(ValueError, match="distill.init_student applies to method dmd"):
        load_run_config(None, [f"distill.teacher={teacher}", f"distill.init_student={student}",
                               f"train.out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="distill.rollout_blocks applies to method dmd"):
        load_run_config(None, [f"distill.teacher={teacher}", "distill.rollout_blocks=8", f"train.out_dir={tmp_path}"])


def test_exit_settings_are_the_students_first_steps():
    s = exit_settings(TIMESTEPS, 2, True)
    assert isinstance(s, SamplingSettings) and s.step_timesteps == [999, 749] and s.cfg_scale == 1.0
