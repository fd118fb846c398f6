"""SkMM on a given gradient sketch: moment matching, rounding, and the audit record."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .maxmin import solve_maxmin
from .moment_matching import moment_problem, second_moment, solve_moment_matching
from .paper import solve_paper
from .rounding import round_weights


@dataclass
class Selection:
    """n distinct sample indices, their weights (where the method has them) and an info record."""

    indices: torch.Tensor
    weights: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


def variance_proxy(sketch: torch.Tensor, indices: torch.Tensor) -> float:
    """tr(Sigma~ Sigma~_S^+) with Sigma~ = G~^T G~ / N and Sigma~_S the same over the selected rows:
    how much of the full data's sketched second moment the coreset fails to cover (lower is better;
    m for a coreset whose moments equal the full data's)."""
    full = second_moment(sketch)
    sub = second_moment(sketch[indices.to(sketch.device)])
    return float(torch.trace(full @ torch.linalg.pinv(sub, hermitian=True)))


def skmm_select(
    sketch: torch.Tensor,
    n: int,
    c: float = 0.6,
    rounding: str = "top",
    seed: int = 0,
    weighting: str = "relative",
    formulation: str = "hinge",
    tol: float | None = None,
    max_iter: int = 20000,
    time_limit: float | None = None,
    progress: bool = False,
    iters: int = 1000,
    lr: float = 0.05,
) -> Selection:
    """Select n of the N rows of a gradient sketch (N x m) by Sketchy Moment Matching.

    Defaults (c = 0.6, relative weighting, top rounding) are the variant chosen by validation error
    in the synthetic experiment (results/selection/synthetic.md).  ``formulation="hinge"`` (default): the squared-hinge moment matching with ratio c;
    ``"maxmin"``: maximise the smallest moment ratio (scale-free, no c); ``"paper"``: Adam from a
    random size-n start with a sparsity term (``iters``, ``lr``; see :mod:`.paper`; uncertified,
    relative weighting only).  Returns the indices, the
    solver's relaxed weights s (on the capped simplex), and an info dict with the certified gap,
    objective values, iterations, time and the variance proxy.
    """
    problem = moment_problem(sketch)
    if formulation == "hinge":
        tol = 1e-4 if tol is None else tol
        sol = solve_moment_matching(problem, n, c=c, weighting=weighting, tol=tol, max_iter=max_iter,
                                    time_limit=time_limit, progress=progress)
    elif formulation == "maxmin":  # scale-free: c and weighting do not apply
        tol = 1e-2 if tol is None else tol
        sol = solve_maxmin(problem, n, tol=tol, max_iter=max_iter, time_limit=time_limit)
        c = weighting = None
    elif formulation == "paper":
        if weighting != "relative":
            raise ValueError("formulation='paper' uses the relative weighting only")
        sol = solve_paper(problem, n, c=c, seed=seed, iters=iters, lr=lr)
    else:
        raise ValueError(f"formulation must be 'hinge', 'maxmin' or 'paper', got {formulation!r}")
    gen = torch.Generator().manual_seed(seed)
    idx = round_weights(sol.weights, n, rounding, gen)
    info = {
        "method": "skmm",
        "formulation": formulation,
        "c": c,
        "weighting": weighting,
        "rounding": rounding,
        "seed": seed,
        "N": sketch.shape[0],
        "m": sketch.shape[1],
        "rank": int(problem.lam.numel()),
        "objective": sol.objective,
        "objective_uniform": sol.objective_uniform,
        "duality_gap": sol.gap,
        "tol": tol,
        "converged": sol.converged,
        "iterations": sol.iterations,
        "seconds": sol.seconds,
        "variance_proxy": variance_proxy(sketch, idx),
    }
    return Selection(indices=idx, weights=sol.weights, info=info)
