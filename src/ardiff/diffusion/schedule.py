"""DDPM noise schedule, the epsilon-prediction training loss, and sampler defaults.

The schedule comes from diffusers' ``DDPMScheduler`` (linear betas 1e-4..0.02 over 1000
steps), so training and every diffusers sampling scheduler agree on ``alphas_cumprod``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler


def scheduler_config(model_config) -> dict:
    return dict(
        num_train_timesteps=model_config.num_train_timesteps,
        beta_start=model_config.beta_start,
        beta_end=model_config.beta_end,
        beta_schedule="linear",
        prediction_type=model_config.prediction_type,
    )


# Samplers by name, as recorded with a model (``_sampling.sampler``) and taken by the CLI.
# The ODE solver is the default: deterministic given the initial noise, so cached and
# uncached runs, or a run and its continuation, can be compared bit for bit. The SDE
# variants add fresh noise at every step, which corrects a weak model's errors on the
# way down (measured: class accuracy of the shipped models, docs/training-log.md).
# The "-karras" variants place their steps on Karras et al.'s (2022) noise levels (rho = 7)
# instead of evenly in t: 25 steps visit 999, 977, ..., 24, 10, 3, where texture is made,
# instead of 999, 959, ..., 80, 40 (measured on the shipped fmnist model: docs/training-log.md).
# DDIM and DDPM are built with clip_sample=False: diffusers clips their predicted clean
# sample by default, which would silently change results for latent-space models and make
# them disagree with the DPM solvers. Clipping is an explicit choice (``clip_denoised``).
KARRAS_SUFFIX = "-karras"  # a sampler name's suffix: the same solver on Karras noise levels
SAMPLERS = {
    "dpmsolver++": (DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
    "sde-dpmsolver++": (DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=2)),
    "dpmsolver++-karras": (DPMSolverMultistepScheduler,
                           dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
    "sde-dpmsolver++-karras": (DPMSolverMultistepScheduler,
                               dict(algorithm_type="sde-dpmsolver++", solver_order=2, use_karras_sigmas=True)),
    "ddim": (DDIMScheduler, dict(clip_sample=False)),
    "ddpm": (DDPMScheduler, dict(clip_sample=False)),
    # The few-step students' sampler (multistep consistency sampling, diffusers' LCM
    # scheduler): each step predicts the clean block and re-noises it with fresh noise to the
    # next timestep. ``original_inference_steps=num_train_timesteps`` lets any timestep be
    # one of a student's (SamplingSettings.timesteps).
    "consistency": (LCMScheduler, dict(clip_sample=False, original_inference_steps=1000)),
}
DEFAULT_SAMPLER = "dpmsolver++"
PIXEL_RANGE = 1.0  # pixel-space data lives in [-1, 1]


def check_sampler(sampler: str, what: str = "sampler") -> str:
    """``sampler`` if it names one of :data:`SAMPLERS`, else an error naming ``what`` and the choices."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown {what} {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return sampler


def sampling_scheduler(model_config, sampler: str = DEFAULT_SAMPLER, clip_denoised: bool = False):
    """A diffusers scheduler for ``sampler`` (a key of :data:`SAMPLERS`) on the model's noise
    schedule, timesteps spaced ``linspace`` (999, 959, ..., 40 for 25 steps) unless the
    sampler's name says ``-karras``.

    clip_denoised: clip the clean sample predicted at every step to [-1, 1], the pixel data
    range (for pixel-space models: it keeps guided predictions from overshooting the range
    the model was trained on). Never for latent-space models, whose values are not bounded
    by 1.
    """
    cls, kwargs = SAMPLERS[check_sampler(sampler)]
    if cls is LCMScheduler:
        kwargs = dict(kwargs, original_inference_steps=model_config.num_train_timesteps)
    if clip_denoised:
        # DPM-Solver's thresholding with a maximum of 1 is a plain clip to [-1, 1].
        kwargs = (dict(kwargs, thresholding=True, sample_max_value=PIXEL_RANGE) if cls is DPMSolverMultistepScheduler
                  else dict(kwargs, clip_sample=True, clip_sample_range=PIXEL_RANGE))
    return cls(**scheduler_config(model_config), timestep_spacing="linspace", **kwargs)


