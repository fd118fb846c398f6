"""SkMM on a given gradient sketch: moment matching, rounding, and the audit record."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .maxmin import solve_maxmin
from .moment_matching import moment_problem, second_moment, solve_moment_matching
from .paper import solve_paper
from .rounding import round_weights
from .variance import greedy_variance, solve_variance, uniform_objective, variance_problem
from ._checks import check_n

_FORMULATIONS = ("variance", "hinge", "maxmin", "paper")


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
    sketch = sketch.detach()
    full = second_moment(sketch)
    sub = second_moment(sketch[indices.to(sketch.device)])
    return float(torch.trace(full @ torch.linalg.pinv(sub, hermitian=True)))


def skmm_select(
    sketch: torch.Tensor,
    n: int,
    c: float = 0.9,
    rounding: str | None = None,
    seed: int = 0,
    weighting: str = "relative",
    formulation: str = "variance",
    tol: float | None = None,
    max_iter: int = 20000,
    time_limit: float | None = None,
    progress: bool = False,
    iters: int = 1000,
    lr: float = 0.05,
    eps: float = 0.1,
) -> Selection:
    """Select n of the N rows of a gradient sketch (N x m) by Sketchy Moment Matching.

    Formulations of the moment-matching step:

    * ``"variance"`` (default): minimise the ridge-regularised variance proxy
      tr(Sigma~ (Sigma~_S(s) + eps I)^{-1}) -- the term the moment constraints are meant to bound
      -- over the capped simplex (``eps`` relative to the mean eigenvalue; c and weighting do not
      apply; see :mod:`.variance`).  ``rounding="greedy"`` (its default) builds the n-subset one
      sample at a time on that objective; ``"sample"`` / ``"top"`` round the relaxed optimum
      found by Frank-Wolfe (certified gap, at most 500 iterations, ``tol`` default 1e-3 relative).
    * ``"hinge"``: the squared-hinge moment matching with ratio c (certified, ``tol`` default 1e-4
      of f(uniform)); ``"maxmin"``: maximise the smallest moment ratio (scale-free, no c);
      ``"paper"``: Adam from a random size-n start with a sparsity term (``iters``, ``lr``; see
      :mod:`.paper`; uncertified, relative weighting only).  Their default rounding is ``sample``.

    Returns the indices, the weights s (the relaxed solution on the capped simplex; for greedy,
    1/n on the chosen samples), and an info dict with the solver's objective, certified gap (None
    for greedy), iterations, time, the variance proxy, ``support`` (weights above 1e-6 / n) and
    ``top_mass`` (the mass of the n largest weights: 1 for a vertex of C(n), n / N for uniform).
    The sketch is read detached (selection is not differentiable); rows with NaN or Inf values are
    an error naming them.

    Defaults (variance, eps = 0.1, greedy) were chosen on the validation split of the synthetic
    experiment (``bench/selection_synthetic.py``, ``docs/selection.md``): the lowest mean
    validation rank among 16 hinge and 16 variance variants.  Through
    :func:`sketchprune.select.select` the selection is class-balanced when labels are given.
    What the hinge defaults (c = 0.9, relative, sample) were chosen from, on the Fashion-MNIST
    validation split:

    * The constraint a_j^T s >= lam_j / c asks the coreset for 1/c times the data's second moment
      along every sketched direction, which selection can only meet with large-norm gradients.
      At c = 0.6 the selected samples' feature norm was 1.27-1.36x the pool mean and the classes
      were badly skewed (1 to 31 samples per class at n = 100); the variance proxy halved while
      validation accuracy fell 10-20 points below uniform sampling.  The smaller the push (c
      towards 1), the better the accuracy.
    * For c >= ~0.8 the hinge optimum is 0 on a whole face of C(n) (constraints satisfiable), and
      the solver returns an interior point of it (support ~N, top_mass << 1).  ``top`` rounding
      then keeps the samples the gradient pushed up most -- the largest-norm ones (norm 1.47x the
      mean, 50% validation accuracy vs 72% for sampling): an artefact of where the solver stopped,
      not of the optimum.  ``sample`` rounding keeps n s_i as inclusion probabilities, which is
      faithful for interior and vertex solutions alike.
    * Class balance (the moment matching run inside each class) removes the class skew; with it SkMM
      at c = 0.9 is at uniform sampling's level on this data (see the docs for the numbers).
    """
    if not isinstance(sketch, torch.Tensor) or sketch.dim() != 2 or not sketch.is_floating_point():
        raise ValueError(f"sketch must be a 2-D float tensor (N x m), got "
                         f"{tuple(sketch.shape) if hasattr(sketch, 'shape') else type(sketch).__name__}"
                         f"{'' if not hasattr(sketch, 'dtype') else f' of {sketch.dtype}'}")
    sketch = sketch.detach()  # selection is not differentiable
    n = check_n(n, int(sketch.shape[0]))
    if formulation not in _FORMULATIONS:
        raise ValueError(f"formulation must be one of {', '.join(map(repr, _FORMULATIONS))}, got {formulation!r}")
    if rounding is None:
        rounding = "greedy" if formulation == "variance" else "sample"
    if rounding == "greedy" and formulation != "variance":
        raise ValueError("rounding='greedy' applies to formulation='variance' only")
    allowed = ("greedy", "sample", "top") if formulation == "variance" else ("sample", "top")
    if rounding not in allowed:
        raise ValueError(f"rounding must be one of {', '.join(map(repr, allowed))} for formulation="
                         f"{formulation!r}, got {rounding!r}")
    if formulation == "variance":
        return _variance_select(sketch, n, rounding, seed, eps, tol, max_iter, time_limit, progress)
    problem = moment_problem(sketch)
    if formulation == "hinge":
        tol = 1e-4 if tol is None else tol
        sol = solve_moment_matching(problem, n, c=c, weighting=weighting, tol=tol, max_iter=max_iter,
                                    time_limit=time_limit, progress=progress)
    elif formulation == "maxmin":  # scale-free: c and weighting do not apply
        tol = 1e-2 if tol is None else tol
        sol = solve_maxmin(problem, n, tol=tol, max_iter=max_iter, time_limit=time_limit)
        c = weighting = None
    else:  # paper
        if weighting != "relative":
            raise ValueError("formulation='paper' uses the relative weighting only")
        sol = solve_paper(problem, n, c=c, seed=seed, iters=iters, lr=lr)
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
        "support": int((sol.weights > 1e-6 / n).sum()),
        "top_mass": float(torch.topk(sol.weights, n).values.sum()),
    }
    return Selection(indices=idx, weights=sol.weights, info=info)


def _variance_select(sketch, n, rounding, seed, eps, tol, max_iter, time_limit, progress) -> Selection:
    X, lam = variance_problem(sketch)
    if rounding == "greedy":
        t0 = time.perf_counter()
        idx, f = greedy_variance(X, lam, n, eps, progress=progress)
        weights = torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
        weights[idx] = 1.0 / n
        solver = {"objective": f, "duality_gap": None, "tol": None, "converged": True, "iterations": n,
                  "seconds": time.perf_counter() - t0}
    else:
        tol = 1e-3 if tol is None else tol
        sol = solve_variance(X, lam, n, eps=eps, tol=tol, max_iter=min(max_iter, 500), time_limit=time_limit,
                             progress=progress)
        weights = sol.weights
        idx = round_weights(weights, n, rounding, torch.Generator().manual_seed(seed))
        solver = {"objective": sol.objective, "duality_gap": sol.gap, "tol": tol, "converged": sol.converged,
                  "iterations": sol.iterations, "seconds": sol.seconds}
    info = {"method": "skmm", "formulation": "variance", "eps": eps, "c": None, "weighting": None,
            "rounding": rounding, "seed": seed, "N": sketch.shape[0], "m": sketch.shape[1], "rank": int(lam.numel()),
            "objective_uniform": uniform_objective(lam, eps), **solver,
            "variance_proxy": variance_proxy(sketch, idx), "support": int((weights > 1e-6 / n).sum()),
            "top_mass": float(torch.topk(weights, n).values.sum())}
    return Selection(indices=idx, weights=weights, info=info)
