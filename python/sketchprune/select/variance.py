"""The ``variance`` formulation of moment matching: minimise the variance proxy directly.

The hinge, maxmin and paper formulations ask the coreset's second moment to dominate a fraction of
the full data's along each sketched eigendirection separately (diagonal entries in the eigenbasis
V).  What the theory of SkMM bounds with those constraints is the variance term

    tr(Sigma~ Sigma~_S^+),    Sigma~ = G~^T G~ / N,    Sigma~_S(s) = G~^T diag(s) G~,

the quantity reported as ``variance_proxy`` for every selection.  This formulation minimises it
(with a ridge, so it stays finite when n < m and the moment matrix of a size-n vertex is singular)
over the capped simplex C(n):

    f(s) = tr( Lam (X^T diag(s) X + eps I)^{-1} ),     X = G~ V (N x m, eigenbasis),  Lam = diag(lam)

i.e. the whole matrix inequality behind the moment constraints rather than its diagonal.  This is
the A-optimal (V-optimal, for prediction under the data distribution) design criterion of
classical experimental design, restricted to the sketched subspace.  ``eps`` is given relative to
the mean eigenvalue tr(Sigma~) / m.  f is convex on C(n); at uniform weights f = sum_j lam_j /
(lam_j + eps), which is at most m.

Two solvers:

* :func:`solve_variance`: Frank-Wolfe on C(n) with exact line search, certified by the
  Frank-Wolfe duality gap (f(s) - f* <= gap), stopped when gap <= tol * f(s).  The gradient is
  df/ds_i = -||Lam^{1/2} M^{-1} x_i||^2 (O(N m^2) per iteration); the line search along the
  segment to the vertex is exact through one m x m eigendecomposition.  The relaxed weights are
  rounded like the other formulations (``sample`` / ``top``).
* :func:`greedy_variance`: the discrete greedy on the vertices: starting from the empty set, add
  the sample whose inclusion (weight 1/n) lowers f most, n times, with rank-one (Sherman-Morrison)
  updates: O(N m) per added sample, no relaxed solve.
"""

from __future__ import annotations

import math
import time

import torch

from .moment_matching import MomentSolution, eigen_rotation
from .simplex import check_size
from .._progress import progress_bar


def variance_problem(sketch: torch.Tensor, rank_tol: float = 1e-10, chunk: int = 65536):
    """(X, lam): the sketch rotated into the eigenbasis of its second moment (N x m', float64, so
    X^T X / N = diag(lam)) and the eigenvalues (descending; numerically zero directions dropped)."""
    x = sketch if sketch.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) else sketch.float()
    X, lam, _ = eigen_rotation(x, rank_tol, chunk, torch.float64)
    return X, lam


def _ridge(lam: torch.Tensor, eps: float) -> float:
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps (the ridge, relative to the mean eigenvalue) must be positive and finite, got {eps}")
    return eps * float(lam.mean())


def uniform_objective(lam: torch.Tensor, eps: float) -> float:
    """f at uniform weights: sum_j lam_j / (lam_j + eps') (the moment matrix is diag(lam) there)."""
    return float((lam / (lam + _ridge(lam, eps))).sum())


def variance_objective(X: torch.Tensor, lam: torch.Tensor, s: torch.Tensor, eps: float) -> float:
    """f(s) = tr(Lam (X^T diag(s) X + eps' I)^{-1}) with eps' = eps * mean(lam)."""
    M = X.T @ (X * s[:, None]) + _ridge(lam, eps) * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    return float((torch.diagonal(torch.cholesky_inverse(torch.linalg.cholesky(M))) * lam).sum())