def ddim_step(scheduler, model_output: torch.Tensor, timestep: int, prev_timestep: int | None,
              sample: torch.Tensor) -> torch.Tensor:
    """One deterministic (eta = 0) DDIM update from ``timestep`` to ``prev_timestep``.

    ``DDIMScheduler.step`` infers the previous timestep as ``t - T // num_inference_steps``,
    which is wrong for a schedule that is not a uniform grid of the full range (and DDIM takes
    no custom timesteps), so the update is written here with the scheduler's own alphas,
    prediction type and clipping (epsilon re-derived from the clipped sample). ``prev_timestep``
    None (or < 0) means the final (clean) level.
    """
    config = scheduler.config
    alphas = scheduler.alphas_cumprod.to(sample.device)
    alpha_t = alphas[timestep]
    if prev_timestep is None or prev_timestep < 0:
        alpha_prev = torch.as_tensor(scheduler.final_alpha_cumprod, device=sample.device)
    else:
        alpha_prev = alphas[prev_timestep]
    beta_t = 1 - alpha_t
    if config.prediction_type == "epsilon":
        x0, eps = (sample - beta_t.sqrt() * model_output) / alpha_t.sqrt(), model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (sample - alpha_t.sqrt() * x0) / beta_t.sqrt()
    elif config.prediction_type == "v_prediction":
        x0 = alpha_t.sqrt() * sample - beta_t.sqrt() * model_output
        eps = alpha_t.sqrt() * model_output + beta_t.sqrt() * sample
    else:
        raise ValueError(f"scheduler prediction_type={config.prediction_type!r}: expected epsilon, sample or "
                         "v_prediction")
    if config.thresholding or config.clip_sample:
        x0 = (scheduler._threshold_sample(x0) if config.thresholding
              else x0.clamp(-config.clip_sample_range, config.clip_sample_range))
        # step along the clipped prediction, not the model's raw epsilon (see scheduler_step)
        eps = (sample - alpha_t.sqrt() * x0) / beta_t.sqrt()
    return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def scheduler_step(scheduler, model_output: torch.Tensor, timestep, next_timestep, sample: torch.Tensor,
                   generator=None) -> torch.Tensor:
    """One sampling step from ``timestep`` to ``next_timestep`` (None: the clean end).

    DDIM takes :func:`ddim_step` with the real next timestep: ``DDIMScheduler.step`` guesses it
    as ``t - T // steps``, off the ``linspace`` grid (999, 957, 916, ... for 25 steps), and by
    default steps along the model's raw epsilon after clipping its clean sample (measured on
    the shipped ``fmnist`` model, 100 samples, CFG 3, clipped: class accuracy 0.57 at 25 steps
    and 0.27 at 100; with this step 0.95 and 0.96). Every other scheduler steps itself.
    """
    if isinstance(scheduler, DDIMScheduler):
        return ddim_step(scheduler, model_output, int(timestep), None if next_timestep is None else int(next_timestep),
                         sample)
    return scheduler.step(model_output, timestep, sample, generator=generator).prev_sample


