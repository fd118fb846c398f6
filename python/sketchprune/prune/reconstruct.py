"""Closed-form least-squares refit of the second matrix of pruned depth-2 units.

After units are removed, the second matrix W (d_out x d_in: down_proj over FFN channels, o_proj
over head blocks) keeps only the columns K of the kept units.  Its remaining columns are re-fit so
the layer output approximates the dense one, regularised toward the dense weights (never toward
zero, which shrinks the weights and hurts):

    V = argmin_V  E||W x - V x_K||^2 + lam ||V - W_K||_F^2
      = (W Sigma_{:,K} + lam W_K) (Sigma_KK + lam I)^{-1},

with Sigma = E[x x^T] the second moment of the matrix's input on calibration tokens (so only the
streamed statistics are needed, never the activations).  lam = alpha * tr(Sigma_KK) / |K| with
alpha chosen per layer on held-out calibration tokens, by the same quadratic form:

    err(V; Sigma') = tr(W S' W^T) - 2 tr(V S'_{K,:} W^T) + tr(V S'_KK V^T),

reported relative to tr(W S' W^T), in-sample and held out, next to the error of not refitting
(V = W_K, also a candidate: if it is best on held-out tokens it is kept, so reconstruction never
makes the held-out layer error worse).  Keeping every column returns W exactly.
"""

from __future__ import annotations

import math

import torch

ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _err(W, V, keep, S) -> float:
    return float(torch.trace(W @ S @ W.T) - 2 * torch.trace(V @ S[keep, :] @ W.T)
                 + torch.trace(V @ S[keep][:, keep] @ V.T))


def refit_columns(W: torch.Tensor, keep: torch.Tensor, sigma_fit: torch.Tensor, sigma_eval: torch.Tensor | None = None,
                  alphas=ALPHAS, default_alpha: float = 1e-2) -> tuple[torch.Tensor, dict]:
    """Refit W restricted to the columns ``keep`` (see the module doc); returns (V, info).

    Without ``sigma_eval`` the fixed ``default_alpha`` is used and no held-out error is reported.
    """
    keep = keep.to(torch.int64).cpu()
    d_in = W.shape[1]
    if keep.numel() == d_in and torch.equal(keep, torch.arange(d_in)):
        return W.detach().clone(), {"alpha": None, "refit": False, "reason": "all columns kept"}
    Wd = W.detach().double().cpu()
    S = sigma_fit.double().cpu()
    S_kk = S[keep][:, keep]
    rhs = S[keep, :] @ Wd.T  # |K| x d_out
    scale = float(torch.trace(S_kk)) / max(keep.numel(), 1)
    Wk = Wd[:, keep]
    cand = {"none": Wk}
    eye = torch.eye(keep.numel(), dtype=torch.float64)
    for a in (alphas if sigma_eval is not None else (default_alpha,)):
        lam = a * scale if scale > 0 else a
        chol, info = torch.linalg.cholesky_ex(S_kk + lam * eye)
        if int(info) != 0:
            continue
        cand[a] = torch.cholesky_solve(rhs + lam * Wk.T, chol).T
    ref_fit = float(torch.trace(Wd @ S @ Wd.T)) or 1.0
    fit = {a: _err(Wd, V, keep, S) / ref_fit for a, V in cand.items()}
    out = {"fit_error_none": fit["none"]}
    if sigma_eval is not None:
        Se = sigma_eval.double().cpu()
        ref_eval = float(torch.trace(Wd @ Se @ Wd.T)) or 1.0
        ev = {a: _err(Wd, V, keep, Se) / ref_eval for a, V in cand.items()}
        best = min(ev, key=ev.get)
        out.update(eval_error_none=ev["none"], eval_error=ev[best])
    else:
        best = default_alpha if default_alpha in cand else "none"
    out.update(alpha=None if best == "none" else best, refit=best != "none", fit_error=fit[best])
    return cand[best].to(W.dtype).to(W.device), out


def head_columns(q_heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Input columns of o_proj belonging to the given query heads (in order)."""
    q = q_heads.to(torch.int64).cpu()
    return (q[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def is_finite_info(info: dict) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in info.values())
