"""Self-Forcing: distribution-matching distillation (DMD) on the student's own rollouts.

The ODE-regression student (:mod:`ardiff.train.distill`) learns from the teacher's blocks and
averages what it cannot match, so its samples are blurred and less varied. Here the student
instead rolls out whole samples the way it samples (its few-step sampler, its KV cache built
from its own finished blocks) and a distribution-matching loss (DMD, Yin et al. 2024; DMD2)
pulls the distribution of its rollouts towards a real score's:

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean |x - x0_real(x_t)|,   x_t = noised rollout x

``x0_real`` is a frozen diffusion model (the teacher with its guidance, or a full-sequence
model: the real score of Self-Forcing); ``x0_fake`` is a copy trained online, beside the
student, to denoise the student's own rollouts (the critic, ``critic_updates`` updates per
student update). Memory stays bounded as in Self-Forcing: each step draws one exit step
``s`` (the rollout samples every block with the first ``s`` of the student's timesteps) and
one block ``b``; everything runs without gradient except block ``b``'s final step, which is
computed again with it, from the same state and the same (detached) context.

A run is a :class:`Distiller` (resume, checkpoints, EMA, logs, export): the fake score and
its optimizer ride in every checkpoint (``critic.safetensors``, ``critic_optimizer.safetensors``)
and all randomness is a function of (seed, step), so resumed runs are bit-identical.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ardiff.diffusion.schedule import DiffusionLoss, NoiseSchedule, draw_training_randomness, scheduler_step
from ardiff.generate.settings import SamplingSettings
from ardiff.models.acdit import ACDiT
from ardiff.train import checkpoint as ckpt
from ardiff.train.distill import Distiller, predicted_clean
from ardiff.train.trainer import wsd_lr_factor
from ardiff.utils.seeding import TRAINING_NOISE_STREAM, hashed_seed, make_generators
from ardiff.utils.seeding import generator as seeded

__all__ = ["DMDDistiller", "RolloutConditions", "ScoreFunction", "dmd_loss", "rollout", "student_final_step"]

ROLLOUT_STREAM = 4_000_037  # the noise of rollout sample i at step k: hashed_seed(seed, stream, k, i)


# ---------------------------------------------------------------------------
#                 The student's rollout, gradient through one final step
# ---------------------------------------------------------------------------
def exit_settings(timesteps, exit_step: int, clip_denoised: bool) -> SamplingSettings:
    """The student's sampler stopped after ``exit_step`` of its timesteps (its output there)."""
    return SamplingSettings(cfg_scale=1.0, sampler="consistency", num_steps=exit_step,
                            timesteps=tuple(int(t) for t in timesteps[:exit_step]), clip_denoised=clip_denoised)


def student_final_step(student: ACDiT, x: torch.Tensor, context: torch.Tensor, cond, index: int,
                       settings: SamplingSettings) -> torch.Tensor:
    """Block ``index``'s last sampling step from its noisy state ``x`` (B, S, P) with its clean
    context blocks ``context`` (B, n, S, P; the block is denoised at position n): the sampler's
    computation, uncached, so it can carry a gradient."""
    B, position = x.shape[0], context.shape[1]
    scheduler = settings.scheduler(student.config)
    settings.set_timesteps(scheduler, x.device)
    t = scheduler.timesteps[-1]
    emb = student.embed_condition(cond)
    if emb is not None:
        emb = emb.expand(B, -1, -1)[:, index if emb.shape[1] > 1 else 0][:, None]
    c = student.condition_vectors(torch.as_tensor(t, device=x.device).expand(B, 1), emb)
    out = student.run(noisy=x[:, None], noisy_blocks=(position,), cond=c, clean=context if position else None)[:, 0]
    return scheduler_step(scheduler, out, t, None, x)


