"""Any run from its config: a :class:`Trainer`, a :class:`Distiller` (``distill`` section) or a
:class:`DMDDistiller` (``distill.method: dmd``)."""

from __future__ import annotations

from ardiff.train.config import RunConfig
from ardiff.train.distill import Distiller
from ardiff.train.dmd import DMDDistiller
from ardiff.train.trainer import Trainer

__all__ = ["make_trainer", "train"]


def make_trainer(run: RunConfig, **kwargs) -> Trainer:
    """The trainer for ``run``."""
    if run.distill is None:
        return Trainer(run, **kwargs)
    return (DMDDistiller if run.distill.method == "dmd" else Distiller)(run, **kwargs)


def train(run: RunConfig, resume: bool = False, **kwargs) -> Trainer:
    trainer = make_trainer(run, resume=resume, **kwargs)
    trainer.fit()
    return trainer
