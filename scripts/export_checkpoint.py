"""Export a training checkpoint's EMA weights as a model directory, to score a run mid-way.

    python scripts/export_checkpoint.py runs/story-arm-pos runs/story-arm-pos/model-step700 [--step 700]

The directory is what the run itself writes at the end (config.json with the run's sampling
settings and data, model.safetensors), so `ardiff sample / eval / acdc benchmark` take it.
Without --step the newest complete checkpoint is used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ardiff.models.acdit import ACDiT
from ardiff.models.checkpoint import save_pretrained
from ardiff.train import checkpoint as ckpt
from ardiff.train.config import build_run_config
from ardiff.train.trainer import model_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run's out_dir (holds checkpoints/)")
    parser.add_argument("out", type=Path, help="model directory to write")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    args = parser.parse_args()
    root = args.run / "checkpoints"
    path = root / f"step_{args.step:08d}" if args.step is not None else ckpt.latest_checkpoint(root)
    if path is None or not path.is_dir():
        raise SystemExit(f"no checkpoint{f' step {args.step}' if args.step is not None else ''} under {root}; "
                         f"have: {', '.join(p.name for p in sorted(root.glob('step_*'))) or 'none'}")
    state = ckpt.read_checkpoint(path)
    run = build_run_config(json.loads((args.run / "run_config.json").read_text()))
    model = ACDiT(run.model)
    model.load_state_dict(state["ema"])
    extra = {**model_record(run), "_checkpoint": {"run": str(args.run), "step": state["trainer_state"].get("step")}}
    save_pretrained(model.eval(), args.out, extra_config=extra)
    print(f"wrote {args.out} (EMA weights of {path})")


if __name__ == "__main__":
    main()