def rollout(student: ACDiT, cond, timesteps, exit_step: int, chosen_block: int, generators,
            clip_denoised: bool, grad: bool = True, num_blocks: int | None = None, window: int | None = None,
            sink_blocks: int = 0) -> torch.Tensor:
    """The student's samples (B, N, S, P), every block from its own earlier blocks (KV cache),
    sampled with the first ``exit_step`` timesteps. With ``grad`` block ``chosen_block`` is
    recomputed from its last noisy state with gradient; every other value is detached.
    ``num_blocks`` past the trained length rolls the KV window (``window``, ``sink_blocks``) as
    sampling does."""
    from ardiff.generate.context import context_schedule
    from ardiff.generate.sampler import sample

    settings = exit_settings(timesteps, exit_step, clip_denoised)
    N = student.config.num_blocks if num_blocks is None else num_blocks
    state = {}

    def capture(event):
        if event.index == chosen_block and event.step == exit_step - 1:
            state["x"] = event.x.clone()

    blocks = sample(student, cond, settings, generator=generators, output="blocks", on_step=capture if grad else None,
                    num_blocks=N, window=window, sink_blocks=sink_blocks)
    if not grad:
        return blocks
    context = list(context_schedule(N, student.config.num_blocks, window, sink_blocks)[chosen_block])
    final = student_final_step(student, state["x"], blocks[:, context], cond, chosen_block, settings)
    return torch.cat([blocks[:, :chosen_block], final[:, None].to(blocks.dtype), blocks[:, chosen_block + 1:]], 1)


# ---------------------------------------------------------------------------
#                     Scores and the distribution-matching loss
# ---------------------------------------------------------------------------
class ScoreFunction:
    """A diffusion model read as a denoiser: the clean sample it predicts from ``x_t`` (input
    layout), with classifier-free guidance ``cfg_scale`` where ``t / T`` lies in ``interval``.
    Block-causal models see the clean sample's earlier blocks as context (SCAM's clean copies);
    a one-block (full-sequence) model sees the whole noisy sample."""

    def __init__(self, model: ACDiT, cfg_scale: float = 1.0, interval: tuple[float, float] | None = None):
        self.model, self.cfg_scale, self.interval = model, float(cfg_scale), interval
        self.alphas_cumprod = NoiseSchedule.from_config(model.config).alphas_cumprod.to(model.device)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond, context: torch.Tensor) -> torch.Tensor:
        model, B = self.model, x_t.shape[0]
        t_blocks = t[:, None].expand(B, model.config.num_blocks)
        x_t, context = x_t.to(model.dtype), context.to(model.dtype)
        out = model(x_t, t_blocks, cond, context).float()
        if self.cfg_scale != 1.0:
            unconditional = model(x_t, t_blocks, cond, context, drop_cond=torch.ones(B, dtype=torch.bool)).float()
            scale = torch.full((B,), self.cfg_scale, device=x_t.device)
            if self.interval is not None:
                fraction = t.float() / model.config.num_train_timesteps
                inside = (fraction >= self.interval[0]) & (fraction <= self.interval[1])
                scale = torch.where(inside.to(scale.device), scale, torch.ones_like(scale))
            scale = scale.view(B, *[1] * (out.dim() - 1))
            out = unconditional + scale * (out - unconditional)
        ab = self.alphas_cumprod[t].float().view(B, *[1] * (out.dim() - 1))
        return predicted_clean(out, x_t.float(), ab, model.config.prediction_type)


