"""Command line: ``sketchprune info | select | prune | eval`` (select: :mod:`sketchprune.cli_select`;
prune and eval: :mod:`sketchprune.cli_prune`).

``sketchprune select (--grads G.npy | --features F.npy) --n 1000 [--method skmm] [--sketch-dim 512]
[--out selection.json]`` sketches per-sample gradients (a stored matrix, memory-mapped, or a
linear probe on features), selects n samples and writes the indices with the audit record.
"""

from __future__ import annotations

import argparse
import os
import sys


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
    try:
        if args.cmd in ("prune", "eval"):
            return _run_prune_eval(args, argv)
        if args.cmd == "info":
            from .info import main as info_main

            info_main()
            return 0
        return _select(args)
    except KeyboardInterrupt:
        if os.environ.get("SKETCHPRUNE_DEBUG"):
            raise
        # outputs are written to temporary names and moved into place: each is whole or absent
        print(f"sketchprune {args.cmd}: interrupted (every output is either complete or not written)",
              file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