def _line_search(M: torch.Tensor, Mv: torch.Tensor, lam: torch.Tensor) -> float:
    """argmin over g in [0, 1] of tr(Lam ((1-g) M + g Mv)^{-1}), exactly: with M = C C^T and
    C^{-1} Mv C^{-T} = Q diag(k) Q^T the objective is sum_i w_i / (1 - g + g k_i),
    w_i = ||Lam^{1/2} C^{-T} q_i||^2, a convex function of g minimised by bisection on its slope."""
    C = torch.linalg.cholesky(M)
    K = torch.linalg.solve_triangular(C, torch.linalg.solve_triangular(C, Mv, upper=False).T, upper=False)
    kap, Q = torch.linalg.eigh(0.5 * (K + K.T))
    W = torch.linalg.solve_triangular(C.T, Q, upper=True)  # C^{-T} Q
    w = (W.square() * lam[:, None]).sum(0)
    slope = lambda g: float((-w * (kap - 1.0) / (1.0 - g + g * kap).square()).sum())  # noqa: E731
    if slope(0.0) >= 0:
        return 0.0
    if slope(1.0) <= 0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if slope(mid) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def solve_variance(X: torch.Tensor, lam: torch.Tensor, n: int, eps: float = 0.01, tol: float = 1e-3,
                   max_iter: int = 2000, time_limit: float | None = None, progress: bool = False) -> MomentSolution:
    """Minimise f(s) on C(n) by Frank-Wolfe with exact line search; ``gap`` is the certified
    Frank-Wolfe duality gap (f(s) - min f <= gap), ``converged`` when gap <= tol * f(s)."""
    N, m = X.shape
    check_size(N, n)
    e = _ridge(lam, eps)
    t0 = time.perf_counter()
    eye = torch.eye(m, dtype=X.dtype, device=X.device)
    s = torch.full((N,), 1.0 / N, dtype=torch.float64, device=X.device)
    M = torch.diag(lam.to(X.dtype)) + e * eye  # X^T X / N = Lam exactly in the eigenbasis
    f_uni = uniform_objective(lam, eps)
    f, gap, it, converged, hist = f_uni, float("inf"), 0, False, []
    bar = progress_bar(progress, total=max_iter, desc="moment matching (variance)", unit="it")
    for it in range(1, max_iter + 1):
        P = torch.cholesky_inverse(torch.linalg.cholesky(M))
        f = float((torch.diagonal(P) * lam).sum())
        B = X @ P
        grad = -(B.square() @ lam)
        v = torch.topk(grad, n, largest=False).indices
        gap = float(grad @ s) - float(grad[v].sum()) / n
        hist.append((it, f, gap))
        if bar is not None:
            bar.set_postfix(objective=f"{f:.4g}", gap=f"{gap:.2e}")
            bar.update(1)
        if gap <= tol * f:
            converged = True
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        Xv = X[v]
        Mv = Xv.T @ Xv / n + e * eye
        g = _line_search(M, Mv, lam)
        if g <= 0.0:  # no descent along the Frank-Wolfe direction (round-off at the optimum)
            break
        s.mul_(1.0 - g)
        s[v] += g / n
        M = (1.0 - g) * M + g * Mv
    if bar is not None:
        bar.close()
    return MomentSolution(weights=s, objective=f, objective_uniform=f_uni, gap=gap, iterations=it,
                          converged=converged, seconds=time.perf_counter() - t0, history=hist)


#: off the CPU, greedy_variance reads its in-round stop test back once per this many picks
STOP_TEST_STRIDE = 4


def _first_below(gains, start: int, outside: float):
    """The first index >= start whose gain (a list of 1-element device tensors) is below
    ``outside``, or None; one transfer for them all."""
    vals = torch.cat(gains[start:]).tolist()
    return next((start + t for t, v in enumerate(vals) if v < outside), None)


#: below this eps the greedy's refresh products run in the problem's float64 (see greedy_variance)
REFRESH_F32_MIN_EPS = 0.05