def default_sampling_scheduler(model_config) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (order 2, the ODE solver), timesteps spaced ``linspace``."""
    return sampling_scheduler(model_config, DEFAULT_SAMPLER)


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


def draw_training_randomness(model_config, batch_size: int, generator: torch.Generator | None = None,
                             device=None, dtype=torch.float32, cond_drop_prob: float = 0.0):
    """Timesteps (B, T), noise (B, T, S, P) and CFG dropout mask (B,) for one batch.

    Drawn in a fixed order from one generator, so a trainer can draw the *global* batch
    on every process and slice its share: results then do not depend on how the batch
    is split over processes or accumulation steps.
    """
    c = model_config
    t = torch.randint(0, c.num_train_timesteps, (batch_size, c.num_blocks), generator=generator)
    noise = torch.randn((batch_size, c.num_blocks, c.block_size, c.patch_dim), generator=generator)
    drop = torch.rand(batch_size, generator=generator) < cond_drop_prob
    return t.to(device), noise.to(device=device, dtype=dtype), drop.to(device)


TIMESTEP_WEIGHTINGS = ("uniform", "p2")


def timestep_loss_weights(alphas_cumprod: torch.Tensor, weighting: str = "uniform", k: float = 1.0,
                          gamma: float = 1.0) -> torch.Tensor | None:
    """Weight of every training timestep's epsilon-MSE, normalised to mean 1 (None: uniform).

    ``p2`` is perception-prioritised weighting (Choi et al., 2022): ``(k + SNR(t)) ** -gamma``.
    Epsilon-MSE gives the high-noise steps, where a sample's content and layout are decided
    from the condition, almost no weight in pixel terms (an epsilon error is divided by
    sqrt(SNR) on its way to the predicted clean sample); P2 moves weight from the
    low-noise steps, which only polish detail, to those.
    """
    if weighting == "uniform":
        return None
    if weighting != "p2":
        raise ValueError(f"unknown timestep weighting {weighting!r}; choose one of {', '.join(TIMESTEP_WEIGHTINGS)}")
    if k <= 0 or gamma < 0:
        raise ValueError(f"p2 weighting needs k > 0 and gamma >= 0, got k={k}, gamma={gamma}")
    snr = alphas_cumprod / (1 - alphas_cumprod)
    w = (k + snr) ** -gamma
    return (w / w.mean()).float()


class DiffusionLoss(torch.nn.Module):
    """The training objective as a module, so DDP/FSDP wrappers see one ``forward``.

    Epsilon- (or v-) prediction MSE over the noisy half; timesteps per sample and per block, each
    (sample, block) MSE optionally weighted by its timestep (:func:`timestep_loss_weights`)
    and by its block.
    """

    def __init__(self, model, block_weights=None, timestep_weighting: str = "uniform", p2_k: float = 1.0,
                 p2_gamma: float = 1.0):
        super().__init__()
        self.model = model
        self.schedule = NoiseSchedule.from_config(model.config)
        w = timestep_loss_weights(self.schedule.alphas_cumprod, timestep_weighting, p2_k, p2_gamma)
        self.timestep_weights = None if w is None else w.to(model.device)
        self.block_weights = None
        if block_weights is not None:
            w = torch.as_tensor(block_weights, dtype=torch.float32)
            if w.shape != (model.config.num_blocks,) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(
                    f"block loss weights {list(block_weights)} must be {model.config.num_blocks} numbers >= 0 "
                    f"with a positive sum, one per block of the model")
            if not (w == w[0]).all():  # equal weights: the plain mean, bit for bit
                self.block_weights = (w / w.mean()).to(model.device)  # on the model's device: no copy per step

    def _prediction(self, x, cond, t, noise, drop=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's prediction for every block and its target, each (B, T, S, P): the noise
        (epsilon models) or ``sqrt(a) noise - sqrt(1 - a) x0`` (v-prediction models)."""
        model = self.model
        x0 = model.to_blocks(x)
        x_t = model.from_blocks(self.schedule.add_noise(x0, noise.to(x0.dtype), t))
        prediction = model.to_blocks(model(x_t, t, cond, x, drop_cond=drop)).float()
        if model.config.prediction_type == "epsilon":
            return prediction, noise.float()
        ab = self.schedule.alphas_cumprod.to(x0.device)[t].float()[..., None, None]
        return prediction, ab.sqrt() * noise.float() - (1 - ab).sqrt() * x0.float()

    def per_item(self, x, cond, t, noise, drop=None) -> torch.Tensor:
        """The unweighted MSE of every (sample, block), (B, T): what ``forward`` weighs."""
        prediction, target = self._prediction(x, cond, t, noise, drop)
        return (prediction - target).square().mean(dim=(2, 3))

    def forward(self, x, cond, t, noise, drop=None):
        if self.block_weights is None and self.timestep_weights is None:
            return F.mse_loss(*self._prediction(x, cond, t, noise, drop))
        per_item = self.per_item(x, cond, t, noise, drop)  # (B, T)
        if self.timestep_weights is not None:
            per_item = per_item * self.timestep_weights.to(per_item.device)[t]
        per_block = per_item.mean(dim=0)
        if self.block_weights is None:
            return per_block.mean()
        return (per_block * self.block_weights.to(per_block.device)).mean()


def training_loss(
    model,
    x: torch.Tensor,
    cond: torch.Tensor | None,
    *,
    generator: torch.Generator | None = None,
    cond_drop_prob: float = 0.0,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    drop: torch.Tensor | None = None,
    block_weights=None,
    timestep_weighting: str = "uniform",
) -> torch.Tensor:
    """Epsilon-prediction MSE, timesteps drawn per sample and per block.

    ``cond_drop_prob`` replaces a sample's condition by the null condition (class dropout
    for classifier-free guidance). ``t``/``noise``/``drop`` may be given explicitly
    (see :func:`draw_training_randomness`). ``block_weights`` (one per block) weighs each
    block's MSE; they are normalised to mean 1, so equal weights give the plain mean.
    ``timestep_weighting`` names a :func:`timestep_loss_weights` scheme (default parameters).
    """
    if t is None or noise is None:
        t, noise, drop = draw_training_randomness(model.config, x.shape[0], generator, x.device, x.dtype,
                                                  cond_drop_prob)
    return DiffusionLoss(model, block_weights, timestep_weighting)(x, cond, t, noise, drop)
