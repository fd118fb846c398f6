"""``sketchprune select``: choose n samples from per-sample gradients or features.

    sketchprune select (--grads G.npy | --features F.npy) [--labels y.npy] --n 1000 [--method skmm]
                       [--sketch-dim 512] [--k 8] [--seed 0] [--tol T] [--time-limit S] [--budget 4GiB]
                       [--out selection.json] [--quiet]

* ``--grads``: an N x r per-sample gradient (or any feature) matrix, .npy (memory-mapped, never
  loaded whole) or .pt; streamed through ``sketch_matrix`` under the budget (its NaN / Inf check
  too: blocks of at most ``--budget`` one-byte flags).
* ``--features``: an N x d feature matrix; the gradient source is a linear softmax probe at zero
  init (``linear_probe_sketch``) with random labels (as in the original SkMM experiments), or the
  labels of ``--labels`` when given.
* ``--sketch-dim`` (alias ``--m``): the sketch size m; default twice the intrinsic dimension of a
  pilot sketch of at most ``PILOT_M`` columns, capped at the gradient width r (recorded under
  ``sketch.pilot``; a warning says when the estimate exceeds half the pilot's width, where it is
  only a lower bound).  An explicit m
  above r is capped at r the same way (a wider sketch reduces nothing, and the selection's m x m
  work grows with m), with a warning, and recorded as ``sketch.m_requested``.
* ``--budget``: checked before the sketch is made against the N x m float32 sketch plus the
  selection's work (``select._plan.selection_workspace``: the m x m float64 moments and
  eigendecompositions every method makes, the method's N x m copies), before the pilot against
  it plus its eigenvalue solve; the sketching itself plans its blocks within it.
* Inputs: .npy (memory-mapped, either byte order; never unpickled) or .pt (tensors only).  Long
  double and complex --grads / --features / --labels, sparse tensors and labels beyond int64 are
  refused by name.
* ``--probs P.npy`` (N x classes) feeds the methods that read model probabilities.

Output (``--out``, checked before any work and written atomically, or stdout): strict JSON
(non-finite numbers written as null) with ``indices``, ``weights`` (SkMM's relaxed weights of the
selected samples, or null), ``method``, ``n``, ``seed``, ``sketch`` {type, m, k, seed, source, ...},
``time_s`` and ``info`` (the method's audit record: certified gap, variance proxy, ...).  Bad input
is reported in one line on stderr with exit status 2, no traceback; an SkMM solve that did not
converge is warned about on stderr (also with ``--quiet``), its selection still written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import numbers
import os
import stat
import sys
import time
from pathlib import Path

PILOT_M = 1024  # the widest pilot sketch the default m is estimated from


class CliError(Exception):
    """A user error: reported in one line, exit status 2."""


NPY_MAGIC = b"\x93NUMPY"


def _load(path: str, what: str):
    p = Path(path)
    if not p.exists():
        raise CliError(f"{what} file {path} does not exist")
    if p.suffix == ".npy":
        import numpy as np

        not_npy = f"{path}: not a numeric .npy array"
        try:
            with open(p, "rb") as f:
                magic = f.read(len(NPY_MAGIC))
        except OSError as e:
            raise CliError(f"{path}: cannot read ({e.strerror or e})") from None
        if magic != NPY_MAGIC:  # numpy would take it for a pickle (and suggest unpickling it)
            raise CliError(f"{not_npy} (it does not start with the .npy header)")
        try:
            return np.load(p, mmap_mode="r")  # never allow_pickle: object arrays are refused
        except Exception as e:  # noqa: BLE001 -- any unreadable file is a user error
            if "pickle" in str(e) or "Python objects" in str(e):  # an object array (numpy suggests unpickling it)
                raise CliError(f"{not_npy} (it holds Python objects)") from None
            raise CliError(f"{not_npy} ({_first_line(e)})") from None
    if p.suffix in (".pt", ".pth"):
        import torch

        try:
            t = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- corrupt files raise UnpicklingError, EOFError, RuntimeError, ...
            if "weights_only" in str(e):  # torch's message suggests loading it unsafely
                raise CliError(f"{path}: not a tensor file (it is not a torch.save file of tensors, or holds "
                               "other Python objects; only tensors are loaded)") from None
            raise CliError(f"{path}: cannot read as a .pt tensor ({_first_line(e)})") from None
        if not isinstance(t, torch.Tensor):
            raise CliError(f"{path}: expected a tensor, got {type(t).__name__}")
        return t
    raise CliError(f"{path}: expected a .npy or .pt file")


def _first_line(e: Exception) -> str:
    """The first line of an exception's message (library errors can run over many lines)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


