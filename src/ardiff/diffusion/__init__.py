from ardiff.diffusion.schedule import NoiseSchedule, default_sampling_scheduler, training_loss

__all__ = ["NoiseSchedule", "default_sampling_scheduler", "training_loss"]
