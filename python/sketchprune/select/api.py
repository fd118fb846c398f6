"""One entry point for every selection method: ``select(n, method=..., ...)`` -> Selection."""

from __future__ import annotations

import torch

from . import baselines as B
from .skmm import Selection, skmm_select, variance_proxy

GEOMETRY = ("uniform", "herding", "kcenter", "leverage", "ridge-leverage", "adaptive")
SCORES = ("grand", "el2n", "entropy", "margin", "least-confidence")
METHODS = ("skmm",) + GEOMETRY + SCORES


def select(n: int, method: str = "skmm", sketch: torch.Tensor | None = None, *, probs: torch.Tensor | None = None,
           labels: torch.Tensor | None = None, grad_norms: torch.Tensor | None = None, seed: int = 0,
           class_balanced: bool = False, **options) -> Selection:
    """Select exactly n distinct samples.

    ``sketch`` (N x m): a gradient sketch or feature matrix, needed by skmm and the geometry
    methods.  Score methods take model outputs: ``probs`` (N x classes) for entropy / margin /
    least-confidence / el2n (with ``labels``), ``grad_norms`` (N,) for grand.  ``options`` go to
    the method (e.g. c, weighting, rounding, tol for skmm; rank for leverage; ridge for
    ridge-leverage).  With ``class_balanced=True`` (needs ``labels``) n is split across classes in
    proportion to their sizes (largest remainders) and each class is selected on its own rows.
    The info record always holds the method, n, seed and, when a sketch is given, the variance proxy.
    """
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    if class_balanced:
        return _class_balanced(n, method, sketch, probs, labels, grad_norms, seed, options)
    N = _size(sketch, probs, grad_norms)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, N={N}], got {n}")
    if method == "skmm":
        _need(sketch, "sketch", method)
        sel = skmm_select(sketch, n, seed=seed, **options)
    else:
        idx = _baseline(n, method, sketch, probs, labels, grad_norms, seed, options)
        sel = Selection(indices=idx, weights=None, info={"method": method, **options})
    sel.info.update(n=n, seed=seed)
    if sketch is not None and "variance_proxy" not in sel.info:
        sel.info["variance_proxy"] = variance_proxy(sketch, sel.indices)
    return sel


def _size(sketch, probs, grad_norms) -> int:
    for t in (sketch, probs, grad_norms):
        if t is not None:
            return int(t.shape[0])
    raise ValueError("give a sketch (N x m), probs (N x classes) or grad_norms (N,)")


def _need(t, name, method):
    if t is None:
        raise ValueError(f"method {method!r} needs {name}")


def _baseline(n, method, sketch, probs, labels, grad_norms, seed, options):
    if method in GEOMETRY:
        _need(sketch, "sketch", method)
        if method == "uniform":
            return B.uniform(sketch.shape[0], n, seed)
        if method == "herding":
            return B.herding(sketch, n)
        if method == "kcenter":
            return B.kcenter(sketch, n, seed)
        if method == "leverage":
            return B.leverage(sketch, n, seed=seed, **options)
        if method == "ridge-leverage":
            return B.ridge_leverage(sketch, n, seed=seed, **options)
        return B.adaptive(sketch, n, seed)
    if method == "grand":
        _need(grad_norms, "grad_norms", method)
        return B.grand(grad_norms, n)
    _need(probs, "probs", method)
    if method == "el2n":
        _need(labels, "labels", method)
        return B.el2n(probs, labels, n)
    return {"entropy": B.entropy, "margin": B.margin, "least-confidence": B.least_confidence}[method](probs, n)


def _class_balanced(n, method, sketch, probs, labels, grad_norms, seed, options) -> Selection:
    _need(labels, "labels", "class-balanced selection")
    labels = torch.as_tensor(labels).long().cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    N = int(labels.numel())
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, N={N}], got {n}")
    quota = counts.double() * n / N
    take = quota.floor().long()
    for i in torch.argsort(quota - take.double(), descending=True)[: n - int(take.sum())]:
        take[i] += 1
    picked, infos = [], {}
    for cls, k in zip(classes.tolist(), take.tolist()):
        if k == 0:
            continue
        rows = torch.nonzero(labels == cls).squeeze(1)
        sub = select(k, method, None if sketch is None else sketch[rows.to(sketch.device)],
                     probs=None if probs is None else probs[rows], labels=labels[rows],
                     grad_norms=None if grad_norms is None else grad_norms[rows], seed=seed, **options)
        picked.append(rows[sub.indices.cpu()])
        infos[int(cls)] = {k_: v for k_, v in sub.info.items() if k_ in ("n", "duality_gap", "converged")}
    idx = torch.cat(picked).sort().values
    info = {"method": method, "class_balanced": True, "per_class": infos, **options}
    if sketch is not None:
        info["variance_proxy"] = variance_proxy(sketch, idx)
    return Selection(indices=idx, weights=None, info=info)
