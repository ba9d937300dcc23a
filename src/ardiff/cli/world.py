"""`ardiff world`: render stories and train the story world's reader and text encoder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ardiff.cli.common import nonnegative_int, output_dir, positive_float, positive_int


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
