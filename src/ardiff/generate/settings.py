"""How a model is meant to be sampled: the settings recorded with it.

A :class:`SamplingSettings` is the one object every sampling path takes: ``sample()``, the
:class:`~ardiff.generate.pipeline.Pipeline`, evaluation, sample files, the demo and the
experiments. Each setting is checked here, once; "off" has one spelling per setting
(``cfg_scale=1``, ``history_scale=1``, ``guidance_interval=None``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

from ardiff.diffusion.schedule import DEFAULT_SAMPLER, check_sampler, sampling_scheduler


@dataclass(frozen=True)
class SamplingSettings:
    """The settings a model's training run recorded with it (``_sampling`` in config.json, as
    tuned), which every sampling path uses unless told otherwise:
    ``SamplingSettings.recorded(model_dir).but(cfg_scale=...)``."""

    cfg_scale: float = 1.5  # classifier-free guidance u + s (c - u); 1 = off (the conditional branch alone)
    num_steps: int = 25
    sampler: str = DEFAULT_SAMPLER  # a key of ardiff.diffusion.SAMPLERS
    clip_denoised: bool = False  # clip predicted clean samples to [-1, 1] (pixel-space models only)
    history_scale: float = 1.0  # history guidance, video models with whole-frame blocks (1 = off)
    guidance_interval: tuple[float, float] | None = None  # guide only LOW <= t/T <= HIGH (None: every step)
    # The timesteps a few-step student was distilled at (sampler "consistency"), highest first;
    # num_steps < len(timesteps) samples at an evenly spaced subset (4 -> 2: the 1st and 3rd).
    # DPM-Solver takes them too (a teacher's ODE through a student's timesteps).
    timesteps: tuple[int, ...] | None = None

    def __post_init__(self):
        check_sampler(self.sampler)
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps!r} must be a whole number >= 1")
        if not _finite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale!r} must be a finite number >= 0 (1 turns guidance off)")
        if not _finite(self.history_scale) or self.history_scale < 1.0:
            raise ValueError(f"history_scale={self.history_scale!r} must be >= 1 (1 = off; e.g. 1.5)")
        if not isinstance(self.clip_denoised, bool):
            raise ValueError(f"clip_denoised={self.clip_denoised!r} must be true or false")
        object.__setattr__(self, "timesteps", check_timesteps(self.timesteps, self.sampler, self.num_steps))
        interval = check_guidance_interval(self.guidance_interval)
        # (0, 1) guides every step: stored as None, so it reads (and records) as "no interval"
        object.__setattr__(self, "guidance_interval", None if interval == (0.0, 1.0) else interval)
        object.__setattr__(self, "cfg_scale", float(self.cfg_scale))
        object.__setattr__(self, "history_scale", float(self.history_scale))

    # -- construction ----------------------------------------------------------
    @classmethod
    def recorded(cls, model_dir: str | os.PathLike) -> "SamplingSettings":
        """The settings recorded in ``model_dir``; defaults for what it does not record."""
        from ardiff.models.checkpoint import load_extras

        return cls.from_record(load_extras(model_dir).get("sampling", {}), f"{model_dir}/config.json: _sampling")

    @classmethod
    def from_record(cls, raw: dict, source: str = "_sampling") -> "SamplingSettings":
        """Settings from a recorded dict (``_sampling``, a run config's ``sample`` section); errors name ``source``."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a mapping of sampling settings, got {raw!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    def but(self, **changes) -> "SamplingSettings":
        """A copy with the given fields changed; ``None`` values keep the recorded ones."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        """The settings as recorded in ``_sampling`` (JSON types)."""
        d = dataclasses.asdict(self)
        d["guidance_interval"] = None if self.guidance_interval is None else list(self.guidance_interval)
        if self.timesteps is None:
            del d["timesteps"]  # records of samplers that take none stay as they were
        else:
            d["timesteps"] = list(self.timesteps)
        return d

    # -- what they mean ----------------------------------------------------------
    @property
    def guided(self) -> bool:
        """Whether classifier-free guidance runs (a second, unconditional branch on guided steps)."""
        return self.cfg_scale != 1.0

    def guided_at(self, t, num_train_timesteps: int) -> bool:
        """Whether a step at timestep ``t`` is inside the guidance interval."""
        if self.guidance_interval is None:
            return True
        low, high = self.guidance_interval
        return low <= float(t) / num_train_timesteps <= high

    def scheduler(self, model_config):
        return sampling_scheduler(model_config, self.sampler, self.clip_denoised)

    @property
    def step_timesteps(self) -> list[int] | None:
        """The timesteps this many steps visit (an evenly spaced subset of ``timesteps``), or
        None to let the sampler space ``num_steps`` itself."""
        if self.timesteps is None:
            return None
        K, n = len(self.timesteps), self.num_steps
        return [self.timesteps[i * K // n] for i in range(n)]

    def set_timesteps(self, scheduler, device=None) -> None:
        """Set a (fresh) diffusers scheduler to the steps of these settings."""
        if self.timesteps is None:
            scheduler.set_timesteps(self.num_steps, device=device)
        else:
            scheduler.set_timesteps(timesteps=self.step_timesteps, device=device)

    def branches_per_step(self, model_config) -> list[int]:
        """Model evaluations of every step of a block: 2 where guidance runs, else 1."""
        scheduler = self.scheduler(model_config)
        self.set_timesteps(scheduler)
        return [2 if self.guided and self.guided_at(t, model_config.num_train_timesteps) else 1
                for t in scheduler.timesteps]

    def evaluations_per_block(self, model_config) -> int:
        """Model evaluations per block: one per step, two on the guided steps (inside the interval)."""
        return sum(self.branches_per_step(model_config)) if self.guided else self.num_steps

    def check_for(self, model_config, latent: bool = False, source: str = "") -> None:
        """Raise unless a model of ``model_config`` can be sampled with these settings: guidance
        needs a conditional model, history guidance whole-frame video blocks, clipping pixels."""
        from ardiff.generate.context import check_frame_blocks

        where = f"{source}: " if source else ""
        if self.guided and not (model_config.num_classes or model_config.cond_dim):
            raise ValueError(f"{where}cfg_scale={self.cfg_scale:g} needs a conditional model (num_classes or "
                             f"cond_dim > 0); this one is unconditional: use cfg_scale=1")
        if self.history_scale != 1.0:
            try:
                check_frame_blocks(model_config, "history guidance (history_scale)")
            except ValueError as e:
                raise ValueError(f"{where}{e}; use history_scale=1 for this model") from None
        if self.timesteps is not None and max(self.timesteps) >= model_config.num_train_timesteps:
            T = model_config.num_train_timesteps
            raise ValueError(f"{where}timesteps {list(self.timesteps)} reach past the model's {T} training timesteps "
                             f"(0..{T - 1})")
        if latent and self.clip_denoised:
            raise ValueError(f"{where}clip_denoised clips to the pixel range [-1, 1]; this model generates VAE "
                             f"latents: use clip_denoised=False")

    def describe(self) -> str:
        """The settings in words, for reports and command output."""
        from ardiff.diffusion.schedule import KARRAS_SUFFIX

        solver = self.sampler.removesuffix(KARRAS_SUFFIX)
        levels = " on Karras noise levels" if self.sampler.endswith(KARRAS_SUFFIX) else ""
        history = f", history guidance {self.history_scale:g}" if self.history_scale != 1.0 else ""
        clip = ", predicted clean samples clipped to [-1, 1]" if self.clip_denoised else ""
        at = "" if self.timesteps is None else f" (t = {', '.join(map(str, self.step_timesteps))})"
        return (f"{self.num_steps} {SAMPLER_NAMES.get(solver, solver)} steps per block{at}{levels}, "
                f"CFG {self.cfg_scale:g}{describe_interval(self.guidance_interval)}{history}{clip}")


SAMPLER_NAMES = {"dpmsolver++": "DPM-Solver++ (ODE)", "sde-dpmsolver++": "SDE-DPM-Solver++", "ddim": "DDIM",
                 "ddpm": "DDPM", "consistency": "consistency (predict clean, re-noise)"}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def describe_interval(interval: tuple[float, float] | None) -> str:
    """" at t/T in [low, high]" for reports; "" when every step is guided."""
    return "" if interval is None else f" at t/T in [{interval[0]:g}, {interval[1]:g}]"


# Samplers that step through given timesteps (diffusers' LCM and DPM-Solver on the plain grid).
TIMESTEP_SAMPLERS = ("consistency", "dpmsolver++", "sde-dpmsolver++")


def check_timesteps(timesteps, sampler: str, num_steps: int) -> tuple[int, ...] | None:
    """``timesteps`` as a strictly decreasing tuple of whole timesteps >= 0, or None; raises on
    anything else, on a sampler that takes none, and on more steps than timesteps."""
    if timesteps is None:
        return None
    if sampler not in TIMESTEP_SAMPLERS:
        raise ValueError(f"timesteps={list(timesteps) if isinstance(timesteps, (list, tuple)) else timesteps!r} need "
                         f"a sampler that takes given timesteps ({', '.join(TIMESTEP_SAMPLERS)}); sampler {sampler!r} "
                         f"spaces its own steps")
    try:
        values = tuple(int(v) for v in timesteps if not isinstance(v, bool) and float(v) == int(v))
    except (TypeError, ValueError):
        values = ()
    if (not values or len(values) != len(timesteps) or min(values) < 0
            or any(a <= b for a, b in zip(values, values[1:]))):
        raise ValueError(f"timesteps={timesteps!r} must be whole timesteps >= 0, highest first (e.g. [999, 749, "
                         f"499, 249])")
    if num_steps > len(values):
        raise ValueError(f"num_steps={num_steps}: the student was distilled at {len(values)} timesteps "
                         f"{list(values)}; use 1 to {len(values)} steps")
    return values


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """``interval`` as ``(low, high)`` floats, or ``None``; raises on anything else."""
    if interval is None:
        return None
    try:
        values = tuple(float(v) for v in interval)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        shown = tuple(interval) if isinstance(interval, (list, tuple)) else interval
        raise ValueError(f"guidance_interval={shown} must be (low, high) with 0 <= low < high <= 1 "
                         f"(fractions of the training timesteps: 0 = clean, 1 = pure noise)")
    return values
