"""One entry point for every selection method: ``select(n, method=..., ...)`` -> Selection."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import torch

from .._numbers import as_int, as_real
from ..budget import Budget, active_budget
from . import baselines as B
from . import model_based as MB
from ._checks import check_finite_rows, check_n
from ._plan import selection_workspace
from .model_based import ModelOutputs
from .skmm import Selection, skmm_select, variance_proxy

GEOMETRY = ("uniform", "herding", "kcenter", "leverage", "ridge-leverage", "adaptive")
SCORES = ("grand", "el2n", "entropy", "margin", "least-confidence")
MODEL = ("forgetting", "contextual-diversity", "glister", "deepfool")
METHODS = ("skmm",) + GEOMETRY + SCORES + MODEL

# what each method reads (for documentation, the CLI and error messages)
NEEDS = {"skmm": "sketch", **{m: "sketch" for m in GEOMETRY}, "grand": "grad_norms", "el2n": "probs + labels",
         "entropy": "probs", "margin": "probs", "least-confidence": "probs", "forgetting": "correctness",
         "contextual-diversity": "probs", "glister": "features + labels (head optional)",
         "deepfool": "logits + head_weight (or features + head_weight)"}


def select(n: int, method: str = "skmm", sketch: torch.Tensor | None = None, *, outputs: ModelOutputs | None = None,
           probs: torch.Tensor | None = None, labels: torch.Tensor | None = None,
           grad_norms: torch.Tensor | None = None, seed: int = 0, class_balanced: bool | None = None,
           budget=None, **options) -> Selection:
    """Select exactly n distinct samples.

    ``sketch`` (N x m): a gradient sketch or feature matrix, needed by skmm and the geometry
    methods.  Methods that read a trained model take its outputs as ``outputs=ModelOutputs(...)``
    (see :mod:`sketchprune.select.model_based`); ``probs``, ``labels`` and ``grad_norms`` are
    shorthands that fill the same record.  ``options`` go to the method (e.g. c, weighting,
    rounding, formulation, tol for skmm; rank for leverage; ridge for ridge-leverage;
    val_features / val_labels, eta, batch for glister).  With ``class_balanced=True`` (needs labels)
    n is split across classes in proportion to their sizes (largest remainders) and each class is
    selected on its own rows.  The default (``None``) is class-balanced for skmm when labels are
    given and not otherwise (for skmm without labels, and for every other method); pass False to
    run skmm on the pooled data although labels are given.  The info record always holds the
    method, n, seed and, when a sketch is given, the variance proxy.

    ``budget`` (default: the active ``sketchprune.limit_memory`` budget, else free memory) caps what
    the selection allocates beyond the sketch on its device: the m x m float64 second moments and
    eigendecompositions every method with a sketch makes (for the variance proxy; SkMM also for its
    moment problem) and the method's float64 copies of the sketch
    (:func:`~sketchprune.select._plan.selection_workspace`).  A sketch too wide for it is a
    :class:`~sketchprune.BudgetError` before any of that work.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    n = check_n(n)
    _check_options(method, options)
    if sketch is not None:
        if isinstance(sketch, np.ndarray):
            sketch = torch.from_numpy(np.array(sketch, copy=True))
        if not isinstance(sketch, torch.Tensor) or sketch.dim() != 2 or not sketch.is_floating_point():
            raise ValueError(f"sketch must be a 2-D float tensor (N x m), got "
                             f"{tuple(sketch.shape) if hasattr(sketch, 'shape') else type(sketch).__name__}"
                             f"{'' if not hasattr(sketch, 'dtype') else f' of {sketch.dtype}'}")
        sketch = sketch.detach()  # selection is not differentiable
        check_finite_rows(sketch)
        if method != "uniform" and sketch.numel() and not bool(sketch.any()):
            raise ValueError("the sketch is all zero: every sample's gradient vanishes in it, so there is nothing "
                             "to select on; check the gradient source (e.g. a model at a stationary point)")
    outputs = _merge(outputs, probs, labels, grad_norms)
    if class_balanced is None:  # SkMM's default: class-balanced whenever labels are known
        class_balanced = method == "skmm" and outputs.labels is not None
    budget = active_budget() if budget is None else Budget.of(budget)
    if sketch is not None:
        N, m = int(sketch.shape[0]), int(sketch.shape[1])
        largest = None
        if class_balanced and outputs.labels is not None and torch.as_tensor(outputs.labels).numel():
            largest = int(torch.unique(torch.as_tensor(outputs.labels), return_counts=True)[1].max())
        need = selection_workspace(N, m, method, formulation=options.get("formulation", "variance"),
                                   rounding=options.get("rounding"), class_balanced=bool(class_balanced),
                                   class_rows=largest)
        budget.check(sketch.device, need, what=f"{method} selection on the {N} x {m} sketch (m x m float64 "
                     "moments and eigendecompositions, the method's copies of the sketch)")
    if class_balanced:
        return _class_balanced(n, method, sketch, outputs, seed, options, budget)
    N = _size(sketch, outputs)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, N={N}], got {n}")
    if method == "skmm":
        _need(sketch, "sketch", method)
        sel = skmm_select(sketch, n, seed=seed, **options)
    else:
        idx = _baseline(n, method, sketch, outputs, seed, options)
        sel = Selection(indices=idx, weights=None, info={"method": method, **_plain(options)})
    sel.info.update(n=n, seed=seed)
    if sketch is not None and "variance_proxy" not in sel.info:
        sel.info["variance_proxy"] = variance_proxy(sketch, sel.indices)
    return sel