#: the most entries the finiteness scan flags at a time (one byte each), whatever the budget allows
CHECK_BLOCK_ENTRIES = 1 << 24


def _check_plan(N: int, r: int, avail: int) -> tuple[int, int]:
    """(rows, cols) of the blocks of the finiteness scan: rows * cols one-byte flags at a time, within
    ``avail`` bytes (and ``CHECK_BLOCK_ENTRIES``); whole rows when they fit, else column blocks of one row."""
    entries = max(1, min(avail, CHECK_BLOCK_ENTRIES))
    cols = min(r, entries)
    return max(1, min(N, entries // cols)), cols


def _check_matrix(M, name: str, budget=None, long_double: bool = False):
    """2-D, numeric, and no NaN/Inf, scanned in blocks planned from the memory budget (memory-mapped
    arrays are never loaded whole, no N x r temporary); names the bad rows.  A dtype torch cannot
    read (long double, complex, float8, sparse) is refused; with ``long_double=True`` long double
    passes (for a matrix the caller converts to float64 with numpy, as --probs)."""
    import numpy as np
    import torch

    from .budget import Budget
    from .select.sources import check_dtype

    if getattr(M, "ndim", None) != 2:
        raise CliError(f"{name} must be a 2-D matrix (N x r), got shape {tuple(getattr(M, 'shape', ()))}")
    N, r = int(M.shape[0]), int(M.shape[1])
    if N == 0 or r == 0:
        raise CliError(f"{name} is empty (shape {tuple(M.shape)})")
    if isinstance(M, torch.Tensor):
        if M.dtype == torch.bool:
            raise CliError(f"{name} has unsupported dtype {M.dtype}")
    elif M.dtype.kind not in "fciub":
        raise CliError(f"{name} has non-numeric dtype {M.dtype}")
    try:
        check_dtype(M, name)  # long double, complex, float8, sparse: refused, saying why
    except ValueError as e:
        if not (long_double and not isinstance(M, torch.Tensor) and M.dtype.kind == "f"):
            raise CliError(str(e)) from None
    if not (M.dtype.is_floating_point if isinstance(M, torch.Tensor) else M.dtype.kind == "f"):
        return N  # integers are always finite
    budget = Budget.of(budget)
    avail = budget.bytes_for("cpu")
    if avail < 1:
        budget.check("cpu", 1, what=f"the NaN/Inf check of {name}")
    rows, cols = _check_plan(N, r, avail)
    bad = []
    for i in range(0, N, rows):
        ok = np.ones(min(N, i + rows) - i, dtype=bool)
        for c0 in range(0, r, cols):
            b = M[i:i + rows, c0:c0 + cols]
            ok &= (torch.isfinite(b).all(1).numpy() if isinstance(b, torch.Tensor) else np.isfinite(b).all(1))
        bad.extend((i + np.nonzero(~ok)[0]).tolist())
    if bad:
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({len(bad)} rows in all)" if len(bad) > 10 else "")
        raise CliError(f"{name} has NaN or Inf values in rows {shown}")
    return N


def _labels(path: str, N: int):
    import torch

    from .select.sources import check_dtype

    y = _load(path, "labels")
    bad_dtype = y.dtype.is_complex if isinstance(y, torch.Tensor) else y.dtype.kind not in "biuf"
    if bad_dtype:
        raise CliError(f"labels must be integer class indices, got dtype {y.dtype}")
    try:
        check_dtype(y, "--labels")
    except ValueError as e:
        raise CliError(str(e)) from None
    y = _tensor(y)
    if y.dim() != 1 or int(y.shape[0]) != N:
        raise CliError(f"labels must be a vector of length N = {N}, got shape {tuple(y.shape)}")
    if y.is_floating_point() and not (torch.isfinite(y).all() and torch.equal(y, y.round())):
        raise CliError("labels must be integer class indices")
    # beyond int64 the conversion below would wrap around (torch has no max of uint64: compared in float64)
    top = float((y.double() if y.dtype == getattr(torch, "uint64", None) else y).max()) if y.numel() else 0.0
    if top >= 2.0**63:
        raise CliError(f"labels must be integer class indices below 2**63, got {top:.4g}")
    y = y.long()
    if int(y.min()) < 0:
        raise CliError(f"labels must be >= 0, got {int(y.min())}")
    return y


def _tensor(a):
    """A torch tensor of a loaded array: a native-byte-order copy of a numpy array or memmap (memmaps
    are read-only, and .npy files may be big-endian), a tensor as it is."""
    import numpy as np
    import torch

    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a, dtype=a.dtype.newbyteorder("=")))


