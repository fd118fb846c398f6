"""Command line: ``sketchprune info | select | prune | eval`` (select: :mod:`sketchprune.cli_select`;
prune and eval: :mod:`sketchprune.cli_prune`).

``sketchprune select (--grads G.npy | --features F.npy) --n 1000 [--method skmm] [--sketch-dim 512]
[--out selection.json]`` sketches per-sample gradients (a stored matrix, memory-mapped, or a
linear probe on features), selects n samples and writes the indices with the audit record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _select(args) -> int:
    from .cli_select import run

    return run(args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sketchprune")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="built modules, available backends, devices")
    from .cli_select import add_parser as _add_select

    _add_select(sub)
    from .cli_prune import add_subparsers as _add_prune_eval, run as _run_prune_eval

    _add_prune_eval(sub)
    args = parser.parse_args(argv)
    if args.cmd in ("prune", "eval"):
        return _run_prune_eval(args, argv)
    if args.cmd == "info":
        from .info import main as info_main

        info_main()
        return 0
    return _select(args)


if __name__ == "__main__":
    raise SystemExit(main())
