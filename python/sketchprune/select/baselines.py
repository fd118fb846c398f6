"""Classic coreset baselines, all returning exactly n distinct indices (sorted, int64).

Geometry-based methods take a feature matrix X (N x m: a gradient sketch, or embeddings):
``uniform``, ``herding``, ``kcenter``, ``leverage``, ``ridge_leverage``, ``adaptive``.
Score-based methods take model outputs through a documented interface and keep the n
highest-scoring samples: ``grand`` (per-sample gradient norms), ``el2n`` (error-vector norm
||p - onehot(y)||), ``entropy``, ``margin`` (smallest top-1 minus top-2 probability first),
``least_confidence`` (1 - max p).  ``probs`` is (N x classes), rows summing to 1.
Inputs are read detached (selection is not differentiable).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_labels
from .simplex import check_size


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _top(scores: torch.Tensor, n: int) -> torch.Tensor:
    check_size(scores.shape[0], n)
    return torch.topk(scores, n).indices.sort().values


def uniform(N: int, n: int, seed: int = 0) -> torch.Tensor:
    """n of N uniformly without replacement."""
    check_size(N, n)
    return torch.randperm(N, generator=_gen(seed))[:n].sort().values


def herding(X: torch.Tensor, n: int) -> torch.Tensor:
    """Kernel herding with the linear kernel: greedily add the sample that brings the coreset mean
    closest to the full-data mean (Chen, Welling & Smola 2010).  O(N n m) time, O(N m) memory."""
    N = X.shape[0]
    check_size(N, n)
    X = X.detach().double()
    mu = X.mean(0)
    chosen = torch.zeros(N, dtype=torch.bool, device=X.device)
    total = torch.zeros_like(mu)
    out = []
    sq = (X * X).sum(1)
    for t in range(1, n + 1):
        # || (total + x_i)/t - mu ||^2 = const + (||x||^2 + 2 x.(total - t mu)) / t^2
        crit = sq + 2.0 * (X @ (total - t * mu))
        crit[chosen] = float("inf")
        i = int(torch.argmin(crit))
        chosen[i] = True
        total += X[i]
        out.append(i)
    return torch.tensor(sorted(out), dtype=torch.int64)


def kcenter(X: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Greedy k-center (farthest-point): start from a random sample, repeatedly add the sample
    farthest from the chosen set.  O(N n m) time: each pick is one matrix-vector product, the
    squared distances by ||x||^2 - 2 x.c + ||c||^2, in float64 on a copy of X that is centred on a
    coordinate-wise median (of at most 4096 evenly spaced rows: a common offset costs no
    precision, and an outlier does not move the centre) and scaled by a power of two so that its
    largest magnitude is in [0.5, 1) (scaled before and after the centring): squares neither
    overflow nor underflow, and the selection does not depend on the scale of X (up to rounding:
    exact ties may break differently at scales that are not powers of two).  Absolute error ~1e-16 (||x||^2 + ||c||^2) on the centred
    rows: only points closer than ~1e-8 of their distance to the centre are ranked by rounding.
    O(N m) extra memory (that copy).  Always n distinct indices; rows with NaN or Inf are
    infinitely far from every center (taken first, in index order, after the random start) and
    never serve as centers."""
    N = X.shape[0]
    check_size(N, n)
    X = X.detach()
    finite = torch.isfinite(X).all(1)
    all_finite = bool(finite.all())
    Xs = X.to(torch.float64, copy=True)
    if not all_finite:
        Xs.masked_fill_(~finite[:, None], 0.0)

    def rescale():   # largest magnitude into [0.5, 1) by a power of two: exact, so scale-free
        peak = float(torch.linalg.vector_norm(Xs, ord=float("inf"))) if Xs.numel() else 0.0
        if peak > 0:
            Xs.mul_(2.0 ** -math.frexp(peak)[1])
    rescale()   # first, so that the centring below cannot overflow (values near the float64 limit)
    ok = Xs if all_finite else Xs[finite]
    if ok.shape[0]:  # the centre: the median of (at most) 4096 evenly spaced rows
        Xs.sub_(ok[::-(-ok.shape[0] // 4096)].median(0).values)
        if not all_finite:
            Xs.masked_fill_(~finite[:, None], 0.0)
    rescale()
    sq = Xs.square().sum(1)
    first = int(torch.randint(N, (1,), generator=_gen(seed)))
    dist = torch.full((N,), math.inf, dtype=torch.float64, device=X.device)

    def add_center(i):
        if all_finite or bool(finite[i]):
            d = torch.addmv(sq, Xs, Xs[i], alpha=-2.0).add_(sq[i]).clamp_min_(0.0)
            torch.minimum(dist, d if all_finite else d.masked_fill_(~finite, math.inf), out=dist)
        dist[i] = -1.0  # chosen

    add_center(first)
    out = [first]
    for _ in range(n - 1):
        i = int(torch.argmax(dist))  # never NaN: finite rows have finite distances, the others +inf
        out.append(i)
        add_center(i)
    return torch.tensor(sorted(out), dtype=torch.int64)


def _leverage(X: torch.Tensor, rank: int | None, ridge: float | None) -> torch.Tensor:
    X = X.detach().double()
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    if ridge is not None:  # ridge leverage: sum_j s_j^2 / (s_j^2 + lambda) u_ij^2
        return (U.square() * (S.square() / (S.square() + ridge))).sum(1)
    k = U.shape[1] if rank is None else min(rank, U.shape[1])
    return U[:, :k].square().sum(1)


def _sample_without_replacement(p: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    p = p.clamp_min(0)
    if int((p > 0).sum()) < n:  # not enough support: top up uniformly among the rest
        p = p + p[p > 0].min() * 1e-6 if (p > 0).any() else torch.ones_like(p)
    # drawn on the host (the seeded generator is a CPU one), whatever the device of the scores
    return torch.multinomial(p.float().cpu(), n, replacement=False, generator=_gen(seed)).sort().values


def leverage(X: torch.Tensor, n: int, rank: int | None = None, seed: int = 0, deterministic: bool = False) -> torch.Tensor:
    """Rank-k (truncated) leverage scores of the rows of X; sample n without replacement with
    probability proportional to them (or keep the n largest with deterministic=True)."""
    check_size(X.shape[0], n)
    lev = _leverage(X, rank, None)
    return _top(lev, n) if deterministic else _sample_without_replacement(lev, n, seed)


def ridge_leverage(X: torch.Tensor, n: int, ridge: float | None = None, seed: int = 0,
                   deterministic: bool = False) -> torch.Tensor:
    """Ridge leverage scores x_i^T (X^T X + lambda I)^{-1} x_i (default lambda = ||X||_F^2 / n)."""
    check_size(X.shape[0], n)
    lam = float(X.detach().double().square().sum()) / n if ridge is None else float(ridge)
    lev = _leverage(X, None, lam)
    return _top(lev, n) if deterministic else _sample_without_replacement(lev, n, seed)


def adaptive(X: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Adaptive sampling / randomised pivoting: draw a row with probability proportional to its
    squared residual norm, project every row's residual off it, repeat (Deshpande & Vempala 2006;
    randomly pivoted Cholesky on the Gram matrix).  Rows already spanned get probability ~0.

    Each pick costs one pass for R v and one for the rank-one update (the squared residual norms
    are updated from R v, not recomputed).  Once the residual mass falls below 1e-12 of the
    start (X's row space exhausted, e.g. after rank(X) <= m picks of an N x m sketch), every
    remaining row has probability ~0 and the rest of the n are drawn uniformly without
    replacement from the unchosen rows, in one draw."""
    N = X.shape[0]
    check_size(N, n)
    R = X.detach().double().clone()
    w = R.square().sum(1)
    floor = 1e-12 * max(float(w.sum()), 1e-300)  # residual mass below this: span exhausted
    gen = _gen(seed)
    chosen = torch.zeros(N, dtype=torch.bool, device=X.device)
    out = []
    while len(out) < n:
        p = w.clamp_min(0.0).masked_fill_(chosen, 0.0)
        tot = float(p.sum())
        if tot <= floor:  # confirm on the exact norms (the updated ones carry rounding)
            w = R.square().sum(1)
            p = w.masked_fill(chosen, 0.0)
            tot = float(p.sum())
            if tot <= floor:
                break
        i = int(torch.multinomial((p / tot).cpu(), 1, generator=gen))
        chosen[i] = True
        out.append(i)
        v = R[i].clone()
        nv = float(v @ v)
        if nv > 0:
            c = R @ v
            R.addr_(c, v, alpha=-1.0 / nv)
            w.sub_(c.square_().div_(nv))
    if len(out) < n:  # span exhausted: the rest uniformly among the unchosen rows
        rest = torch.nonzero(~chosen.cpu()).squeeze(1)
        out += rest[torch.randperm(rest.numel(), generator=gen)[:n - len(out)]].tolist()
    return torch.tensor(sorted(out), dtype=torch.int64)


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if probs.dim() != 2:
        raise ValueError(f"probs must be (N x classes), got shape {tuple(probs.shape)}")
    return probs.detach().double()


def grand(grad_norms: torch.Tensor, n: int) -> torch.Tensor:
    """GraNd: keep the n samples with the largest expected per-sample gradient norm."""
    return _top(grad_norms.detach().double(), n)


def el2n(probs: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """EL2N: keep the n samples with the largest ||p - onehot(y)||_2."""
    p = _check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1], who="el2n: labels")
    err = p.clone()
    err[torch.arange(p.shape[0]), y] -= 1.0
    return _top(err.norm(dim=1), n)


def entropy(probs: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the n most uncertain samples by predictive entropy."""
    p = _check_probs(probs)
    return _top(-(p * torch.log(p.clamp_min(1e-300))).sum(1), n)


def margin(probs: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the n samples with the smallest margin between the two most likely classes."""
    p = _check_probs(probs)
    if p.shape[1] < 2:
        raise ValueError(f"margin needs at least 2 classes, got probs of shape {tuple(p.shape)}")
    top2 = torch.topk(p, 2, dim=1).values
    return _top(-(top2[:, 0] - top2[:, 1]), n)


def least_confidence(probs: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the n samples whose most likely class has the lowest probability."""
    return _top(1.0 - _check_probs(probs).max(1).values, n)