def _write(dest: Path, text: str | None) -> None:
    """Write ``text`` to ``dest`` atomically: a private temporary file beside it, renamed over it.  With
    ``text=None`` only check that it can be (the temporary file is created and removed).  Any
    failure is a one-line error, and the temporary file never stays behind."""
    from .datasets.cache import unique_tmp

    tmp = unique_tmp(dest)            # private: concurrent runs and a user's own <out>.tmp are left alone
    try:
        with open(tmp, "x") as f:
            f.write(text or "")
        if text is not None:
            os.replace(tmp, dest)
    except OSError as e:
        raise CliError(f"cannot write --out {dest}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _check_out(path: str) -> Path:
    """``--out`` checked before any work: its directory exists and is writable, and an existing
    ``--out`` is a regular file (a directory, symlink or device would be replaced by the rename,
    not written through)."""
    dest = Path(path)
    if not dest.parent.is_dir():
        raise CliError(f"output directory {dest.parent} "
                       + ("is not a directory" if dest.parent.exists() else "does not exist"))
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(dest).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
            raise CliError(f"--out {path} is {kind}; give the path of a regular file")
    _write(dest, None)
    return dest


def _finite(v):
    """``v`` with every non-finite float (NaN, +-Inf) in it replaced by None: strict JSON."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral):
        return float(v) if math.isfinite(v) else None
    return v


def _convergence_warning(info: dict, time_limit: float | None) -> str | None:
    """One line naming the SkMM solves (per class when class-balanced) whose info says they did
    not converge, with the duality gap against the tolerance where known; None when all did."""
    per_class = info.get("per_class")
    solves = per_class if per_class is not None else {None: info}
    bad = {c: r for c, r in solves.items() if r.get("converged") is False}
    if not bad:
        return None
    if info.get("formulation") == "paper":
        return ("warning: the SkMM paper formulation did not converge: it is not certified (Adam for a fixed number "
                "of iterations, no duality gap); --formulation hinge, maxmin or variance give a certified solve")
    where = "" if per_class is None else f" in {len(bad)} of {len(solves)} classes ({', '.join(map(str, bad))})"
    worst = max(bad.values(), key=lambda r: -1.0 if r.get("duality_gap") is None else r["duality_gap"])
    msg = f"warning: the SkMM {info.get('formulation')} solver did not converge{where}"
    if worst.get("duality_gap") is not None:
        msg += f": duality gap {worst['duality_gap']:.3g}{' (the largest)' if len(bad) > 1 else ''}"
        if info.get("tol") is not None:
            msg += f" vs tolerance {info['tol']:g} (relative)"
    timed_out = time_limit is not None and (worst.get("seconds") or 0) >= time_limit
    msg += f" after {worst.get('iterations')} iterations{' (stopped by --time-limit)' if timed_out else ''}"
    return msg + "; the selection was written all the same (a larger --tol or --time-limit lets the solver finish)"


def run(args) -> int:
    try:
        return _run(args)
    except CliError as e:
        print(f"sketchprune select: error: {e}", file=sys.stderr)
        return 2
    except MemoryError as e:  # BudgetError included
        print(f"sketchprune select: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # argument errors found by the library (they name the problem)
        print(f"sketchprune select: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from .budget import Budget, BudgetError
    from .select import METHODS, intrinsic_dimension, linear_probe_sketch, select, sketch_matrix
    from .select._plan import intrinsic_dimension_workspace, selection_workspace
    from .select.api import NEEDS
    from .select.model_based import ModelOutputs

    if args.method not in METHODS:
        raise CliError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    if (args.grads is None) == (args.features is None):
        raise CliError("give exactly one of --grads (per-sample gradients) and --features (linear-probe source)")
    if args.k < 1:
        raise CliError(f"--k must be >= 1, got {args.k}")
    if args.m is not None and args.m < args.k:
        raise CliError(f"--sketch-dim m = {args.m} must be >= k = {args.k}")
    if args.method == "skmm" and args.rounding == "greedy" and args.formulation != "variance":
        raise CliError("--rounding greedy needs --formulation variance")
    if args.method == "skmm" and args.formulation == "variance" and not args.eps > 0:
        raise CliError(f"--eps must be positive, got {args.eps}")
    if args.method == "skmm" and args.formulation in ("hinge", "paper") and not 0 < args.c < 1:
        raise CliError(f"--c must be in (0, 1) for the {args.formulation} formulation, got {args.c}"
                       + (" (with c >= 1 uniform weights already satisfy every moment constraint)"
                          if args.c >= 1 else ""))
    if args.classes is not None and args.classes < 1:
        raise CliError(f"--classes must be >= 1, got {args.classes}")
    if args.classes is not None and args.features is None:
        raise CliError("--classes sets the class count of the linear probe built from --features; "
                       "it has no effect with --grads")
    for opt, v in (("--tol", args.tol), ("--time-limit", args.time_limit)):
        if v is None:
            continue
        if not 0 < v < math.inf:
            raise CliError(f"{opt} must be a positive number, got {v}")
        if args.method != "skmm" or args.formulation == "paper" or \
                (args.formulation == "variance" and args.rounding in (None, "greedy")):
            raise CliError(f"{opt} applies to the iterative SkMM solvers only: --formulation hinge or maxmin, "
                           "or variance with --rounding sample or top")
    dest = _check_out(args.out) if args.out else None
    budget = Budget.of(args.budget)
    src = args.grads if args.grads is not None else args.features
    M = _load(src, "gradient" if args.grads is not None else "feature")
    N = _check_matrix(M, "--grads" if args.grads is not None else "--features", budget)
    r = int(M.shape[1])
    if not 1 <= args.n <= N:
        raise CliError(f"--n must be in [1, N = {N}], got {args.n}")
    labels = _labels(args.labels, N) if args.labels else None
    if args.class_balanced and labels is None:
        raise CliError("--class-balanced needs --labels")
    probs = None
    if args.probs:
        import numpy as np

        P = _load(args.probs, "probs")
        if _check_matrix(P, "--probs", budget, long_double=True) != N:
            raise CliError(f"--probs has {P.shape[0]} rows, expected N = {N}")
        probs = P.double() if isinstance(P, torch.Tensor) else torch.from_numpy(np.array(P, dtype=np.float64))
        try:  # the checks select() would make, before the sketch is built
            ModelOutputs(probs=probs, labels=labels)
        except ValueError as e:
            raise CliError(f"--probs / --labels: {e}") from None
    need = NEEDS[args.method]
    if args.method not in ("skmm", "uniform", "herding", "kcenter", "leverage", "ridge-leverage", "adaptive") \
            and not (probs is not None and need.startswith("probs") and (labels is not None or "labels" not in need)):
        raise CliError(f"method {args.method!r} needs {need}; from the command line give --probs (and --labels) for "
                       "the probability-based methods, use the Python API (ModelOutputs) for the others")
    t0 = time.perf_counter()
    if args.features is not None:
        C = args.classes if args.classes is not None else (int(labels.max()) + 1 if labels is not None else 10)
        if labels is not None and int(labels.max()) >= C:
            raise CliError(f"labels go up to {int(labels.max())} but --classes is {C}")
        probe_labels = labels if labels is not None else "random"

        def make(m):  # a block of rows at a time, planned within --budget (BudgetError if one row does not fit)
            return linear_probe_sketch(M, probe_labels, C, m=m, k=args.k, seed=args.seed, budget=budget,
                                       progress=not args.quiet)
        d = int(M.shape[1])
        r = C * d + C
        sketch_type = "sparse-sign"
        if args.sketch != "sparse-sign":
            raise CliError("--features uses the sparse-sign sketch (outer_sketch); --sketch gaussian needs --grads")
    else:
        make = lambda m: sketch_matrix(M, m, args.k, args.seed, sketch=args.sketch, budget=budget,  # noqa: E731
                                       progress=not args.quiet)
        sketch_type = args.sketch
    m = args.m
    pilot_rec = None
    if m is not None and m > max(r, args.k):  # as the default m: at most the gradient width
        print(f"warning: --sketch-dim {m} exceeds the gradient width r = {r}: a sketch wider than the gradients "
              f"reduces nothing (its rank is at most r) and costs O(m^2) memory and time in the selection; "
              f"using m = {max(r, args.k)}", file=sys.stderr)
        m = max(r, args.k)
    if m is None:  # twice the intrinsic dimension of a pilot sketch
        pilot_m = min(PILOT_M, max(8, r, args.k))
        budget.check("cpu", N * pilot_m * 4 + intrinsic_dimension_workspace(N, pilot_m),
                     what=f"the pilot sketch ({N} x {pilot_m}, float32, with the eigenvalues of its m x m second "
                          "moment)")
        pilot, _ = make(pilot_m)
        idim = intrinsic_dimension(pilot)
        del pilot
        m = max(args.k, min(2 * idim, r))
        # The estimate is only trustworthy when the pilot is well above it; a pilot narrower than the
        # gradients whose estimate exceeds half its width measured (at most) its own size.
        lower_bound = pilot_m < r and 2 * idim > pilot_m
        pilot_rec = {"m": pilot_m, "intrinsic_dimension": idim, "lower_bound": lower_bound}
        if not args.quiet:
            cap = f", capped at the gradient width r = {r}" if 2 * idim > r else ""
            print(f"m = {m} (twice the intrinsic dimension {idim} of a pilot sketch{cap})", file=sys.stderr)
        if lower_bound:
            print(f"warning: the pilot sketch (m = {pilot_m}) estimated an intrinsic dimension of {idim}, more "
                  f"than half its own size, so the estimate is only a lower bound and m = {m} may be too small; "
                  "give --sketch-dim to choose m (a larger m costs time and memory in the solve, see the docs)",
                  file=sys.stderr)
    # the sketch (float32) and what the selection allocates beyond it: the m x m float64 moments and
    # eigendecompositions of every method (the variance proxy; SkMM's moment problem) and the
    # method's copies of the sketch -- checked before the sketch is made
    balanced = args.class_balanced if args.class_balanced is not None else (args.method == "skmm" and
                                                                             labels is not None)
    largest = int(torch.unique(labels, return_counts=True)[1].max()) if balanced and labels is not None else None
    plan = selection_workspace(N, m, args.method, formulation=args.formulation, rounding=args.rounding,
                               class_balanced=balanced, class_rows=largest)
    try:
        budget.check("cpu", N * m * 4 + plan,
                     what=f"the {args.method} selection on the {N} x {m} sketch (the float32 sketch itself, m x m "
                          "float64 moments and eigendecompositions, the method's copies of the sketch)")
    except BudgetError as e:
        raise BudgetError(f"{e}{'' if args.m is None else ', or a smaller --sketch-dim'}") from None
    sk, record = make(m)
    if args.features is not None:
        record = {**record, "sketch": sketch_type, "N": N}
    opts = {}
    if args.method == "skmm":
        opts = dict(c=args.c, rounding=args.rounding, weighting=args.weighting, formulation=args.formulation,
                    progress=not args.quiet and sys.stderr.isatty())
        if args.formulation == "maxmin":  # scale-free: no c, no weighting
            del opts["c"], opts["weighting"]
        if args.formulation == "variance":
            opts = dict(formulation="variance", rounding=args.rounding, eps=args.eps, progress=opts["progress"])
        opts.update({k: v for k, v in (("tol", args.tol), ("time_limit", args.time_limit)) if v is not None})
    sel = select(args.n, args.method, sk, probs=probs, labels=labels, seed=args.seed,
                 class_balanced=args.class_balanced, budget=budget, **opts)
    elapsed = time.perf_counter() - t0
    weights = None
    if sel.weights is not None:
        weights = sel.weights[sel.indices.to(sel.weights.device)].double().cpu().tolist()
    sketch_rec = {"type": record.get("sketch", sketch_type), "m": m, "k": record.get("k"), "seed": args.seed,
                  **{k: v for k, v in record.items() if k not in ("sketch", "m", "k", "seed")}}
    if args.m is not None and args.m != m:
        sketch_rec["m_requested"] = args.m
    if pilot_rec is not None:
        sketch_rec["pilot"] = pilot_rec
    out = {"indices": sel.indices.tolist(), "weights": weights, "method": args.method, "n": args.n,
           "seed": args.seed, "sketch": sketch_rec, "time_s": elapsed,
           "input": {"grads" if args.grads else "features": str(src), "labels": args.labels, "N": N},
           "info": sel.info}
    text = json.dumps(_finite(out), indent=1, default=str, allow_nan=False)
    warning = _convergence_warning(sel.info, args.time_limit) if args.method == "skmm" else None
    if warning:
        print(warning, file=sys.stderr)
    if dest is not None:
        _write(dest, text)  # never a half-written result
        if not args.quiet:
            print(f"wrote {len(out['indices'])} indices to {args.out} ({elapsed:.2f} s)", file=sys.stderr)
    else:
        print(text)
    return 0


def add_parser(sub):
    s = sub.add_parser("select", help="select n samples from per-sample gradients or features")
    src = s.add_argument_group("input (one of --grads / --features)")
    src.add_argument("--grads", default=None, help="N x r per-sample gradient matrix (.npy, memory-mapped; or .pt)")
    src.add_argument("--features", default=None,
                     help="N x d features (.npy/.pt): linear-probe gradients, random labels unless --labels")
    s.add_argument("--labels", default=None, help="N class labels (.npy/.pt): true labels for the probe, "
                   "--class-balanced, el2n")
    s.add_argument("--probs", default=None, help="N x classes model probabilities for entropy / margin / "
                   "least-confidence / el2n / contextual-diversity")
    s.add_argument("--classes", type=int, default=None, help="number of classes of the probe (default: from "
                   "--labels, else 10)")
    s.add_argument("--n", type=int, required=True, help="number of samples to select")
    s.add_argument("--method", default="skmm", help="skmm (default) or a baseline: uniform, herding, kcenter, "
                   "adaptive, leverage, ridge-leverage, entropy, margin, least-confidence, contextual-diversity, "
                   "el2n (these need --probs, el2n also --labels); grand, forgetting, glister, deepfool through "
                   "the Python API")
    s.add_argument("--sketch-dim", "--m", dest="m", type=int, default=None,
                   help="sketch size m (default: twice the intrinsic dimension of a pilot sketch, at most r)")
    s.add_argument("--k", type=int, default=8, help="nonzeros per row of the sparse-sign sketch")
    s.add_argument("--sketch", default="sparse-sign", choices=["sparse-sign", "gaussian"])
    s.add_argument("--c", type=float, default=0.9, help="SkMM moment ratio c in (0, 1) (default 0.9)")
    s.add_argument("--weighting", default="relative", choices=["absolute", "relative"])
    s.add_argument("--formulation", default="variance", choices=["variance", "hinge", "maxmin", "paper"],
                   help="SkMM moment-matching formulation (default variance)")
    s.add_argument("--rounding", default=None, choices=["greedy", "sample", "top"],
                   help="n indices from the solution: greedy (the variance formulation's default: greedy design "
                        "on its objective), sample (the others' default) or top")
    s.add_argument("--eps", type=float, default=0.1,
                   help="ridge of the variance formulation, relative to the mean eigenvalue (default 0.1)")
    s.add_argument("--tol", type=float, default=None,
                   help="SkMM solver tolerance on the certified duality gap, relative to the objective (default: "
                        "1e-4 hinge, 1e-2 maxmin, 1e-3 relaxed variance)")
    s.add_argument("--time-limit", type=float, default=None,
                   help="stop the SkMM solver after this many seconds (per class when class-balanced)")
    s.add_argument("--class-balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="select per class (default: on for skmm when --labels are given)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--budget", default=None, help="memory budget, e.g. 4GiB (default: free memory)")
    s.add_argument("--out", default=None, help="output JSON (default: stdout)")
    s.add_argument("--quiet", action="store_true")
    return s
