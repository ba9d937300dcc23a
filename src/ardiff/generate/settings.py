"""How a model is meant to be sampled: the settings recorded with it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ardiff.diffusion.schedule import DEFAULT_SAMPLER, check_sampler, sampling_scheduler


@dataclass(frozen=True)
class SamplingSettings:
    """The settings a model's training run recorded with it (``_sampling`` in config.json, as
    tuned), which the CLI, ``ardiff eval``, the demo and the benchmarks use unless told
    otherwise: ``SamplingSettings.recorded(model_dir).but(cfg_scale=...)``."""

    cfg_scale: float = 1.5
    num_steps: int = 25
    sampler: str = DEFAULT_SAMPLER  # a key of ardiff.diffusion.SAMPLERS
    clip_denoised: bool = False  # clip predicted clean samples to [-1, 1] (pixel-space models only)
    history_scale: float = 1.0  # history guidance, video models with whole-frame blocks (1 = off)
    guidance_interval: tuple[float, float] | None = None  # guide only LOW <= t/T <= HIGH (None: every step)

    def __post_init__(self):
        check_sampler(self.sampler)
        interval = check_guidance_interval(self.guidance_interval)
        # (0, 1) guides every step: stored as None, so it reads (and records) as "no interval"
        object.__setattr__(self, "guidance_interval", None if interval == (0.0, 1.0) else interval)
        if self.num_steps < 1:
            raise ValueError(f"num_steps={self.num_steps} must be >= 1")
        if not self.history_scale >= 1.0:
            raise ValueError(f"history_scale={self.history_scale} must be >= 1 (1 = off)")

    @classmethod
    def recorded(cls, model_dir: str | os.PathLike) -> "SamplingSettings":
        """The settings recorded in ``model_dir``; defaults for what it does not record."""
        from ardiff.models.checkpoint import load_extras

        raw = load_extras(model_dir).get("sampling", {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{model_dir}/config.json: unknown _sampling keys {unknown}; known: {sorted(known)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{model_dir}/config.json: _sampling: {error}") from None

    def but(self, **changes) -> "SamplingSettings":
        """A copy with the given fields changed; ``None`` values keep the recorded ones."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def scheduler(self, model_config):
        return sampling_scheduler(model_config, self.sampler, self.clip_denoised)

    def sample_kwargs(self) -> dict:
        """These settings as keyword arguments of :func:`ardiff.generate.sample`."""
        return dict(num_steps=self.num_steps, cfg_scale=self.cfg_scale, scheduler=self.sampler,
                    clip_denoised=self.clip_denoised, history_scale=self.history_scale,
                    guidance_interval=self.guidance_interval)


def describe_interval(interval: tuple[float, float] | None) -> str:
    """" at t/T in [low, high]" for reports; "" when every step is guided."""
    return "" if interval is None else f" at t/T in [{interval[0]:g}, {interval[1]:g}]"


def check_guidance_interval(interval) -> tuple[float, float] | None:
    """``interval`` as ``(low, high)`` floats, or ``None``; raises on anything else."""
    if interval is None:
        return None
    values = tuple(float(v) for v in interval)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        raise ValueError(f"guidance_interval={tuple(interval)} must be (low, high) with 0 <= low < high <= 1 "
                         f"(fractions of the training timesteps: 0 = clean, 1 = pure noise)")
    return values