def dmd_loss(x: torch.Tensor, real_clean: torch.Tensor, fake_clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DMD2's surrogate: its gradient in ``x`` is ``(fake - real) / mean|x - real|`` per sample
    (over ``x.numel()``). Returns (loss, the per-sample gradient direction)."""
    with torch.no_grad():
        dims = tuple(range(1, x.dim()))
        weight = 1.0 / (x.float() - real_clean).abs().mean(dim=dims, keepdim=True).clamp_min(1e-6)
        direction = torch.nan_to_num((fake_clean - real_clean) * weight)
        target = (x.float() - direction).detach()
    return 0.5 * F.mse_loss(x.float(), target), direction


class RolloutConditions(torch.utils.data.Dataset):
    """The conditions DMD rolls out for: ``num`` class-balanced labels. The images are
    placeholders (zeros) that the trainer's batching needs and the DMD loss never reads."""

    def __init__(self, num: int, num_classes: int, shape: tuple[int, ...]):
        self.labels = torch.arange(num) % max(num_classes, 1)
        self.blank = torch.zeros(shape)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.blank, self.labels[i]

    def class_labels(self):
        return self.labels.tolist()


# ---------------------------------------------------------------------------
#                                 The run
# ---------------------------------------------------------------------------
class DMDDistiller(Distiller):
    """Self-Forcing DMD as a training run; ``distill.method: dmd``."""

    def build_dataset(self):
        d = self.run.distill
        if d.regression_weight > 0:  # the teacher's trajectories: labels and the regression term
            return super().build_dataset()
        self.timesteps = torch.tensor(d.timesteps, device=self.device)
        shape = (self.run.model.in_channels, *self.run.model.input_size)
        return RolloutConditions(d.num_trajectories, self.run.model.num_classes, shape)

    def build_objective(self):
        from ardiff.models.resolve import resolve_model_dir

        d, cfg = self.run.distill, self.cfg
        if cfg.grad_accum != 1:
            raise ValueError(f"train.grad_accum={cfg.grad_accum}: a DMD run takes one rollout per step; set "
                             f"train.grad_accum: 1 (and a smaller train.batch_size if memory is short)")
        if self.world > 1 and cfg.distributed == "fsdp":
            raise ValueError("distill.method dmd runs with DDP across processes; set train.distributed: ddp")
        teacher_dir = resolve_model_dir(d.teacher)
        recorded = SamplingSettings.recorded(teacher_dir)
        real_dir = resolve_model_dir(d.real_score) if d.real_score else teacher_dir
        real = ACDiT.from_pretrained(real_dir, device=self.device).eval().requires_grad_(False)
        cfg_scale = d.real_cfg if d.real_cfg is not None else (
            d.teacher_cfg if d.teacher_cfg is not None else recorded.cfg_scale)
        interval = d.teacher_guidance_interval or (recorded.guidance_interval if real_dir == teacher_dir else None)
        self.real_score = ScoreFunction(real, cfg_scale, interval)
        # The fake score starts as the real one (conditional, unguided) and follows the rollouts.
        self.critic = ACDiT.from_pretrained(real_dir, device=self.device).train()
        self.fake_score = ScoreFunction(self.critic)
        self.critic_objective = DiffusionLoss(self.critic)
        self.critic_names = {p: n for n, p in self.critic.named_parameters()}
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=d.critic_lr or cfg.lr,
                                                  betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
        self.score_t_range = (int(d.dmd_t_range[0] * (real.config.num_train_timesteps - 1)),
                              int(d.dmd_t_range[1] * (real.config.num_train_timesteps - 1)))
        self.clip_denoised = self.run.sample.clip_denoised
        self.metrics, self.last_dmd_loss = {}, float("nan")  # the loss reported on fake-score-only steps
        if self.is_main:
            print(f"DMD: real score {d.real_score or d.teacher} (CFG {cfg_scale:g}), {d.critic_updates} fake-score "
                  f"updates per student update, student from {d.init_student or d.teacher}")
        return super().build_objective()  # the regression term, when distill.regression_weight > 0

    def _wrap(self, objective):
        return objective  # DDP here averages gradients by hand (two networks, updated at different steps)

    def _average_gradients(self, parameters) -> None:
        if self.world == 1:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    # -- one step: a rollout, maybe a student update, a fake-score update -------------------------
    def draw_dmd_randomness(self, step: int):
        """A step's choices for the global batch: exit step, block, and the score matching's and
        the fake score's timesteps and noise."""
        d, B, T = self.run.distill, self.cfg.batch_size, self.run.model.num_blocks
        g = seeded(hashed_seed(self.cfg.seed, TRAINING_NOISE_STREAM, step))
        exit_step = int(torch.randint(1, len(d.timesteps) + 1, (1,), generator=g))
        N = d.rollout_blocks or T
        block = int(torch.randint(0, N, (1,), generator=g))
        # the scores see the trained length: a window of T blocks that holds the chosen one
        first, last = max(0, block - T + 1), min(block, N - T)
        start = first + int(torch.randint(0, last - first + 1, (1,), generator=g))
        low, high = self.score_t_range
        score_t = torch.randint(low, high + 1, (B,), generator=g)
        score_noise = torch.randn((B, self.run.model.in_channels, *self.run.model.input_size), generator=g)
        critic = draw_training_randomness(self.critic.config, B, g)
        regression = super().draw_step_randomness(g) if d.regression_weight > 0 else None
        return exit_step, block, start, score_t, score_noise, critic, regression

    def train_step(self) -> float:
        cfg, d = self.cfg, self.run.distill
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * wsd_lr_factor(self.step, cfg.steps, cfg.warmup_steps, cfg.decay_fraction)
        exit_step, block, start, score_t, score_noise, critic_rand, regression = self.draw_dmd_randomness(self.step)
        lo = self.rank * self.micro_batch
        sl = slice(lo, lo + self.micro_batch)
        indices = self.global_indices(self.step)[sl]
        _, y = self.batch(indices, self.step, lo)
        cond = self._condition(y)
        generators = make_generators([hashed_seed(cfg.seed, ROLLOUT_STREAM, self.step, i)
                                      for i in range(lo, lo + self.micro_batch)])
        update_student = self.step % d.critic_updates == 0
        blocks = rollout(self.model, cond, d.timesteps, exit_step, block, generators, self.clip_denoised,
                         grad=update_student, num_blocks=d.rollout_blocks, window=d.rollout_window,
                         sink_blocks=d.rollout_sink_blocks)
        x = self.model.from_blocks(blocks[:, start: start + self.run.model.num_blocks])
        metrics = {"exit_step": exit_step, "block": block}
        if update_student:
            metrics.update(self._student_update(x, block - start, cond, score_t[sl].to(self.device),
                                                score_noise[sl].to(self.device), regression, indices, lo))
        metrics.update(self._critic_update(x.detach(), cond, [r[sl].to(self.device) for r in critic_rand]))
        self.metrics = metrics
        return metrics.get("dmd_loss", self.last_dmd_loss)

    def _student_update(self, x, block, cond, t, noise, regression, indices, lo) -> dict:
        cfg, d, model = self.cfg, self.run.distill, self.model
        schedule = self.real_score.alphas_cumprod
        ab = schedule[t].float().view(-1, *[1] * (x.dim() - 1))
        context = x.detach()
        x_t = ab.sqrt() * context + (1 - ab).sqrt() * noise
        with torch.no_grad():
            real = self.real_score(x_t, t, cond, context)
            fake = self.fake_score(x_t, t, cond, context)
        # the chosen block only: every other block is detached
        chosen = model.to_blocks(x)[:, block]
        loss, direction = dmd_loss(chosen, model.to_blocks(real)[:, block], model.to_blocks(fake)[:, block])
        total = loss
        out = {"dmd_loss": loss.item(), "dmd_direction": direction.abs().mean().item(),
               "fake_real_gap": (fake - real).abs().mean().item()}
        if regression is not None:
            (k,) = regression
            term = super().micro_loss(indices, self.step, lo, [k[lo: lo + self.micro_batch]])
            total = total + d.regression_weight * term
            out["regression_loss"] = term.item()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._average_gradients(model.parameters())
        if cfg.grad_clip > 0:
            out["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self._update_ema()
        self.last_dmd_loss = out["dmd_loss"]
        return out

    def _critic_update(self, x, cond, randomness) -> dict:
        t, noise, _ = randomness
        loss = self.critic_objective(x, cond, t, noise)
        self.critic_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._average_gradients(self.critic.parameters())
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.cfg.grad_clip)
        self.critic_optimizer.step()
        return {"critic_loss": loss.item()}

    def extra_metrics(self) -> dict:
        return dict(self.metrics)

    # -- checkpoints: the fake score and its optimizer ride along ------------------------------
    def extra_checkpoint(self):
        weights = {n: ckpt.full_tensor(p.detach()).cpu() for n, p in self.critic.named_parameters()}
        tensors, steps = ckpt.optimizer_tensors(self.critic_optimizer, self.critic_names)
        return ({"critic": weights, "critic_optimizer": tensors},
                {"critic_optimizer_steps": steps, "last_dmd_loss": self.last_dmd_loss})

    def load_extra_checkpoint(self, files, state):
        if "critic" not in files:
            raise ValueError("--resume: the checkpoint has no fake score (critic.safetensors): it was not written "
                             "by a DMD run; resume it with its own config")
        with torch.no_grad():
            for n, p in self.critic.named_parameters():
                p.copy_(ckpt.like(p, files["critic"][n]))
        ckpt.load_optimizer_tensors(self.critic_optimizer, self.critic_names, files.get("critic_optimizer", {}),
                                    state.get("critic_optimizer_steps", {}))
        self.last_dmd_loss = state.get("last_dmd_loss", float("nan"))