# the options each method takes (``select(..., **options)``); SkMM's depend on its formulation
_SKMM_COMMON = {"formulation", "rounding", "progress"}
_SKMM_OPTIONS = {"variance": {"eps", "tol", "max_iter", "time_limit"},
                 "hinge": {"c", "weighting", "tol", "max_iter", "time_limit"},
                 "maxmin": {"tol", "max_iter", "time_limit"},
                 "paper": {"c", "weighting", "iters", "lr"}}
_OPTIONS = {"leverage": {"rank", "deterministic"}, "ridge-leverage": {"ridge", "deterministic"},
            "glister": {"val_features", "val_labels", "num_classes", "eta", "batch"}}


def _check_options(method: str, options: dict) -> None:
    """Options the method does not read are an error (they would be recorded but have no effect)."""
    if method == "skmm":
        form = options.get("formulation", "variance")
        if form not in _SKMM_OPTIONS:
            raise ValueError(f"formulation must be one of {', '.join(map(repr, _SKMM_OPTIONS))}, got {form!r}")
        allowed = _SKMM_COMMON | _SKMM_OPTIONS[form]
        where = f"skmm with formulation={form!r}"
    else:
        allowed, where = _OPTIONS.get(method, set()), f"method {method!r}"
    extra = sorted(set(options) - allowed)
    if extra:
        takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes no options"
        raise TypeError(f"{where} does not use {', '.join(extra)}; it {takes}")
    for name in ("rank", "max_iter"):
        v = options.get(name)
        if v is not None and not (as_int(v) is not None and as_int(v) >= 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    for name in ("ridge", "tol", "time_limit"):
        v = options.get(name)
        if v is not None and not (as_real(v) is not None and as_real(v) > 0):
            raise ValueError(f"{name} must be a positive number or None, got {v!r}")
    if method == "skmm" and options.get("formulation", "variance") == "variance" \
            and options.get("rounding", "greedy") == "greedy":
        unused = sorted(k for k in ("tol", "max_iter", "time_limit") if k in options)
        if unused:
            raise TypeError(f"the greedy design (formulation='variance', rounding='greedy') does not use "
                            f"{', '.join(unused)}: they apply to its relaxed solve (rounding='sample' or 'top')")


def _plain(options):
    """Options as recorded in the info dict (tensors summarised by their shape)."""
    return {k: (f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else v) for k, v in options.items()}


def _merge(outputs, probs, labels, grad_norms) -> ModelOutputs:
    extra = {k: v for k, v in (("probs", probs), ("labels", labels), ("grad_norms", grad_norms)) if v is not None}
    if outputs is None:
        return ModelOutputs(**extra)
    for k, v in extra.items():
        if getattr(outputs, k) is not None and getattr(outputs, k) is not v:
            raise ValueError(f"{k} given both directly and in outputs")
    return replace(outputs, **extra) if extra else outputs


def _size(sketch, outputs: ModelOutputs) -> int:
    if sketch is not None:
        N = int(sketch.shape[0])
        if outputs.size is not None and outputs.size != N:
            raise ValueError(f"the sketch has {N} rows but the model outputs describe {outputs.size} samples")
        return N
    if outputs.size is not None:
        return outputs.size
    raise ValueError("give a sketch (N x m) or model outputs (probs, logits, features, grad_norms, correctness)")


def _need(t, name, method):
    if t is None:
        raise ValueError(f"method {method!r} needs {name}")


def _baseline(n, method, sketch, out: ModelOutputs, seed, options):
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
        _need(out.grad_norms, "grad_norms", method)
        return B.grand(out.grad_norms, n)
    if method == "forgetting":
        _need(out.correctness, "ModelOutputs.correctness (epochs x N bool)", method)
        return MB.forgetting(out.correctness, n, seed)
    if method == "glister":
        out.require(method, "features", "labels")
        return MB.glister(out.features, out.labels, n, head_weight=out.head_weight, head_bias=out.head_bias,
                          **options)
    if method == "deepfool":
        out.require(method, "logits", "head_weight")
        return MB.deepfool(MB.deepfool_distances(out.get_logits(), out.head_weight), n)
    probs = out.get_probs()
    _need(probs, "probs", method)
    if method == "contextual-diversity":
        return MB.contextual_diversity(probs, n, seed)
    if method == "el2n":
        _need(out.labels, "labels", method)
        return B.el2n(probs, out.labels, n)
    return {"entropy": B.entropy, "margin": B.margin, "least-confidence": B.least_confidence}[method](probs, n)


def _subset(out: ModelOutputs, rows: torch.Tensor) -> ModelOutputs:
    kw = {}
    for f in fields(out):
        v = getattr(out, f.name)
        if v is None or f.name in ("head_weight", "head_bias"):
            kw[f.name] = v
        elif f.name == "correctness":
            kw[f.name] = v[:, rows]
        else:
            kw[f.name] = v[rows.to(v.device)]
    return ModelOutputs(**kw)


_PER_CLASS = ("n", "duality_gap", "tol", "converged", "iterations", "seconds", "support", "top_mass")


def _class_balanced(n, method, sketch, outputs: ModelOutputs, seed, options, budget) -> Selection:
    if outputs.labels is None:
        raise ValueError("class_balanced=True needs labels (labels=... or ModelOutputs.labels) to split n over "
                         "the classes")
    labels = torch.as_tensor(outputs.labels).long().cpu()
    N = int(labels.numel())
    if sketch is not None and int(sketch.shape[0]) != N:
        raise ValueError(f"labels have length {N} but the sketch has {sketch.shape[0]} rows")
    classes, counts = torch.unique(labels, return_counts=True)
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
        try:
            sub = select(k, method, None if sketch is None else sketch[rows.to(sketch.device)],
                         outputs=_subset(outputs, rows), seed=seed, class_balanced=False, budget=budget,
                         **options)
        except ValueError as e:       # name the class (e.g. one whose gradients all vanish)
            raise ValueError(f"class {int(cls)} ({rows.numel()} samples, {k} to select): {e}") from None
        picked.append(rows[sub.indices.cpu()])
        infos[int(cls)] = {k_: v for k_, v in sub.info.items() if k_ in _PER_CLASS}
    idx = torch.cat(picked).sort().values
    info = {"method": method, "class_balanced": True, "n": n, "seed": seed, "per_class": infos, **_plain(options)}
    if sketch is not None:
        info["variance_proxy"] = variance_proxy(sketch, idx)
    return Selection(indices=idx, weights=None, info=info)
