"""The capped simplex C(n) = {s in R^N : 0 <= s_i <= 1/n, sum_i s_i = 1}.

Its vertices are exactly the size-n subsets with weights 1/n, so a point of C(n) is a relaxed
size-n coreset and n * s_i are valid inclusion probabilities.  This file has the Euclidean
projection onto C(n) and its linear minimisation oracle (the Frank-Wolfe vertex), used by the
moment-matching solver for steps and for its duality-gap certificate.
"""

from __future__ import annotations

import torch

from ._checks import check_n


def check_size(N: int, n: int) -> None:
    check_n(n, N, who="coreset size n")   # bools too: True is not a count


def project_capped_simplex(v: torch.Tensor, n: int, tau0: float | None = None) -> torch.Tensor:
    """argmin_{s in C(n)} ||s - v||_2 for a 1-D tensor v (see :func:`project_capped_simplex_tau`)."""
    return project_capped_simplex_tau(v, n, tau0)[0]


def project_capped_simplex_tau(v: torch.Tensor, n: int, tau0: float | None = None, max_steps: int = 200):
    """(s, tau): the projection s = clip(v - tau, 0, 1/n) with the shift tau solving sum(s) = 1.

    h(tau) = sum(clip(v - tau, 0, 1/n)) - 1 is piecewise linear and non-increasing, with slope
    -(number of free coordinates).  Safeguarded Newton steps inside a bracket find its root
    exactly in a few passes, especially from a warm start ``tau0`` (the previous iteration's
    shift); bisection takes over whenever a Newton step would leave the bracket.
    """
    N = v.shape[0]
    check_size(N, n)
    u = 1.0 / n
    if n == N:
        return torch.full_like(v, u), float("nan")
    lo, hi = (v.min() - u).item(), v.max().item()  # h(lo) = N u - 1 >= 0 >= h(hi) = -1
    tau = tau0 if tau0 is not None and lo < tau0 < hi else 0.5 * (lo + hi)
    for _ in range(max_steps):
        z = v - tau
        h = torch.clamp(z, 0.0, u).sum().item() - 1.0
        if h == 0.0:
            break
        if h > 0:
            lo = tau
        else:
            hi = tau
        n_free = int(((z > 0) & (z < u)).sum())
        step = tau + h / n_free if n_free else None
        if step is None or not (lo < step < hi):
            step = 0.5 * (lo + hi)
        if step == tau or hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
        tau = step
    return torch.clamp(v - tau, 0.0, u), tau


def lmo_capped_simplex(grad: torch.Tensor, n: int) -> torch.Tensor:
    """argmin_{x in C(n)} <grad, x>: weight 1/n on the n smallest entries of grad."""
    check_size(grad.shape[0], n)
    x = torch.zeros_like(grad)
    x[torch.topk(grad, n, largest=False).indices] = 1.0 / n
    return x
