"""``python -m sketchprune info | select | prune | eval``: the command line (:mod:`sketchprune.cli`)."""

import sys

from .cli import main

sys.exit(main())
