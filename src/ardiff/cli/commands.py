"""`ardiff` command line: argparse only; each command imports the library when it runs.

This module builds the top-level parser from the command modules beside it (each adds its
commands with ``add_parser``) and runs the chosen command. Expected failures (bad arguments,
missing or corrupt files, invalid configs, refused pickles) end in one line,
``ardiff <command>: error: ...``, and exit status 2; ``--debug`` (or ``ARDIFF_DEBUG=1``) shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ardiff.cli import (
    acdc,
    bench,
    demo,
    evaluation,
    experiments,
    latents,
    models,
    sample,
    serve,
    stream,
    train,
    world,
)
from ardiff.cli.common import Parser, leaf_parsers, run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="ardiff", description="Autoregressive diffusion on images and video: ACDiT (block-wise "
                    "autoregressive diffusion), ACDC (diffusion correction of autoregressive generators) and the "
                    "two joined.\n\nShipped models: fmnist, fmnist-fast (its few-step student), moving-fmnist, "
                    "moving-fmnist-16, moving-fmnist-16-dit, story-arm, story-corrector (a name or a model directory "
                    "works wherever a model is asked for).")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (or set "
                                                             "ARDIFF_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # In the order `ardiff --help` lists the commands.
    for module in (demo, train, sample, stream, serve, models, evaluation, experiments, acdc, world, latents,
                   bench):
        module.add_parser(sub)

    for leaf in leaf_parsers(parser):
        leaf.set_defaults(prog=leaf.prog)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, args.func)


if __name__ == "__main__":
    sys.exit(main())
