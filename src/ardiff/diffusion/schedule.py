"""DDPM noise schedule, the epsilon-prediction training loss, and sampler defaults.

The schedule comes from diffusers' ``DDPMScheduler`` (linear betas 1e-4..0.02 over 1000
steps), so training and every diffusers sampling scheduler agree on ``alphas_cumprod``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler


def scheduler_config(model_config) -> dict:
    return dict(
        num_train_timesteps=model_config.num_train_timesteps,
        beta_start=model_config.beta_start,
        beta_end=model_config.beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
    )


def default_sampling_scheduler(model_config) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (order 2), timesteps spaced ``linspace`` (999, 959, ..., 40 for 25 steps)."""
    return DPMSolverMultistepScheduler(
        **scheduler_config(model_config),
        algorithm_type="dpmsolver++",
        solver_order=2,
        timestep_spacing="linspace",
    )


@dataclass
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float64

    @classmethod
    def from_config(cls, model_config) -> "NoiseSchedule":
        ddpm = DDPMScheduler(**scheduler_config(model_config))
        return cls(ddpm.alphas_cumprod.to(torch.float64))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0, noise: (B, T, S, P); t: (B, T) integer timesteps, one per block."""
        ab = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)[..., None, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def training_loss(
    model,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    schedule: NoiseSchedule | None = None,
    generator: torch.Generator | None = None,
    cond_drop_prob: float = 0.0,
) -> torch.Tensor:
    """Epsilon-prediction MSE over the noisy half, timesteps drawn per sample and per block.

    ``cond_drop_prob`` replaces a sample's condition by the null condition (class dropout
    for classifier-free guidance).
    """
    schedule = schedule or NoiseSchedule.from_config(model.config)
    x0 = model.to_blocks(x)
    B, T = x0.shape[:2]
    device = x0.device
    t = torch.randint(0, schedule.num_train_timesteps, (B, T), device=device, generator=generator)
    noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
    x_t = schedule.add_noise(x0, noise, t)
    cond_emb = model.embed_condition(cond)
    if cond_drop_prob > 0:
        drop = torch.rand(B, device=device, generator=generator) < cond_drop_prob
        null = model.null_condition(B)
        if null is not None and cond_emb is not None:
            cond_emb = torch.where(drop[:, None, None], null.expand(B, cond_emb.shape[1], -1), cond_emb)
    pred = model.forward_blocks(x_t, t, cond_emb, x0[:, :-1])
    return F.mse_loss(pred.float(), noise.float())
