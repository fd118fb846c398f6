"""The scale-free ``maxmin`` formulation of moment matching.

    maximise_{s in C(n)}  min_j  a_j^T s / lam_j

the largest t such that the weighted coreset carries at least t times the full data's second
moment along every sketched eigendirection (no c to choose).  With B = A diag(1/lam) this is the
saddle point max_s min_{w in simplex} w^T B^T s.  It is solved by accelerated projected gradient on
the smoothed objective  g_mu(s) = -mu log sum_j exp(-(B^T s)_j / mu)  (a soft minimum, whose
gradient is B w with w = softmax(-(B^T s)/mu)), with mu shrunk as the gap closes, and certified by
the primal-dual gap

    U(w) - L(s) = max_{s' in C(n)} (B w)^T s'  -  min_j (B^T s)_j  >= V* - L(s) >= 0,

where the max is the mean of the n largest entries of B w.  It stops when the gap is at most
``tol`` x L(s) (default 1e-2: the soft-minimum smoothing makes this a first-order method for a
linear program, so tight gaps take many iterations -- about 15k for 1e-3 at N = 300).
"""

from __future__ import annotations

import math
import time

import torch

from .moment_matching import MomentProblem, MomentSolution, _spectral_norm_sq_tangent
from .simplex import check_size, project_capped_simplex_tau


def solve_maxmin(problem: MomentProblem, n: int, tol: float = 1e-2, max_iter: int = 20000,
                 time_limit: float | None = None, check_every: int = 25) -> MomentSolution:
    """Maximise min_j a_j^T s / lam_j over C(n); ``objective`` is that minimum ratio (t), ``gap`` the
    certified primal-dual gap, ``objective_uniform`` the value at uniform weights (1.0)."""
    A, lam = problem.A, problem.lam
    N = A.shape[0]
    check_size(N, n)
    t0 = time.perf_counter()
    B64 = A.double() / lam
    B32 = B64.float()
    m = B64.shape[1]
    L2 = max(_spectral_norm_sq_tangent(B64), 1e-12 * float(B64.square().sum()) / N, 1e-300)  # floor: see hinge
    s = torch.full((N,), 1.0 / N, dtype=torch.float64, device=A.device)
    ratios = B64.T @ s
    lower = float(ratios.min())
    f_uni = lower
    mu = max(0.5 * lower, 1e-12) / math.log(max(m, 2))
    y, t, tau = s.clone(), 1.0, None
    hist, gap, it, converged = [], float("inf"), 0, False
    for it in range(1, max_iter + 1):
        r_y = (B32.T @ y.float()).double()
        w = torch.softmax(-r_y / mu, 0)
        grad = (B32 @ w.float()).double()  # ascent direction of the soft minimum
        grad -= grad.mean()                 # the projection ignores constant shifts
        step = mu / L2  # the soft minimum is (||B||^2 / mu)-smooth along the simplex
        s_new, tau = project_capped_simplex_tau(y + step * grad, n, tau)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_new
        if float((s_new - y) @ (s_new - s)) < 0:  # adaptive restart (ascent version)
            t_new, beta = 1.0, 0.0
        y = s_new + beta * (s_new - s)
        s, t = s_new, t_new
        if it % check_every == 0 or it == max_iter:
            ratios = B64.T @ s
            lower = float(ratios.min())
            w = torch.softmax(-ratios / mu, 0)
            upper = float(torch.topk(B64 @ w, n).values.sum()) / n
            gap = upper - lower
            hist.append((it, lower, gap))
            if gap <= tol * max(lower, 1e-300):
                converged = True
                break
            if gap < 4 * mu * math.log(m):  # the smoothing dominates the gap: sharpen it
                mu *= 0.5
                t, y = 1.0, s.clone()
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
    return MomentSolution(weights=s, objective=lower, objective_uniform=f_uni, gap=gap, iterations=it,
                          converged=converged, seconds=time.perf_counter() - t0, history=hist)
