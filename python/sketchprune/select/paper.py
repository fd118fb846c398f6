"""The ``paper`` formulation of SkMM's moment matching: a first-order, unconstrained procedure in
the spirit of the original experiments' optimiser, written from its description (fidelity to the
procedure, not speed; the certified solvers in ``moment_matching`` / ``maxmin`` are the fast
path).

Variables: logits theta (N,) with weights s = sigmoid(theta) / n in (0, 1/n) (the box of C(n)),
and slacks phi (m,) with moment ratios gamma_j = 1/c + softplus(phi_j) >= 1/c.  With the
moment ratios of the weighted coreset u_j(s) = a_j^T s / lam_j (1 for uniform weights), Adam
minimises

    mean_j (u_j(s) - gamma_j)^2                       moment matching (relative weighting)
  + rho   * (sum_i s_i - 1)^2                         the simplex's sum constraint, as a penalty
  + beta  * mean_i 4 (n s_i)(1 - n s_i)               sparsity: zero exactly at s_i in {0, 1/n}

from a random size-n start (theta = +4 on n random samples, -4 elsewhere), for ``iters`` steps
at learning rate ``lr``.  The n largest weights are the selection.  Nothing here is certified:
the objective values are reported, and the weights returned are the Euclidean projection of s
onto C(n) (so they are a valid relaxed coreset).
"""

from __future__ import annotations

import time

import torch

from .moment_matching import MomentProblem, MomentSolution, check_c
from .simplex import check_size, project_capped_simplex


def solve_paper(problem: MomentProblem, n: int, c: float = 0.6, seed: int = 0, iters: int = 1000,
                lr: float = 0.05, rho: float = 10.0, beta: float = 0.1) -> MomentSolution:
    A, lam = problem.A, problem.lam
    N = A.shape[0]
    check_size(N, n)
    check_c(c)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    t0 = time.perf_counter()
    B = (A.double() / lam).float()  # u(s) = B^T s
    gen = torch.Generator().manual_seed(seed)
    start = torch.randperm(N, generator=gen)[:n]
    theta = torch.full((N,), -4.0, device=A.device)
    theta[start.to(A.device)] = 4.0
    theta.requires_grad_(True)
    phi = torch.zeros(B.shape[1], device=A.device, requires_grad=True)
    opt = torch.optim.Adam([theta, phi], lr=lr)

    def loss_parts(theta, phi):
        s = torch.sigmoid(theta) / n
        u = B.T @ s
        gamma = 1.0 / c + torch.nn.functional.softplus(phi)
        match = (u - gamma).square().mean()
        total = (s.sum() - 1.0).square()
        ns = n * s
        sparse = (4.0 * ns * (1.0 - ns)).mean()
        return match, total, sparse, s

    with torch.no_grad():
        u0 = B.T @ torch.full((N,), 1.0 / N, device=A.device)
        f_uni = float(torch.relu(1.0 / c - u0).square().mean())
    hist = []
    for it in range(1, iters + 1):
        opt.zero_grad()
        match, total, sparse, _ = loss_parts(theta, phi)
        loss = match + rho * total + beta * sparse
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == iters:
            hist.append((it, float(loss.detach()), float(match.detach())))
    with torch.no_grad():
        s = torch.sigmoid(theta).double() / n
        w = project_capped_simplex(s, n)
        f = float(torch.relu(1.0 / c - (B.double().T @ w)).square().mean())
    return MomentSolution(weights=w, objective=f, objective_uniform=f_uni, gap=float("nan"), iterations=iters,
                          converged=False, seconds=time.perf_counter() - t0, history=hist)
