"""Exact SDEdit schedules, shared by every corrector (diffusers-based and native).

Diffusers' img2img pipelines take a ``strength`` and truncate the schedule to
``int(steps * strength)`` steps of the full schedule, so the noise level used differs from the
one asked for. ACDC's t' is a controlled variable: here the t' asked for is the t' used.

The exact-t' convention (T = num_train_timesteps, S = num_inference_steps):

* ``N = round(t' * T)`` training timesteps are covered; the chain starts at
  ``t_start = N - 1`` (the highest of them, clamped to [0, T - 1]) and the effective
  ``t' = N / T`` is reported back, so it equals the requested value whenever ``t' * T`` is
  an integer (t' = 1 -> t_start = T - 1, the last training timestep; t' = 0.5 -> 499).
* the clean latents are noised to exactly ``t_start`` with ``scheduler.add_noise``;
* ``n = round(t' * S)`` DDIM steps (eta = 0) follow, at ``t_k = floor(N * (n - k) / n) - 1``
  for k = 0..n-1: evenly spaced from t_start down to the clean end, each step going to the
  next and the last one to the scheduler's final alpha (clean). This is diffusers' "trailing"
  spacing on the first N training timesteps (at t' = 1 it is that spacing exactly), so the
  last model call is never a wasted step from t = 0 to t = 0. ``t' * S < 1`` is refused.

Rounding is half-up (not Python's half-to-even), so 0.55 * 10 = 5.5 gives 6 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def round_half_up(x: float) -> int:
    """Round to the nearest integer, ties up; ``1e-9`` absorbs float noise such as 0.29 * 100."""
    return math.floor(x + 0.5 + 1e-9)


@dataclass(frozen=True)
class SDEditSchedule:
    """Where an SDEdit run starts and which timesteps it denoises at."""

    t_prime: float  # effective noise level, (t_start + 1) / num_train_timesteps
    t_start: int  # the timestep the clean latents are noised to (= timesteps[0])
    timesteps: list[int]  # the model is evaluated at these, in order


def sdedit_schedule(t_prime: float, num_train_timesteps: int, num_inference_steps: int) -> SDEditSchedule:
    """The exact-t' schedule described in the module docstring."""
    if not 0 < t_prime <= 1:
        raise ValueError(f"t_prime={t_prime} must be in (0, 1] (fraction of the training timesteps)")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} must be in 1..{num_train_timesteps} "
                         "(num_train_timesteps of the scheduler)")
    if t_prime * num_inference_steps < 1 - 1e-9:
        raise ValueError(
            f"t_prime={t_prime} with num_inference_steps={num_inference_steps} gives "
            f"t_prime * num_inference_steps = {t_prime * num_inference_steps:.4g} < 1, i.e. no denoising step; "
            f"raise t_prime to at least {1 / num_inference_steps:.4g} or num_inference_steps to at least "
            f"{math.ceil(1 / t_prime - 1e-9)}")
    covered = min(max(round_half_up(t_prime * num_train_timesteps), 1), num_train_timesteps)
    steps = round_half_up(t_prime * num_inference_steps)  # <= covered because S <= T
    # Integer arithmetic: stride covered / steps >= 1, so floor gives distinct timesteps.
    timesteps = [covered * (steps - k) // steps - 1 for k in range(steps)]
    return SDEditSchedule(t_prime=covered / num_train_timesteps, t_start=timesteps[0], timesteps=timesteps)
