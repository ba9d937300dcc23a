"""`ardiff` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _save_grid(images, path: Path, nrow: int) -> None:
    """images: (N, C, H, W) in [-1, 1] -> PNG grid."""
    import numpy as np
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    n, c, h, w = x.shape
    rows = (n + nrow - 1) // nrow
    grid = np.zeros((rows * (h + 2) + 2, nrow * (w + 2) + 2, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = x[i].transpose(1, 2, 0)
    Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(path)


def cmd_demo(args) -> int:
    import torch

    from ardiff import ACDiT, ACDiTConfig, make_generators, sample

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("ardiff demo: no trained model ships yet, so this demo runs a RANDOMLY INITIALISED model "
          "(its samples are structured noise, not pictures).")
    torch.manual_seed(args.seed)
    config = ACDiTConfig.preset("S", input_size=(32, 32), in_channels=3, patch_size=2, block_layout="tiles",
                                block_size=64, num_classes=10, depth=4)
    model = ACDiT(config).eval()
    with torch.no_grad():  # random adaLN/output weights, so the samples are not all zero
        for block in model.blocks:
            torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.02)
        torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)
    labels = torch.arange(args.num) % config.num_classes
    print(f"model: {model.num_parameters() / 1e6:.1f}M parameters, {config.num_blocks} blocks of "
          f"{config.block_size} tokens ({config.tile_side}x{config.tile_side} tiles), {args.steps} steps per block, "
          f"CFG {args.cfg}")
    timings = {}
    results = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        results[use_cache] = sample(model, labels, num_steps=args.steps, cfg_scale=args.cfg, use_cache=use_cache,
                                    generator=make_generators(range(args.seed, args.seed + args.num)), progress=True)
        timings["cached" if use_cache else "uncached"] = time.perf_counter() - t0
    diff = (results[True] - results[False]).abs().max().item()
    grid_path = out / "samples.png"
    _save_grid(results[True].clamp(-1, 1), grid_path, nrow=min(args.num, 4))
    report = {"random_init": True, "num_samples": args.num, "steps": args.steps, "cfg": args.cfg,
              "seconds": timings, "max_abs_diff_cached_vs_uncached": diff, "grid": str(grid_path)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"cached {timings['cached']:.2f} s, uncached {timings['uncached']:.2f} s, "
          f"max |cached - uncached| = {diff:.2e}")
    print(f"wrote {grid_path} and {out / 'report.json'}")
    return 0


def cmd_bench(args) -> int:
    from ardiff import bench

    result = bench.main(as_json=args.json, quick=args.quick)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ardiff", description="Autoregressive diffusion on images and video.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the main job: generate samples and write a small report")
    demo.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    demo.add_argument("--num", type=int, default=8, help="number of samples")
    demo.add_argument("--steps", type=int, default=25, help="denoising steps per block")
    demo.add_argument("--cfg", type=float, default=1.5, help="classifier-free guidance scale")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="training/sampling speed against this machine's matmul peak")
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.add_argument("--quick", action="store_true", help="fewer repeats and block counts")
    bench.add_argument("--out", help="also write the JSON results to this file")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
