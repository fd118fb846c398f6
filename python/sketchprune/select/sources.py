"""Gradient sources for data selection: sketch a user-supplied N x r matrix without holding it.

``sketch_matrix(G, m, ...)`` streams G (a torch tensor, numpy array or ``numpy.memmap``) in
blocks of rows and columns and returns the N x m sketch G S (float32, on the host):

* ``sketch="sparse-sign"`` (default): S is the implicit sparse-sign matrix of
  :func:`sketchprune.sparse_sign_sketch` (k nonzeros per row, generated from ``seed``); column
  block c0 is sketched with ``offset=c0``, so the result does not depend on the blocking.
* ``sketch="gaussian"``: S has i.i.d. N(0, 1/m) entries, generated per fixed block of 4096 rows
  of S from (seed, block index), so it is reproducible and independent of the row blocking.

Block sizes come from the memory budget (the device copy of a block of G, float32); the sketch
record (type, m, k, seed) is returned with the result so a selection can be reproduced.

G may be of any real dtype torch reads (float64/32/16, bfloat16 tensors, integers, bool), in
either byte order: a big-endian numpy array or memmap is converted block by block as it is read
(never loaded whole).  Extended precision (``np.longdouble``, float128) and complex matrices are
refused with a ValueError naming the dtype: torch has no extended-precision dtype (a silent cast to
float64 would also turn values beyond float64's range into Inf), and a complex matrix has no real
sketch.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..budget import Budget
from ..ops import sparse_sign_sketch
from ..ops.sketch import sparse_sign_sketch_workspace
from ._checks import check_finite_rows
from .moment_matching import second_moment
from .._progress import progress_bar

GAUSS_BLOCK = 4096


#: torch dtypes of a source matrix (the others -- complex, float8, quantized -- are refused)
_TORCH_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
                 torch.int8, torch.uint8, torch.bool,
                 *(getattr(torch, u) for u in ("uint16", "uint32", "uint64") if hasattr(torch, u)))


def check_dtype(G, name: str = "G") -> None:
    """ValueError naming ``name`` unless G (a torch tensor or numpy array) is a dense real matrix of a
    dtype the sketch reads: floats up to float64, integers, bool; numpy arrays in either byte order."""
    if isinstance(G, torch.Tensor):
        if G.layout != torch.strided:
            raise ValueError(f"{name} must be a dense tensor, got layout {G.layout}")
        ok, dt = G.dtype in _TORCH_DTYPES, G.dtype
    else:
        dt = np.dtype(getattr(G, "dtype", None))
        ok = dt.kind in "biu" or (dt.kind == "f" and dt.itemsize <= 8)
    if ok:
        return
    if getattr(dt, "is_complex", False) or getattr(dt, "kind", "") == "c":
        why = "complex values have no real sketch; pass the real gradients"
    elif getattr(dt, "kind", "") == "f":
        why = "extended precision, which torch does not have; save it as float64 or float32"
    else:
        why = "use float32, float64, float16, bfloat16, an integer type or bool"
    raise ValueError(f"{name} has unsupported dtype {dt}: {why}")


def native(a: np.ndarray) -> np.ndarray:
    """``a`` in the machine's byte order: a big-endian array (valid in .npy files) as a converted copy,
    which torch.from_numpy can read; a native one unchanged."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _block(G, r0, r1, c0, c1, device, convert: bool = True):
    if isinstance(G, torch.Tensor):
        b = G[r0:r1, c0:c1].detach()
    else:
        a = np.ascontiguousarray(native(G[r0:r1, c0:c1]))  # one block converted at a time: memmaps stay streamed
        with warnings.catch_warnings():  # a read-only memmap block: only ever read here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            b = torch.from_numpy(a)
    if convert and b.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        b = b.to(torch.float32)
    return b.to(device, non_blocking=True)


