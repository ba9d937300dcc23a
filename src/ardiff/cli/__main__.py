"""``python -m ardiff.cli`` (e.g. under torchrun): the ``ardiff`` command."""

import sys

from ardiff.cli.commands import main

sys.exit(main())
