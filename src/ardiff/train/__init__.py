from ardiff.train.config import DataConfig, RunConfig, SampleConfig, TrainConfig, load_run_config
from ardiff.train.trainer import Trainer, train

__all__ = ["DataConfig", "RunConfig", "SampleConfig", "TrainConfig", "Trainer", "load_run_config", "train"]
