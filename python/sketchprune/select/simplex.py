"""The capped simplex C(n) = {s in R^N : 0 <= s_i <= 1/n, sum_i s_i = 1}.

Its vertices are exactly the size-n subsets with weights 1/n, so a point of C(n) is a relaxed
size-n coreset and n * s_i are valid inclusion probabilities.  This file has the Euclidean
projection onto C(n) and its linear minimisation oracle (the Frank-Wolfe vertex), used by the
moment-matching solver for steps and for its duality-gap certificate.
"""

from __future__ import annotations

import torch


def check_size(N: int, n: int) -> None:
    if not 1 <= n <= N:
        raise ValueError(f"coreset size n must be in [1, N={N}], got {n}")


def project_capped_simplex(v: torch.Tensor, n: int, iters: int = 100) -> torch.Tensor:
    """argmin_{s in C(n)} ||s - v||_2 for a 1-D tensor v.

    s = clip(v - tau, 0, 1/n) with the shift tau solving sum(s) = 1: sum(s) is continuous and
    non-increasing in tau, so tau is found by bisection, then made exact on the final active set.
    """
    N = v.shape[0]
    check_size(N, n)
    u = 1.0 / n
    if n == N:
        return torch.full_like(v, u)
    lo = (v.min() - u).item()  # sum = N*u >= 1 here
    hi = v.max().item()  # sum = 0 here
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if torch.clamp(v - mid, 0.0, u).sum().item() > 1.0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * max(1.0, abs(hi)):
            break
    tau = 0.5 * (lo + hi)
    s = torch.clamp(v - tau, 0.0, u)
    # exact shift on the free set (0 < s < u): sum must be 1
    free = (v - tau > 0) & (v - tau < u)
    n_free = int(free.sum())
    if n_free:
        at_cap = int((v - tau >= u).sum())
        tau = ((v[free].sum() - (1.0 - at_cap * u)) / n_free).item()
        s = torch.clamp(v - tau, 0.0, u)
    return s


def lmo_capped_simplex(grad: torch.Tensor, n: int) -> torch.Tensor:
    """argmin_{x in C(n)} <grad, x>: weight 1/n on the n smallest entries of grad."""
    check_size(grad.shape[0], n)
    x = torch.zeros_like(grad)
    x[torch.topk(grad, n, largest=False).indices] = 1.0 / n
    return x
