from ardiff.diffusion.schedule import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    DiffusionLoss,
    NoiseSchedule,
    default_sampling_scheduler,
    draw_training_randomness,
    sampling_scheduler,
    training_loss,
)

__all__ = ["DEFAULT_SAMPLER", "DiffusionLoss", "draw_training_randomness", "NoiseSchedule", "SAMPLERS",
           "default_sampling_scheduler", "sampling_scheduler", "training_loss"]
