"""`ardiff demo`: sample the shipped models, score them and write a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ardiff.cli.common import (
    SAMPLER_CHOICES,
    SAMPLING_FLAG_NAMES,
    guidance_scale,
    nonnegative_int,
    output_dir,
    positive_int,
)


def cmd_demo(args) -> int:
    from ardiff.experiments.demo import DemoSettings, run_demo

    settings = DemoSettings(image_model=args.image_model, video_model=args.video_model, num_eval=args.num_eval,
                            num_eval_videos=args.num_eval_videos, seed=args.seed, num_steps=args.steps,
                            sampler=args.sampler, clip_denoised=args.clip_denoised, cfg_scale=args.cfg,
                            video_cfg_scale=args.video_cfg)
    args.flag_names = SAMPLING_FLAG_NAMES
    path = run_demo(Path(args.out), settings, device=args.device)
    print(f"report: {path}")
    return 0


def add_parser(sub) -> None:
    demo = sub.add_parser("demo", help="the main job: sample the shipped models, score them, write a report",
                          description="Sample the shipped image and video models, check that KV-cached sampling "
                                      "equals recomputing the context, score the samples against the Fashion-MNIST "
                                      "test split, and write report.md / report.json (about 3 minutes on 2 cores).")
    demo.add_argument("--out", type=output_dir, default="out/demo", help="output directory")
    demo.add_argument("--image-model", default="fmnist", help="class-conditional image model: a shipped name or "
                                                              "a model directory")
    demo.add_argument("--video-model", default="moving-fmnist", help="class-conditional video model: a shipped "
                                                                     "name or a model directory")
    demo.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    demo.add_argument("--num-eval", type=positive_int, default=300, help="images scored against the test split "
                                                                         "(at least 10)")
    demo.add_argument("--num-eval-videos", type=positive_int, default=40, help="clips scored against test clips")
    demo.add_argument("--steps", type=positive_int, help="denoising steps per block (default: recorded with each "
                                                         "model)")
    demo.add_argument("--sampler", choices=SAMPLER_CHOICES, help="sampler for both models (default: recorded with "
                                                                  "each model, as tuned)")
    demo.add_argument("--clip-denoised", action=argparse.BooleanOptionalAction, default=None,
                      help="clip predicted clean samples to [-1, 1] (default: recorded with each model)")
    demo.add_argument("--cfg", type=guidance_scale, help="image guidance scale (default: recorded with the model)")
    demo.add_argument("--video-cfg", type=guidance_scale, help="video guidance scale (default: recorded with the "
                                                               "model)")
    demo.add_argument("--seed", type=nonnegative_int, default=0)
    demo.set_defaults(func=cmd_demo)
