from ardiff.diffusion.schedule import (
    DiffusionLoss,
    NoiseSchedule,
    default_sampling_scheduler,
    draw_training_randomness,
    training_loss,
)

__all__ = ["DiffusionLoss", "draw_training_randomness", "NoiseSchedule", "default_sampling_scheduler", "training_loss"]
