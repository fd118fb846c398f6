"""``python -m sketchprune info | select | prune | eval``: the command line (:mod:`sketchprune.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
