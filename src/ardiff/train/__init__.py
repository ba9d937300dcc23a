from ardiff.train.config import DataConfig, DistillConfig, RunConfig, SampleConfig, TrainConfig, load_run_config
from ardiff.train.distill import Distiller
from ardiff.train.runs import make_trainer, train
from ardiff.train.trainer import Trainer

__all__ = ["DataConfig", "DistillConfig", "Distiller", "RunConfig", "SampleConfig", "TrainConfig", "Trainer",
           "load_run_config", "make_trainer", "train"]
