"""Command line: ``sketchprune info``.  (``select``, ``prune`` and ``eval`` arrive with the
data-selection and pruning packages.)"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sketchprune")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="built modules, available backends, devices")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        from .info import main as info_main

        info_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
