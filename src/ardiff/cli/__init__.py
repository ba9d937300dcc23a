"""The `ardiff` command line: argparse only; every command imports what it needs when it runs.

- :mod:`ardiff.cli.commands`: ``ardiff`` and its commands (demo, train, sample, eval, ...).
- :mod:`ardiff.cli.acdc`: ``ardiff acdc ...`` (story, video, benchmark, make-stories).
- :mod:`ardiff.cli.world`: ``ardiff world ...`` (the story world: render, train its networks).
"""

from ardiff.cli.commands import SAMPLER_CHOICES, build_parser, main

__all__ = ["SAMPLER_CHOICES", "build_parser", "main"]
