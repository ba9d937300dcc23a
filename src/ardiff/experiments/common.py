"""What the experiment drivers share: the settings the story and video tables run with,
markdown tables, atomic JSON and plot set-up."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ardiff.utils.io import atomic_write_json


@dataclass
class CorrectionSettings:
    """What the story benchmark and the video table share: the rolling window, t', the ARM's
    and the corrector's steps and guidance, the seed."""

    window: int = 4  # rolling KV window past the trained length (blocks), plus sink_blocks from the start
    sink_blocks: int = 1
    t_prime: float = 0.5
    arm_steps: int = 25
    arm_cfg: float | None = None  # None: the model's recorded setting
    corrector_steps: int = 25
    corrector_cfg: float | None = None
    seed: int = 0


def paired_cell(before, after) -> str:
    """``after - before`` over paired items with its bootstrap 95% interval, as a table cell."""
    from ardiff.eval.metrics import paired_bootstrap

    mean, lo, hi = paired_bootstrap(before, after)
    return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(str(c) for c in row) + " |" for row in rows]]


def check_reusable(path: str | os.PathLike, recorded: dict, wanted: dict) -> None:
    """A finished setting (``path``, its JSON) is reused only if it was made with the run
    parameters this run asks for (``wanted``; its ``made_with`` record). Parameters a file
    does not record (files written before the record existed) are not compared."""
    made_with = recorded.get("made_with", {})
    differ = sorted(k for k in wanted if k in made_with and made_with[k] != wanted[k])
    if differ:
        was = ", ".join(f"{k}={made_with[k]!r}" for k in differ)
        now = ", ".join(f"{k}={wanted[k]!r}" for k in differ)
        raise ValueError(f"{path} was made with {was}, but this run asks for {now}: give another --out, or delete "
                         f"{Path(path).name} and its .safetensors to make the setting again")


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Results are written atomically: a present JSON file is a complete one."""
    atomic_write_json(path, data, indent=1)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (the ``plots`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