def greedy_variance(X: torch.Tensor, lam: torch.Tensor, n: int, eps: float = 0.01, batch: int | None = None,
                    progress: bool = False, stop_test_stride: int | None = None) -> tuple[torch.Tensor, float]:
    """(indices, f): n distinct samples added one at a time, each the one that lowers
    f = tr(Lam (sum_{i in S} x_i x_i^T / n + eps' I)^{-1}) most; f at the final set.

    Adding x (weight 1/n, x_s = x / sqrt(n)) to a set with moment matrix M lowers f by
    q / (1 + h), q = x_s^T M^{-1} Lam M^{-1} x_s, h = x_s^T M^{-1} x_s.  Both are kept for every
    sample.  The picks are made in rounds: the ``4 * batch`` samples with the largest gains form a
    shortlist, up to ``batch`` of them are picked one at a time by exact greedy inside it (their
    gains updated by Sherman-Morrison), and the round ends early once the best shortlisted gain
    falls below the largest gain outside the shortlist at the round's start (so the pick is the
    exact greedy one whenever gains only shrink as the set grows, the usual case).  Then h and q
    of every sample are refreshed for the rank-b change of M^{-1} by one N x m x 2b product
    (Woodbury).  The cost is about 4 n N m flops in N m x 2b matrix products, whatever the
    batch; ``batch=1`` is plain greedy.  Default batch: n / 8 rounded up, at most 32 (the flops do not
    depend on it, the number of small per-round operations does: measured on one thread, n = 100 of
    N = 1000 at m = 256 -- one class of a class-balanced selection -- takes 16 ms at batch 13 and
    36 ms at the earlier default of 2; n = 1000 of 10,000 the same at 16 and 32).  Those
    products run in float32 (a float32 copy of X, N x m) when ``eps >= REFRESH_F32_MIN_EPS``
    (0.05), else in float64 (h and q are then small differences of terms of order |x|^2 / eps',
    which float32 products would swamp); h, q and M^{-1} accumulate in float64, and the returned
    f is read from the float64 M^{-1} of the final set.  ``stop_test_stride``: picks per host read
    of the in-round stop test (default 1 on CPU, ``STOP_TEST_STRIDE`` elsewhere; the result does not
    depend on it).
    """
    N, m = X.shape
    check_size(N, n)
    e = _ridge(lam, eps)
    b_max = max(1, min(32, -(-n // 8))) if batch is None else int(batch)
    if b_max < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    lamd = lam.to(X.dtype)
    sc = 1.0 / math.sqrt(n)
    rows = lambda i: X[i] * sc                      # noqa: E731  (x_s = x / sqrt(n))
    Minv = torch.eye(m, dtype=X.dtype, device=X.device) / e
    h = torch.empty(N, dtype=X.dtype, device=X.device)
    q = torch.empty_like(h)
    for c0 in range(0, N, 65536):                   # M = eps' I to start
        sq = X[c0:c0 + 65536].square() * (sc * sc)
        h[c0:c0 + 65536] = sq.sum(1) / e            # x_s^T M^{-1} x_s
        q[c0:c0 + 65536] = (sq @ lamd) / (e * e)    # x_s^T M^{-1} Lam M^{-1} x_s
    # the refresh products' operand: float32 unless eps is small, where h and q are differences of
    # terms of order |x|^2 / eps' and float32 products would swamp them (measured: eps = 1e-3 picked
    # a set 40% worse than the float64 greedy; 1e-2 2% worse; the default 0.1 agrees to ~1e-5)
    rdt = torch.float32 if eps >= REFRESH_F32_MIN_EPS else X.dtype
    X32 = (X * sc).to(rdt)
    chosen = torch.zeros(N, dtype=torch.bool, device=X.device)
    # how often a round reads its picks' stop test back: every pick on the CPU (free), every
    # STOP_TEST_STRIDE picks elsewhere (a host round trip drains the GPU's queue; a larger stride
    # wastes more picks past a round's end -- most rounds end early)
    stride = (1 if X.device.type == "cpu" else STOP_TEST_STRIDE) if stop_test_stride is None else int(stop_test_stride)
    order = []
    bar = progress_bar(progress, total=n, desc="greedy variance design", unit="sample")
    while len(order) < n:
        b = min(b_max, n - len(order))
        gain = (q / (1.0 + h)).masked_fill_(chosen, -math.inf)
        L = min(N - len(order), 4 * b)
        top = torch.topk(gain, min(N, L + 1))
        short = top.indices[:L]
        outside = float(top.values[L]) if top.values.numel() > L else -math.inf
        # exact greedy inside the shortlist: its rows' h, q and the round's M^{-1} updates
        Xl = rows(short)
        Bl = Xl @ Minv                                  # (L, m): rows x_s^T M^{-1}
        hl, ql = h[short].clone(), q[short].clone()
        taken = torch.zeros(L, dtype=X.dtype, device=X.device)   # -inf once picked
        # picks as device tensors: index j, gain, u = M^{-1} x_s (as updated), d = 1 + h; a pick
        # after the first is kept only while its gain is at least `outside`, a test read from the
        # device every `stride` picks (the picks made past a failing one only changed this round's
        # shortlist copies, and are dropped)
        js, gs, us, ds = [], [], [], []
        read, stop = 1, None                        # picks [1, read) have passed the test
        for i in range(b):
            gl = (ql / (1.0 + hl)).add_(taken)
            j = torch.argmax(gl).reshape(1)
            js.append(j)
            gs.append(gl.index_select(0, j))
            if i + 1 - read >= stride:
                stop = _first_below(gs, read, outside)
                if stop is not None:
                    break
                read = i + 1
            taken.index_fill_(0, j, -math.inf)
            u = Bl.index_select(0, j).reshape(-1)
            d = 1.0 + hl.index_select(0, j)
            lu = lamd * u
            w = Xl @ u
            w2 = w.square()
            ql.sub_(w * (Bl @ lu) * (2.0 / d)).add_(w2 * ((u @ lu) / (d * d)))
            hl.sub_(w2 / d)
            Bl.sub_(torch.outer(w, u / d))
            us.append(u)
            ds.append(d)
        if stop is None and read < len(us):
            stop = _first_below(gs, read, outside)
        keep = len(us) if stop is None else stop      # stop <= len(us): a failing pick is never applied
        picked = short[torch.cat(js[:keep])]
        order.extend(picked.tolist())
        # the round's M^{-1}: one rank-b update, sum_j u_j u_j^T / d_j (the u_j as picked)
        Us = torch.stack(us[:keep], 1)                  # (m, b)
        Mr = Minv - (Us / torch.cat(ds[:keep])) @ Us.T
        chosen[picked] = True
        # every sample's h, q for M^{-1} -> M^{-1} - P K^{-1} P^T, P = M^{-1} U_s, K = I + U_s^T M^{-1} U_s
        Xp = rows(picked)
        P = Minv @ Xp.T                                 # (m, k)
        K = torch.eye(P.shape[1], dtype=X.dtype, device=X.device) + Xp @ P
        Kinv = torch.linalg.inv(K)
        LP = lamd[:, None] * P
        WZ = (X32 @ torch.cat([P, Minv @ (LP @ Kinv)], 1).to(rdt)).to(X.dtype)  # (N, 2k): W = X_s P and Z
        k = P.shape[1]
        W, Z = WZ[:, :k], WZ[:, k:]
        WK = W @ Kinv
        h.sub_((WK * W).sum(1))
        q.sub_((W * Z).sum(1), alpha=2.0).add_(((WK @ (P.T @ LP)) * WK).sum(1))
        Minv = Mr
        if bar is not None:
            bar.update(k)
    if bar is not None:
        bar.close()
    idx = torch.tensor(sorted(order), dtype=torch.long, device=X.device)
    return idx, float((torch.diagonal(Minv) * lamd).sum())
