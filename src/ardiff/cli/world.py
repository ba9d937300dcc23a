"""`ardiff world`: render stories and train the story world's reader and text encoder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ardiff.cli.common import (
    CommandError,
    guidance_scale,
    nonnegative_int,
    output_dir,
    positive_float,
    positive_int,
    read_model_summary,
)


def cmd_render(args) -> int:
    import torch

    from ardiff.utils.media import save_image_grid
    from ardiff.worlds.story import StoryWorld

    world = StoryWorld(args.split, length=args.length, seed=args.seed)
    stories = [world.story(i) for i in range(args.num)]
    frames = torch.cat([world.render(s).transpose(0, 1) for s in stories])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image_grid(frames, out / "stories.png", nrow=args.length)
    with open(out / "stories.jsonl", "w") as f:
        for s in stories:
            f.write(json.dumps(s.to_dict()) + "\n")
    for s in stories:
        print(" ".join(s.sentences))
    print(f"wrote {out / 'stories.png'} (one story per row) and {out / 'stories.jsonl'}")
    return 0


def cmd_train_reader(args) -> int:
    from ardiff.worlds.reader import train_reader

    t0 = time.perf_counter()
    reader, accuracy = train_reader(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                    init_from=args.init_from, lr=args.lr, first_frame=args.first_frame)
    seconds = time.perf_counter() - t0
    reader.save_pretrained(args.out, metrics=accuracy)
    print(json.dumps({"held_out_accuracy": accuracy, "seconds": round(seconds, 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


def cmd_train_text(args) -> int:
    from ardiff.worlds.story import StoryWorld
    from ardiff.worlds.text import train_text_encoder

    t0 = time.perf_counter()
    encoder, accuracy = train_text_encoder(StoryWorld("train", seed=args.seed), steps=args.steps, seed=args.seed)
    encoder.save_pretrained(args.out)
    print(json.dumps({"held_out_accuracy": accuracy, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"wrote {args.out}")
    return 0


def cmd_score_corrector(args) -> int:
    import torch

    from ardiff.experiments.common import write_json
    from ardiff.experiments.text_to_frame import format_scores, score_text_to_frame
    from ardiff.generate.pipeline import Pipeline
    from ardiff.utils.media import save_image_grid
    from ardiff.worlds.text import StoryTextEncoder

    directory, config = read_model_summary(args.model)
    if config.get("cond_dim", 0) == 0:
        raise CommandError(f"{directory} is not text-conditional (cond_dim 0); give a story-world corrector such "
                           f"as story-corrector")
    pipe = Pipeline.from_pretrained(directory, device="cpu", cfg_scale=args.cfg, num_steps=args.steps)
    if pipe.config.num_blocks != 1:
        raise CommandError(f"{directory} has {pipe.config.num_blocks} blocks; score-corrector scores a single-frame "
                           f"model (one block). Score a story ARM with `ardiff acdc benchmark --arm {args.model}`")
    settings = pipe.settings
    torch.set_grad_enabled(False)
    result = score_text_to_frame(pipe, StoryTextEncoder.from_pretrained(args.text_encoder), num=args.num,
                                 seed=args.seed, progress=not args.no_progress)
    print(format_scores(result))
    print(f"{result['seconds']:.0f} s to draw ({settings.num_steps} steps, CFG {settings.cfg_scale:g})")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {k: v for k, v in result.items() if k not in ("frames", "captions")}
        write_json(out / "scores.json", {"model": str(directory), "cfg_scale": settings.cfg_scale,
                                         "num_steps": settings.num_steps, "sampler": settings.sampler, **record})
        save_image_grid(result["frames"][:64], out / "frames.png", nrow=8)
        (out / "captions.txt").write_text("\n".join(result["captions"][:64]) + "\n")
        print(f"wrote {out / 'scores.json'}, {out / 'frames.png'} (first 64 frames, row by row) and captions.txt")
    return 0


def add_parser(sub) -> None:
    world = sub.add_parser("world", help="the story world: render stories, train its reader and text encoder",
                           description="The story world: a synthetic world of six-sentence stories about one "
                                       "Fashion-MNIST item (kind, colour, background, size, position), rendered "
                                       "exactly, so every generated frame has a truth. Render stories, and train "
                                       "the networks that read and encode them.")
    cmds = world.add_subparsers(dest="world_cmd", required=True, metavar="COMMAND")
    r = cmds.add_parser("render", help="render stories to a PNG (one story per row) and JSONL",
                        description="Render stories of the world to stories.png (one story per row) and "
                                    "stories.jsonl (their sentences and frame states).")
    r.add_argument("--num", type=positive_int, default=4, help="stories")
    r.add_argument("--length", type=positive_int, default=6, help="sentences per story")
    r.add_argument("--split", default="test", choices=("train", "test"), help="which items the stories use")
    r.add_argument("--seed", type=nonnegative_int, default=0)
    r.add_argument("--out", type=output_dir, default="out/world", help="output directory")
    r.set_defaults(func=cmd_render)
    t = cmds.add_parser("train-reader", help="train the attribute reader (held-out accuracy printed and saved)",
                        description="Train the attribute reader, the network that reads a frame's six attributes "
                                    "(it scores the story benchmark).")
    t.add_argument("--steps", type=positive_int, default=900, help="training steps")
    t.add_argument("--batch-size", type=positive_int, default=128, help="frames per step")
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument("--lr", type=positive_float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    t.add_argument("--init-from", help="a saved reader to continue from (a second stage)")
    t.add_argument("--first-frame", type=nonnegative_int,
                   help="index of the first training render (default 0, or 10M with --init-from: a later stage "
                        "sees new renders)")
    t.add_argument("--out", type=output_dir, default="runs/world/story-reader", help="model directory to write")
    t.set_defaults(func=cmd_train_reader)
    e = cmds.add_parser("train-text-encoder", help="train the story text encoder",
                        description="Train the story text encoder (sentences -> 64-d condition vectors).")
    e.add_argument("--steps", type=positive_int, default=1500, help="training steps")
    e.add_argument("--seed", type=nonnegative_int, default=0)
    e.add_argument("--out", type=output_dir, default="runs/world/story-text", help="model directory to write")
    e.set_defaults(func=cmd_train_text)
    c = cmds.add_parser("score-corrector", help="score a single-frame story model drawing from full captions",
                        description="Draw test-split frames from noise with their full captions (\"a small red "
                                    "bag at the top left of a navy floor.\") and read them back with the story "
                                    "reader: per-attribute accuracy with a 95%% interval, beside the reader's "
                                    "accuracy on the true renders.")
    c.add_argument("model", nargs="?", default="story-corrector",
                   help="model directory or shipped name (default: story-corrector)")
    c.add_argument("--num", type=positive_int, default=200, help="frames")
    c.add_argument("--seed", type=nonnegative_int, default=1, help="picks the frames and the noise")
    c.add_argument("--cfg", type=guidance_scale, help="guidance scale (default: the model's recorded one)")
    c.add_argument("--steps", type=positive_int, help="sampling steps (default: the model's recorded ones)")
    c.add_argument("--text-encoder", help="text encoder directory (default: the shipped story-text)")
    c.add_argument("--out", type=output_dir, help="directory for scores.json, frames.png and captions.txt")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_score_corrector)
