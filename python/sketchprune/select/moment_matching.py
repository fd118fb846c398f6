"""Sketchy Moment Matching (SkMM), the moment-matching stage.

Given a gradient sketch G~ (N x m, rows = samples), with Sigma~ = G~^T G~ / N = V diag(lam) V^T and
A = (G~ V) * (G~ V) (N x m, so that a_j^T s = v_j^T G~^T diag(s) G~ v_j is the second moment of
the s-weighted data along eigendirection j), find coreset weights s on the capped simplex
C(n) = {0 <= s_i <= 1/n, sum s = 1} solving

    min_s  f(s) = sum_j w_j * max(0, lam_j / c - a_j^T s)^2          (squared hinge)

i.e. the weighted coreset must carry at least 1/c of the full data's second moment along every
sketched direction.  (This is min over s and gamma_j >= 1/c of sum_j (a_j^T s - gamma_j lam_j)^2
with gamma eliminated.)  Uniform weights give a_j^T s = lam_j exactly, so the constraint only
bites for c < 1; c >= 1 is rejected.  ``weighting="absolute"`` uses w_j = 1 (as written above),
``"relative"`` uses w_j = 1 / lam_j^2 (every direction counts the same).

The problem is convex with an O(N m) gradient; it is solved by accelerated projected gradient
(FISTA with adaptive restart) and stopped on a *certified* tolerance: the Frank-Wolfe duality
gap  g(s) = <grad f(s), s - argmin_{x in C(n)} <grad f(s), x>>  bounds f(s) - f* from above,
and the solver stops when g(s) <= tol * f(uniform) (default tol = 1e-4: the objective is within
0.01% of the uniform baseline's value from the optimum).  The gap reached is always reported.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..ops import cov_accumulate_
from .._numbers import as_real
from ._checks import check_finite_rows
from .simplex import check_size, lmo_capped_simplex, project_capped_simplex_tau
from .._progress import progress_bar


@dataclass
class MomentProblem:
    """A (N x m, float32), lam (m, float64, descending), and the eigenbasis V (m x m)."""

    A: torch.Tensor
    lam: torch.Tensor
    V: torch.Tensor


@dataclass
class MomentSolution:
    weights: torch.Tensor  # (N,) float64, on C(n)
    objective: float
    objective_uniform: float
    gap: float  # certified: objective - optimum <= gap
    iterations: int
    converged: bool
    seconds: float
    history: list = field(default_factory=list)  # (iteration, objective, gap)


def second_moment(x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """X^T X / N (float64, m x m) of a sketch, streamed in row chunks: through cov_accumulate_ for
    float32/16 rows (no float64 copy of X is made), a chunked float64 matmul for float64 rows."""
    N, m = x.shape
    sigma = torch.zeros(m, m, dtype=torch.float64, device=x.device)
    for i in range(0, N, chunk):
        c = x[i:i + chunk]
        if c.dtype == torch.float64:
            sigma.addmm_(c.T, c, alpha=1.0 / N)
        else:
            cov_accumulate_(sigma, c if c.dtype in (torch.float32, torch.float16, torch.bfloat16) else c.float(),
                            1.0 / N)
    return sigma


def eigen_rotation(x: torch.Tensor, rank_tol: float = 1e-10, chunk: int = 65536,
                   dtype: torch.dtype = torch.float64):
    """(proj, lam, V) of a sketch x (N x m): Sigma~ = x^T x / N = V diag(lam) V^T (lam descending,
    directions with lam_j <= rank_tol * lam_max dropped) and proj = x V (N x m', in ``dtype``,
    computed in row chunks), so proj^T proj / N = diag(lam)."""
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"sketch must be a non-empty 2-D tensor (N x m), got shape {tuple(x.shape)}")
    x = x.detach()
    check_finite_rows(x)  # before the eigenproblem, which would fail on them with an opaque LinAlgError
    lam, V = torch.linalg.eigh(second_moment(x, chunk))
    lam, V = lam.flip(0), V.flip(1)
    keep = lam > rank_tol * lam[0].clamp_min(torch.finfo(torch.float64).tiny)
    lam, V = lam[keep], V[:, keep]
    if lam.numel() == 0:
        raise ValueError("the sketch is all zero (rank 0): every sample's gradient vanishes in it, so there is "
                         "nothing to match; check the gradient source (e.g. a model at a stationary point)")
    proj = torch.empty(x.shape[0], V.shape[1], dtype=dtype, device=x.device)
    Vd = V.to(dtype)
    for i in range(0, x.shape[0], chunk):
        proj[i:i + chunk] = x[i:i + chunk].to(dtype) @ Vd
    return proj, lam, V


def moment_problem(sketch: torch.Tensor, rank_tol: float = 1e-10, chunk: int = 65536,
                   dtype: torch.dtype = torch.float64) -> MomentProblem:
    """Build (A, lam, V) from a sketch G~ (N x m).  Directions with lam_j <= rank_tol * lam_max
    (numerically zero) are dropped.  A is kept in ``dtype``: float64 by default, because in
    float32 the objective stalls at its rounding noise well above a tight certified gap."""
    x = sketch if sketch.dtype in (torch.float32, torch.float16, torch.bfloat16) else sketch.float()
    proj, lam, V = eigen_rotation(x, rank_tol, chunk, dtype)
    return MomentProblem(A=proj.square_(), lam=lam, V=V)


def check_c(c) -> None:
    """The moment ratio c of the hinge and paper formulations: a number in (0, 1)."""
    v = as_real(c)
    if v is None or not 0 < v < 1:
        why = (": with c >= 1 uniform weights already satisfy every moment constraint, so moment matching would "
               "just return uniform sampling") if v is not None and v >= 1 else ""
        raise ValueError(f"c must be in (0, 1), got {c!r}{why}")


def _spectral_norm_sq_tangent(A: torch.Tensor, iters: int = 50) -> float:
    """Largest eigenvalue of A^T P A with P = I - 11^T/N: the curvature of ||A^T s||^2 along
    directions with sum(ds) = 0, the only ones a step inside the simplex can take.  Because A is
    entrywise positive, its top singular direction is close to the all-ones vector, so this is
    much smaller than ||A||_2^2 and allows far longer steps."""
    N = A.shape[0]
    mu = A.mean(0)
    v = torch.ones(A.shape[1], dtype=A.dtype, device=A.device) / math.sqrt(A.shape[1])
    est = 0.0
    for _ in range(iters):
        w = A.T @ (A @ v) - N * mu * (mu @ v)
        est = float(w.norm())
        if est == 0:
            return 0.0
        v = w / est
    return est


def solve_moment_matching(
    problem: MomentProblem,
    n: int,
    c: float = 0.8,
    weighting: str = "absolute",
    tol: float = 1e-4,
    max_iter: int = 20000,
    time_limit: float | None = None,
    check_every: int = 25,
    progress: bool = False,
) -> MomentSolution:
    """Minimise the squared-hinge moment-matching objective on C(n) to a certified tolerance."""
    A, lam = problem.A, problem.lam
    N = A.shape[0]
    check_size(N, n)
    check_c(c)
    if weighting not in ("absolute", "relative"):
        raise ValueError(f"weighting must be 'absolute' or 'relative', got {weighting!r}")
    t0 = time.perf_counter()
    w = torch.ones_like(lam) if weighting == "absolute" else 1.0 / lam.square()
    A64 = (A.double() * w.sqrt())  # columns scaled so f = ||relu(b - A64^T s)||^2
    A32 = A64.float()  # the iterations' matvecs; float64 for the certified checks
    b = lam / c * w.sqrt()

    def exact(s):  # float64 moments, objective and gradient at s
        mom = A64.T @ s
        res = torch.relu(b - mom)
        return mom, float(res.square().sum()), -2.0 * (A64 @ res)

    # a floor relative to the data's scale: with the moments constant along the simplex (identical
    # rows) the curvature is 0, and the (centred, hence ~0) gradient must not be divided by ~0
    L = max(2.0 * _spectral_norm_sq_tangent(A64) * 1.05, 1e-12 * float(A64.square().sum()) / N, 1e-300)
    s = torch.full((N,), 1.0 / N, dtype=torch.float64, device=A.device)
    mom_s, f_uni, _ = exact(s)
    f = f_uni
    y, mom_y, t = s.clone(), mom_s.clone(), 1.0
    tau = None  # the projection's shift, warm-started across iterations
    hist, gap, it, converged = [], float("inf"), 0, False
    bar = progress_bar(progress, total=max_iter, desc="moment matching", unit="it")
    for it in range(1, max_iter + 1):
        # accelerated projected-gradient step (FISTA); two float32 matvecs per iteration: the
        # gradient at y, and the moments of the step s_new - s (tracked incrementally in float64)
        g_y = -2.0 * (A32 @ torch.relu(b - mom_y).float()).double()
        g_y -= g_y.mean()       # the projection ignores constant shifts; centred, the step stays in scale
        s_new, tau = project_capped_simplex_tau(y - g_y / L, n, tau)
        mom_new = mom_s + (A32.T @ (s_new - s).float()).double()
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_new
        if float((y - s_new) @ (s_new - s)) > 0:  # gradient-based adaptive restart
            t_new, beta = 1.0, 0.0
        y = s_new + beta * (s_new - s)
        mom_y = mom_new + beta * (mom_new - mom_s)
        s, mom_s, t = s_new, mom_new, t_new
        if it % check_every == 0 or it == max_iter:
            mom_s, f, gs = exact(s)  # resynchronise the tracked moments, certify
            mom_y = mom_s + (mom_y - mom_new)
            gap = float(gs @ (s - lmo_capped_simplex(gs, n)))
            hist.append((it, f, gap))
            if bar is not None:
                bar.set_postfix(objective=f"{f:.3e}", gap=f"{gap:.2e}")
                bar.update(check_every)
            if gap <= tol * f_uni:
                converged = True
                break
            if time_limit is not None and time.perf_counter() - t0 > time_limit:
                break
    if bar is not None:
        bar.close()
    return MomentSolution(weights=s, objective=f, objective_uniform=f_uni, gap=gap, iterations=it,
                          converged=converged, seconds=time.perf_counter() - t0, history=hist)

