"""Closed-form least-squares reconstruction of the Linears of a pruned block.

One estimator serves every refit.  A Linear ``y = W x + b`` whose input columns ``K`` are kept
(all of them for a recovery fit) is re-fit so that on the inputs ``x`` it will actually see it
reproduces a target ``y*`` -- the dense model's output of that Linear (bias removed), on the same
calibration tokens -- regularised toward an anchor ``A`` (the current weights, never zero, which
would shrink the weights and hurt):

    V = argmin_V  E||y* - V x_K||^2 + lam ||V - A_K||_F^2
    (Sigma_KK + lam I) V^T = C_K + lam A_K^T,      Sigma = E[x x^T],  C = E[x y*^T],

solved by Cholesky in float64.  Expectations are means over calibration tokens, so ``lam`` is
per token (the sum-form ``(X_K^T X_K + lam' I) V^T = X_K^T Y + lam' A_K^T`` has
``lam' = n_tokens * lam``).  ``lam = alpha * tr(Sigma_KK) / |K|`` with ``alpha`` chosen per Linear
on held-out calibration tokens, by the same quadratic form

    err(V; Sigma', C', e') = e' - 2 tr(V C'_K) + tr(V Sigma'_KK V^T),   e' = E'||y*||^2,

reported relative to ``e'``, in-sample and held out, next to the error of not refitting
(``V = A_K``, also a candidate: if it is best held out it is kept, so a refit never makes the
held-out error worse).  The bias ``b`` is not re-fit; the target excludes it, so it stays exact.

Two uses:

* :func:`refit_columns` (one-shot pruning): inputs and targets from the *dense* model's
  second moment, target ``y* = W x`` (so ``C = Sigma W^T``, ``e = tr(W Sigma W^T)``).  Keeping
  every column returns ``W`` exactly.
* :func:`fit_linear` (sequential pruning, :mod:`~sketchprune.prune.sequential`): ``Sigma``,
  ``C`` and ``e`` streamed over token-aligned batches of the pruned stream's inputs and the dense
  stream's outputs (:class:`~sketchprune.prune.calibration.FullMoments` with ``cross_dim``).

:func:`fold_mean_into_bias` is FLAP's bias compensation: removed input channels ``R`` replaced
by their calibration mean, ``b += W[:, R] E[x_R]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def rel_error(V: torch.Tensor, S_kk: torch.Tensor, C_k: torch.Tensor, energy: float,
              SVt: torch.Tensor | None = None) -> float:
    """E||y - V x_K||^2 / E||y||^2 from the moments (see the module doc; >= 0); ``SVt``: S_kk @ V^T if known."""
    Z = V.T.contiguous()
    SZ = S_kk @ Z if SVt is None else SVt
    z = Z.reshape(-1)
    err = energy - 2 * float(torch.dot(z, C_k.contiguous().reshape(-1))) + float(torch.dot(z, SZ.reshape(-1)))
    # a squared error: a negative value is cancellation in energy - 2 z.c + z.Sz (an exact fit)
    return max(err, 0.0) / (energy if energy > 0 else 1.0)


def ridge_toward(anchor: torch.Tensor, S_kk: torch.Tensor, C_k: torch.Tensor, energy: float,
                 heldout: tuple[torch.Tensor, torch.Tensor, float] | None = None, alphas=ALPHAS,
                 default_alpha: float = 1e-2, exhaustive: bool = False) -> tuple[torch.Tensor, dict]:
    """The ridge-toward-anchor fit of the module doc on restricted moments; returns (V float64, info).

    ``anchor``: d_out x k (the no-refit weights ``A_K``); ``S_kk``: k x k; ``C_k``: k x d_out;
    ``energy``: E||y||^2; ``heldout``: the same three on held-out tokens, used to choose among
    ``alphas`` and the no-refit candidate (without it, ``default_alpha`` is used and no held-out
    error is reported).  ``info``: ``alpha``/``lambda`` (None when not refit), ``refit``,
    ``fit_error`` / ``fit_error_none`` (relative, in-sample), ``eval_error`` / ``eval_error_none``
    (held out).  For a solution ``Z = V^T``, ``S Z = C + lam (A^T - Z)``, so its in-sample error
    costs no further product with ``S``.  The held-out error is walked along the sorted grid from
    its middle toward lower values, stopping at the first rise (it is typically unimodal in
    ``lam``; each step costs a Cholesky, a solve and a product with the held-out moment);
    ``exhaustive=True`` evaluates the whole grid.  The no-refit candidate is always evaluated.
    """
    A = anchor.detach().to(torch.float64)
    dev = A.device
    S = S_kk.to(dev, torch.float64)
    C = C_k.to(dev, torch.float64)
    k = A.shape[1]
    if S.shape != (k, k) or C.shape != (k, A.shape[0]):
        raise ValueError(f"sketchprune.prune: moments of shapes {tuple(S.shape)}, {tuple(C.shape)} do not fit "
                         f"weights of shape {tuple(A.shape)}")
    scale = float(torch.trace(S)) / max(k, 1)
    At = A.T.contiguous()
    C = C.contiguous()
    # Memory: besides the moments, one k x k array (the Cholesky factor of S + lam I, formed with
    # lam added to S's diagonal and taken off again) and two d_out x k solutions (the best so far
    # and the current one); each candidate's in-sample error is taken when it is solved
    # (S Z = C + lam (A^T - Z) needs no product with S) and its solution dropped unless it is the
    # best held out so far.
    fit, lams, ev = {}, {"none": None}, None
    fit["none"] = rel_error(At.T, S, C, energy)
    kept = {"none": At}                     # candidate -> Z = V^T (the no-refit one, and the best)

    def solve(a):
        """Z for alpha ``a`` (None if S + lam I is not positive definite); records its fit error."""
        lam = a * scale if scale > 0 else a
        if S.is_inference() or S.requires_grad:     # cannot be touched in place: one more k x k array
            work = S.detach().clone()
            work.diagonal().add_(lam)
            chol, bad = torch.linalg.cholesky_ex(work)
            del work
        else:
            diag = S.diagonal()
            saved = diag.clone()
            try:    # factor S + lam I without a second k x k array; S is restored bit for bit
                diag.add_(lam)
                chol, bad = torch.linalg.cholesky_ex(S)
            finally:
                diag.copy_(saved)
        if int(bad) != 0:
            return None
        Z = torch.cholesky_solve(C + lam * At, chol)
        del chol
        lams[a] = lam
        fit[a] = rel_error(Z.T, S, C, energy, C + lam * (At - Z))
        return Z

    if heldout is None:
        Z = solve(default_alpha)
        best = default_alpha if Z is not None else "none"
        if Z is not None:
            kept[best] = Z
    else:
        Sh, Ch, eh = heldout[0].to(dev, torch.float64), heldout[1].to(dev, torch.float64), float(heldout[2])
        ev = {"none": rel_error(At.T, Sh, Ch, eh)}
        ev["none"] = ev["none"] if math.isfinite(ev["none"]) else math.inf
        best = "none"

        def held_error(a) -> float:
            nonlocal best
            if a not in ev:
                Z = solve(a)
                e = rel_error(Z.T, Sh, Ch, eh) if Z is not None else math.inf
                ev[a] = e if math.isfinite(e) else math.inf
                if Z is not None and ev[a] < ev[best]:
                    if best != "none":
                        del kept[best]
                    best, kept[a] = a, Z
            return ev[a]

        grid = sorted(alphas)
        if exhaustive or len(grid) < 3:
            for a in grid:
                held_error(a)
        else:   # walk from the middle of the grid toward lower held-out error, stop at the first rise
            i = len(grid) // 2
            step = -1 if held_error(grid[i - 1]) < held_error(grid[i]) else 1
            i = i - 1 if step < 0 else i
            while 0 <= i + step < len(grid) and held_error(grid[i + step]) < held_error(grid[i]):
                i += step
        best = min(ev, key=ev.get)          # ties: the first evaluated, as kept above
    info = {"fit_error_none": fit["none"]}
    if ev is not None:
        info.update(eval_error_none=ev["none"], eval_error=ev[best])
    info.update(alpha=None if best == "none" else best, **{"lambda": lams[best]}, refit=best != "none",
                fit_error=fit[best])
    return kept[best].T, info


def _release(*stats) -> None:
    """Release the statistics objects among ``stats`` (tensors and None are left alone)."""
    for m in stats:
        if hasattr(m, "release"):
            m.release()


def fit_linear(anchor: torch.Tensor, keep: torch.Tensor | None, fit, held=None, alphas=ALPHAS,
               default_alpha: float = 1e-2, release: bool = False) -> tuple[torch.Tensor, dict]:
    """Re-fit a Linear's weight over input columns ``keep`` (None: all) from streamed moments.

    ``anchor``: the current weight restricted to ``keep`` (d_out x |keep|); ``fit`` / ``held``:
    :class:`~sketchprune.prune.calibration.FullMoments` with targets (``cross_dim = d_out``) of
    the Linear's full input, on the fitting and held-out tokens.  Returns ``(V, info)`` with ``V``
    in the anchor's dtype and device (see :func:`ridge_toward`).  ``release``: release ``fit`` and
    ``held`` once their restricted moments are formed (the caller reads them no more).
    """
    def restrict(m):
        S, C = m.second_moment(), m.cross()
        if keep is not None:
            k = keep.to(device=S.device, dtype=torch.int64)
            S, C = S[k[:, None], k[None, :]], C[k]
        return S, C, m.target_energy()

    S, C, e = restrict(fit)
    H = None if held is None else restrict(held)
    if release:     # the caller reads these statistics no more: their full arrays may go before the solves
        _release(fit, held)
    V, info = ridge_toward(anchor, S, C, e, H, alphas, default_alpha)
    return V.to(dtype=anchor.dtype, device=anchor.device), info


def refit_columns(W: torch.Tensor, keep: torch.Tensor, sigma_fit, sigma_eval=None,
                  alphas=ALPHAS, default_alpha: float = 1e-2, release: bool = False) -> tuple[torch.Tensor, dict]:
    """Refit W restricted to the columns ``keep`` toward ``W x`` under the input second moments
    ``sigma_fit`` (choosing on ``sigma_eval``); returns (V, info).  See the module doc.

    ``sigma_fit`` / ``sigma_eval``: d_in x d_in tensors, or statistics objects with
    ``second_moment()`` (and ``release()``): with ``release=True`` the objects are released once
    the |K|-wide moments are formed, so their d_in x d_in arrays are gone before the solves.
    Without ``sigma_eval`` the fixed ``default_alpha`` is used and no held-out error is reported.
    """
    d_in = W.shape[1]
    keep_cpu = keep.to(torch.int64).cpu()
    in_range = keep_cpu.numel() == 0 or (int(keep_cpu.min()) >= 0 and int(keep_cpu.max()) < d_in)
    if not in_range or keep_cpu.unique().numel() != keep_cpu.numel():
        raise ValueError(f"sketchprune.prune: refit_columns needs distinct column indices in [0, {d_in})")
    if keep_cpu.numel() == d_in and torch.equal(keep_cpu, torch.arange(d_in)):
        return W.detach().clone(), {"alpha": None, "lambda": None, "refit": False, "reason": "all columns kept"}

    def full(sigma):
        return sigma.second_moment() if hasattr(sigma, "second_moment") else sigma

    dev = full(sigma_fit).device    # solve where the statistics live (the pruning device)
    keep = keep_cpu.to(dev)
    Wd = W.detach().to(device=dev, dtype=torch.float64)

    inv = torch.full((d_in,), -1, dtype=torch.int64, device=dev)
    inv[keep] = torch.arange(keep.numel(), device=dev)

    def moments(sigma, block=1024):
        # S symmetric: C_K = S[K, :] W^T = (W S)[:, K]^T and e = tr(W S W^T), from W S formed a
        # block of columns at a time (d_out x block): the only large allocations are the results,
        # S_KK (by 2-D indexing, no |K| x d_in intermediate) and C_K.
        S = full(sigma).to(device=dev, dtype=torch.float64)
        C_k = torch.empty(keep.numel(), Wd.shape[0], dtype=torch.float64, device=dev)
        e = 0.0
        for c0 in range(0, d_in, block):
            c1 = min(d_in, c0 + block)
            WS = Wd @ S[:, c0:c1]
            e += float(torch.sum(WS * Wd[:, c0:c1]))
            pos = inv[c0:c1]
            hit = pos >= 0
            C_k[pos[hit]] = WS[:, hit].T
        return S[keep[:, None], keep[None, :]], C_k, e

    S_kk, C_k, e = moments(sigma_fit)
    held = None if sigma_eval is None else moments(sigma_eval)
    anchor = Wd[:, keep]
    del Wd
    if release:
        _release(sigma_fit, sigma_eval)
    V, info = ridge_toward(anchor, S_kk, C_k, e, held, alphas, default_alpha)
    return V.to(device=W.device, dtype=W.dtype), info


def head_columns(q_heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Input columns of o_proj belonging to the given query heads (in order)."""
    q = q_heads.to(torch.int64).cpu()
    return (q[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def complement(n: int, keep: torch.Tensor) -> torch.Tensor:
    """The indices in range(n) not in ``keep`` (sorted)."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep.to("cpu", torch.int64)] = False
    return torch.nonzero(mask).reshape(-1)


def fold_mean_into_bias(linear: nn.Linear, removed: torch.Tensor, mean: torch.Tensor, create: bool = True) -> bool:
    """bias += W[:, removed] @ mean[removed], in place (creating a zero bias if ``create``).

    Returns whether anything was folded.
    """
    removed = removed.to(device=linear.weight.device, dtype=torch.long)
    if removed.numel() == 0:
        return False
    if linear.bias is None:
        if not create:
            return False
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                               device=linear.weight.device),
                                   requires_grad=linear.weight.requires_grad)
    with torch.no_grad():
        w = linear.weight.detach()[:, removed].to(torch.float64)
        mu = mean.to(device=w.device, dtype=torch.float64)[removed]
        linear.bias.add_((w @ mu).to(linear.bias.dtype))
    return True


def is_finite_info(info: dict) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in info.values())
