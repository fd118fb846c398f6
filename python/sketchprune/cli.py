"""Command line: ``sketchprune info | select | prune | eval`` (prune and eval: :mod:`sketchprune.cli_prune`).

``sketchprune select --grads G.npy --n 1000 [--method skmm] [--m 512] [--out selection.json]``
sketches a per-sample gradient (or feature) matrix stored as .npy (memory-mapped, never loaded
whole) or .pt, selects n samples and writes the indices with the full audit record (sketch type,
m, k, seed, solver gap, variance proxy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _load_matrix(path: str):
    p = Path(path)
    if not p.exists():
        raise SystemExit(f"sketchprune select: {path} does not exist")
    if p.suffix == ".npy":
        import numpy as np

        return np.load(p, mmap_mode="r")
    if p.suffix in (".pt", ".pth"):
        import torch

        return torch.load(p, map_location="cpu", weights_only=True)
    raise SystemExit(f"sketchprune select: {path}: expected a .npy or .pt file")


def _select(args) -> int:
    import torch

    from .select import METHODS, intrinsic_dimension, select, sketch_matrix

    if args.method not in METHODS:
        raise SystemExit(f"sketchprune select: unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    G = _load_matrix(args.grads)
    m = args.m
    if m is None:  # default m from the intrinsic dimension of a pilot sketch
        pilot, _ = sketch_matrix(G, min(1024, max(8, int(G.shape[1]))), args.k, args.seed, budget=args.budget)
        m = max(args.k, min(2 * intrinsic_dimension(pilot), int(G.shape[1])))
        print(f"m = {m} (twice the intrinsic dimension of a pilot sketch)", file=sys.stderr)
    sk, record = sketch_matrix(G, m, args.k, args.seed, sketch=args.sketch, budget=args.budget,
                               progress=not args.quiet)
    opts = {}
    if args.method == "skmm":
        opts = dict(c=args.c, rounding=args.rounding, weighting=args.weighting, formulation=args.formulation)
    labels = None
    if args.labels:
        labels = torch.as_tensor(_load_matrix(args.labels)).long()
    sel = select(args.n, args.method, sk, labels=labels, seed=args.seed, class_balanced=args.class_balanced, **opts)
    out = {"indices": sel.indices.tolist(), "sketch": record, "info": sel.info}
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)  # never a half-written result
        print(f"wrote {len(out['indices'])} indices to {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sketchprune")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="built modules, available backends, devices")
    s = sub.add_parser("select", help="select n samples from a per-sample gradient / feature matrix")
    s.add_argument("--grads", required=True, help="N x r matrix (.npy, memory-mapped; or .pt)")
    s.add_argument("--n", type=int, required=True, help="number of samples to select")
    s.add_argument("--method", default="skmm")
    s.add_argument("--m", type=int, default=None, help="sketch size (default: from the intrinsic dimension)")
    s.add_argument("--k", type=int, default=8, help="nonzeros per row of the sparse-sign sketch")
    s.add_argument("--sketch", default="sparse-sign", choices=["sparse-sign", "gaussian"])
    s.add_argument("--c", type=float, default=0.6)
    s.add_argument("--weighting", default="relative", choices=["absolute", "relative"])
    s.add_argument("--formulation", default="hinge", choices=["hinge", "maxmin"])
    s.add_argument("--rounding", default="top", choices=["sample", "top"])
    s.add_argument("--labels", default=None, help="labels (.npy/.pt) for --class-balanced")
    s.add_argument("--class-balanced", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--budget", default=None, help="memory budget, e.g. 8GiB")
    s.add_argument("--out", default=None, help="output JSON (default: stdout)")
    s.add_argument("--quiet", action="store_true")
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