def _row_stats(G, r0, r1, r, col_block):
    """(finite, peak) of rows r0:r1 of G, read in its own dtype: whether each row is all finite, and
    the largest magnitude among its finite values (float64).  Only for the rare error paths."""
    finite = torch.ones(r1 - r0, dtype=torch.bool)
    peak = torch.zeros(r1 - r0, dtype=torch.float64)
    step = max(1, (1 << 20) // col_block)  # about 1M entries (a few MiB of temporaries) at a time
    for i0 in range(r0, r1, step):
        i1 = min(r1, i0 + step)
        for c0 in range(0, r, col_block):
            b = _block(G, i0, i1, c0, min(r, c0 + col_block), "cpu", convert=False).to(torch.float64)
            ok = torch.isfinite(b)
            finite[i0 - r0:i1 - r0] &= ok.all(1)
            peak[i0 - r0:i1 - r0] = torch.maximum(peak[i0 - r0:i1 - r0], b.abs().masked_fill_(~ok, 0.0).amax(1))
    return finite, peak


_F32_MAX, _F32_TINY = torch.finfo(torch.float32).max, torch.finfo(torch.float32).tiny
_RESCALE = "the sketch is computed in float32: rescale the gradients (selection does not depend on their scale)"


def _check_overflow(G, r0, r1, r, col_block, acc):
    """Rows of G that are finite but whose float32 sketch is not: values beyond float32's range."""
    rows = torch.nonzero(~torch.isfinite(acc.cpu()).all(1)).reshape(-1)
    finite, peak = _row_stats(G, r0, r1, r, col_block)
    over = rows[finite[rows]]
    if over.numel():
        shown = ", ".join(str(r0 + int(i)) for i in over[:10]) + (", ..." if over.numel() > 10 else "")
        raise ValueError(f"G has finite values outside float32's range in row{'s' if over.numel() > 1 else ''} "
                         f"{shown} (|value| up to "
                         f"{float(peak[over].max()):.3g}; float32 holds up to {_F32_MAX:.3g}), so their sketch "
                         f"overflows; {_RESCALE}")


def _check_underflow(G, out, N, r, col_block):
    """Values of G too small for the float32 sketch: its largest magnitude is subnormal (precision
    lost), or it is all zero although G is not."""
    if out.numel() == 0:
        return
    peak_sk = float(torch.linalg.vector_norm(out, ord=float("inf")))
    if peak_sk >= _F32_TINY or math.isnan(peak_sk):
        return
    peak = float(_row_stats(G, 0, N, r, col_block)[1].max())
    # G itself near float32's subnormal range (a sketch that is zero or tiny by cancellation of
    # ordinary values -- e.g. [1, 1] with opposite signs -- is not an error)
    if 0.0 < peak < _F32_TINY * 2.0 ** 24:
        raise ValueError(f"G's values are too small for float32 (largest magnitude {peak:.3g} in G; float32's "
                         f"smallest normal number is {_F32_TINY:.3g}), so the sketch "
                         f"{'is all zero' if peak_sk == 0.0 else 'loses precision'}; {_RESCALE}")


def _gauss_rows(seed, j0, rows, m, device):
    g = torch.Generator().manual_seed((seed * 1_000_003 + j0 // GAUSS_BLOCK) % (2**63))
    return (torch.randn(GAUSS_BLOCK, m, generator=g)[:rows] / math.sqrt(m)).to(device)


def sketch_matrix(G, m: int, k: int = 8, seed: int = 0, sketch: str = "sparse-sign", device=None,
                  budget=None, progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Sketch the rows of G (N x r) to N x m; returns (sketch on the host, record)."""
    if sketch not in ("sparse-sign", "gaussian"):
        raise ValueError(f"sketch must be 'sparse-sign' or 'gaussian', got {sketch!r}")
    if getattr(G, "ndim", None) != 2:
        raise ValueError(f"G must be a 2-D matrix (N x r), got shape {getattr(G, 'shape', None)}")
    check_dtype(G)
    N, r = int(G.shape[0]), int(G.shape[1])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    budget = Budget.of(budget)
    col_block = GAUSS_BLOCK if sketch == "gaussian" else min(r, 1 << 16) or 1
    # per row of a block: the float32 device copy of col_block entries (+ the gaussian S block, fixed)
    # the sparse-sign kernel's own workspace (per-thread buffers; partials when few rows)
    fixed = 4 * GAUSS_BLOCK * m if sketch == "gaussian" else \
        sparse_sign_sketch_workspace(N, col_block, m, k, torch.float32, device, any_rows=True) if N else 0
    rows = budget.plan_rows(device, 4 * col_block + 4 * m, N, fixed_bytes=fixed, what="sketch_matrix")
    out = torch.zeros(N, m, dtype=torch.float32)
    bar = progress_bar(progress, total=N, desc=f"sketching {N} x {r} -> {m}", unit="row")
    for r0 in range(0, N, max(rows, 1)):
        r1 = min(N, r0 + rows)
        acc = torch.zeros(r1 - r0, m, dtype=torch.float32, device=device)
        for c0 in range(0, r, col_block):
            c1 = min(r, c0 + col_block)
            blk = _block(G, r0, r1, c0, c1, device)
            if sketch == "sparse-sign":
                acc += sparse_sign_sketch(blk, m, k, seed, c0)
            else:
                acc += blk.float() @ _gauss_rows(seed, c0, c1 - c0, m, device)
        if not bool(torch.isfinite(acc).all()):
            _check_overflow(G, r0, r1, r, col_block, acc)
        out[r0:r1] = acc.cpu()
        if bar is not None:
            bar.update(r1 - r0)
    if bar is not None:
        bar.close()
    _check_underflow(G, out, N, r, col_block)
    record = {"sketch": sketch, "m": m, "k": k if sketch == "sparse-sign" else None, "seed": seed, "N": N, "r": r}
    return out, record


def intrinsic_dimension(sketch: torch.Tensor) -> int:
    """The smallest t whose eigen-tail sum_{j > t} lam_j of the sketch's second moment
    Sigma~ = G~^T G~ / N falls under tr(Sigma~) / N: the number of directions that carry more
    than a single sample's share of the energy.  A pilot sketch with m well above the answer
    gives the default m for SkMM."""
    sketch = sketch.detach()
    check_finite_rows(sketch)
    N = sketch.shape[0]
    lam = torch.linalg.eigvalsh(second_moment(sketch)).flip(0).clamp_min(0)
    tr = float(lam.sum())
    tail = torch.flip(torch.cumsum(torch.flip(lam, [0]), 0), [0])  # tail[t] = sum_{j >= t} lam_j
    below = torch.nonzero(tail <= tr / N).squeeze(1)
    return int(below[0]) if below.numel() else int(lam.numel())
