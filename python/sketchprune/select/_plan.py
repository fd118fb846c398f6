"""Memory plans of the selection step: what ``select`` allocates beyond the sketch it is given.

Every method that reads a sketch (N x m) also reports the variance proxy tr(Sigma~ Sigma~_S^+),
whose m x m float64 second moments, eigendecomposition and pseudo-inverse cost a few m x m float64
matrices whatever the method; SkMM builds its moment problem from the eigendecomposition of
the m x m second moment (another few) and keeps float64 (and float32) rotated copies of the
sketch; the geometry baselines keep float64 copies of the sketch (and an SVD for the leverage
scores).  The plan is an upper bound of the form

    bytes = 8 * (SQUARE[method] * m^2 + ROWS[method] * N * m) + 64 * N,

with the coefficients measured as the peak resident memory of the selection (``VmHWM``, less the
library code paged in; one thread) on N = 300, m = 1500 and N = 2500, m = 1200 (the m^2 terms) and
N = 20000, m = 200 and N = 100000, m = 40 (the N m terms), rounded up by at least 20%; the
largest measured factors are in the comments below.
"""

from __future__ import annotations

#: float64 m x m matrices alive at once: the variance proxy's two second moments, eigh's copy,
#: workspace and eigenvectors, the pseudo-inverse and the product (measured up to 6.5)
SQUARE = 8
SQUARES = {
    # Frank-Wolfe of the relaxed variance formulation (rounding sample / top): the moment matrix,
    # its Cholesky factor and inverse, and the exact line search's triangular solves and
    # eigendecomposition, every iteration (measured up to 12.5; its repeated large temporaries
    # fragment the heap, so the peak varies from run to run)
    "skmm:variance-relaxed": 20,
}
#: float64 N x m copies alive at once, by method (measured factor in parentheses)
ROWS = {
    "skmm:variance": 6.0,          # greedy: the rotated sketch and its float32 copy, h and q (4.7)
    "skmm:variance-relaxed": 9.0,  # the rotated sketch, X P and its square, every iteration (7.1)
    "skmm:hinge": 5.5,             # A, its scaled float64 and float32 copies (4.2)
    "skmm:maxmin": 5.5,            # (4.1)
    "skmm:paper": 5.5,             # (4.3)
    "herding": 3.0,                # (2.1)
    "kcenter": 4.0,                # (2.8)
    "leverage": 5.0,               # a float64 copy and its thin SVD (3.4)
    "ridge-leverage": 7.0,         # (5.4)
    "adaptive": 3.0,               # (2.1)
}
#: every other method that is given a sketch: only the variance proxy's streamed second moment (0.9)
ROWS_PROXY = 1.25
#: a class-balanced selection's per-class m x m work and the pooled proxy after it (measured 7.7)
SQUARE_BALANCED_EXTRA = 2


def _key(method: str, formulation: str, rounding: str | None) -> str:
    if method != "skmm":
        return method
    if formulation == "variance" and rounding in ("sample", "top"):
        return "skmm:variance-relaxed"
    return f"skmm:{formulation}"


def selection_workspace(N: int, m: int, method: str = "skmm", formulation: str = "variance",
                        rounding: str | None = None, class_balanced: bool = False,
                        class_rows: int | None = None) -> int:
    """Bytes ``select(n, method, sketch, formulation=..., rounding=...)`` may allocate beyond an N x m
    sketch (an upper bound; the sketch itself is the caller's).  A class-balanced selection
    (``class_rows``: the size of the largest class, default N) selects one class at a time on a
    float32 copy of its rows, then reports the pooled variance proxy: the larger m x m term of the
    two, and both N x m terms (the heap freed by a class is not always reused by what follows:
    measured up to 6.7 N_c m for hinge per class, against 4.0 pooled)."""
    N, m = int(N), int(m)
    key = _key(method, formulation, rounding)
    rows, square = ROWS.get(key, ROWS_PROXY), SQUARES.get(key, SQUARE)
    if not class_balanced:
        return int(8 * (square * m * m + rows * N * m) + 64 * N)
    Nc = N if class_rows is None else min(N, int(class_rows))
    squares = max(square + SQUARE_BALANCED_EXTRA, SQUARE) * m * m
    return int(8 * (squares + rows * Nc * m + ROWS_PROXY * N * m) + 4 * Nc * m + 64 * N)


def intrinsic_dimension_workspace(N: int, m: int) -> int:
    """Bytes ``intrinsic_dimension`` may allocate for an N x m sketch: the m x m float64 second moment
    and its eigenvalue solve (about four m x m float64 matrices), and the second moment's streaming."""
    N, m = int(N), int(m)
    return int(8 * (5 * m * m + ROWS_PROXY * N * m) + 64 * N)
