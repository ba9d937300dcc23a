"""The `ardiff` command line: argparse only; every command imports what it needs when it runs.

- :mod:`ardiff.cli.commands`: the ``ardiff`` parser, built from the modules below, and ``main``.
- :mod:`ardiff.cli.common`: what the commands share (parser class, argument types, error boundary).
- :mod:`ardiff.cli.demo`: ``ardiff demo``.
- :mod:`ardiff.cli.train`: ``ardiff train``.
- :mod:`ardiff.cli.sample`: ``ardiff sample``.
- :mod:`ardiff.cli.models`: ``ardiff convert-official``, ``average``, ``export`` (model directories).
- :mod:`ardiff.cli.evaluation`: ``ardiff eval``, ``loss-bands``, ``sample-npz``.
- :mod:`ardiff.cli.experiments`: ``ardiff represent``, ``analyze``.
- :mod:`ardiff.cli.acdc`: ``ardiff acdc ...`` (story, video, benchmark, make-stories).
- :mod:`ardiff.cli.world`: ``ardiff world ...`` (the story world: render, train its networks).
- :mod:`ardiff.cli.latents`: ``ardiff encode-latents``.
- :mod:`ardiff.cli.bench`: ``ardiff bench``.
"""

from ardiff.cli.commands import build_parser, main
from ardiff.cli.common import SAMPLER_CHOICES

__all__ = ["SAMPLER_CHOICES", "build_parser", "main"]
