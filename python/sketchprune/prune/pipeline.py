"""One call from a dense model and calibration text to a physically sliced model.

:func:`prune_model` prunes sequentially by default -- layer by layer on the activations of the
model pruned so far, see :mod:`~sketchprune.prune.sequential` -- or, with ``sequential=False``,
in one shot: :func:`~sketchprune.prune.calibration.collect_statistics` on the dense model
(skipped for data-free criteria) -> :func:`~sketchprune.prune.criteria.score_model` ->
:func:`~sketchprune.prune.allocation.allocate` -> (``flap`` only) bias compensation ->
:func:`~sketchprune.prune.slicing.slice_model`, returning a report.

FLAP bias compensation: removing input channels ``R`` of a Linear ``y = W x + b`` and replacing
them by their calibration mean gives ``y = W[:, K] x_K + (b + W[:, R] E[x_R])``, so
``W[:, R] E[x_R]`` is added to the bias of down_proj (FFN channels) / o_proj (head blocks).
Llama-family models have no bias there; ``flap_bias="create"`` (default) then adds one.  The
stock configs cannot describe it (the Llama config's ``mlp_bias`` / ``attention_bias`` switch on
all of gate/up/down resp. q/k/v/o biases together, and Qwen2 has no switch for o), so the slicing
records it per layer as ``added_biases`` and :func:`~sketchprune.prune.load_pruned` re-creates it.
``flap_bias="existing"`` folds only into biases that already exist, ``"none"`` skips
compensation.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from .adapters import get_adapter, layer_indices
from .blockrecon import EPOCHS, LR, PATIENCE, PROX, check_recon
from .allocation import allocate, removal_plan
from .calibration import collect_statistics
from .criteria import get_criterion, score_model
from .reconstruct import ALPHAS, fold_mean_into_bias, head_columns, refit_columns
from .sequential import prune_sequential, same_device
from .slicing import resolve_heads, slice_model

FLAP_BIAS = ("create", "existing", "none")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _removed(n: int, keep: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[keep.to("cpu")] = False
    return torch.nonzero(mask).reshape(-1)


def _flap_compensate(model, adapter, alloc, stats, mode) -> list[str]:
    """Fold the removed units' mean contributions into down_proj / o_proj biases (before slicing)."""
    names = {id(m): n for n, m in model.named_modules()}
    folded = []
    create = mode == "create"
    layers = adapter.layers(model)
    for i, plan in alloc.layers.items():
        ffn, attn, hs = adapter.ffn(layers[i]), adapter.attention(layers[i]), adapter.head_structure(layers[i])
        had = ffn.down.bias is not None
        if fold_mean_into_bias(ffn.down, _removed(ffn.down.in_features, plan.ffn_keep),
                               stats[i].get("down_in").mean(), create):
            folded.append(names[id(ffn.down)] + ("" if had else " (created)"))
        q_kept = resolve_heads(plan.heads, hs).q_heads
        rm_heads = _removed(hs.num_heads, q_kept)
        cols = (rm_heads[:, None] * hs.head_dim + torch.arange(hs.head_dim)).reshape(-1)
        had = attn.o.bias is not None
        if fold_mean_into_bias(attn.o, cols, stats[i].get("o_in").mean(), create):
            folded.append(names[id(attn.o)] + ("" if had else " (created)"))
    return folded


RECON_NEEDS = {"down_in": "full", "o_in": "full"}


def _refit(model, adapter, alloc, stats, held, alphas) -> dict:
    """Per pruned layer: {"down": (V, info), "o": (V, info)} re-fit over the kept units (dense weights)."""
    out = {}
    layers = adapter.layers(model)
    for i, plan in alloc.layers.items():
        ffn, attn, hs = adapter.ffn(layers[i]), adapter.attention(layers[i]), adapter.head_structure(layers[i])
        st, hd = stats[i], held[i]
        cols = head_columns(resolve_heads(plan.heads, hs).q_heads, hs.head_dim)
        out[i] = {
            "down": refit_columns(ffn.down.weight, plan.ffn_keep, st.get("down_in").second_moment(),
                                  hd.get("down_in").second_moment(), alphas),
            "o": refit_columns(attn.o.weight, cols, st.get("o_in").second_moment(), hd.get("o_in").second_moment(),
                               alphas),
        }
    return out


def _install_refits(model, adapter, refits) -> None:
    layers = adapter.layers(model)
    with torch.no_grad():
        for i, r in refits.items():
            adapter.ffn(layers[i]).down.weight.copy_(r["down"][0])
            adapter.attention(layers[i]).o.weight.copy_(r["o"][0])


def _merge_needs(*needs: dict) -> dict:
    out = {}
    for n in needs:
        for k, v in n.items():
            out[k] = "full" if "full" in (v, out.get(k)) else v
    return out


def prune_model(model: nn.Module, batches=None, sparsity: float = 0.2, criterion: str = "sigma",
                attn_sparsity: float | None = None, head_mode: str = "query", seed: int = 0,
                layers=None, budget=None, progress: bool = True, flap_bias: str = "create",
                stats=None, reconstruct: bool = False, heldout_fraction: float = 0.25,
                sequential: bool | None = None, recovery: bool = False, alphas=ALPHAS,
                criterion_options: dict | None = None, allocation: str = "uniform",
                stat_dtype: torch.dtype = torch.float64, token_weighting: str = "none",
                refit_target: str = "local", recon: str = "layer", recon_epochs: int = EPOCHS,
                recon_lr: float = LR, recon_prox: float = PROX, recon_patience: int = PATIENCE,
                stream_error: bool = False, device=None) -> dict:
    """Score, allocate and physically slice ``model`` in place; returns a report dict.

    ``sequential`` (default: on whenever calibration ``batches`` are given, no precomputed
    ``stats`` are passed, ``allocation="uniform"`` and the criterion or a refit uses
    activations -- a data-free criterion decides the same either way): prune layer by layer on the activations
    of the model pruned so far (:mod:`sketchprune.prune.sequential`); with ``reconstruct`` the
    refits then fit, on the pruned model's inputs, each layer's own unpruned output (default
    ``refit_target="local"``) or the dense model's outputs (``"dense"``), and
    ``recovery=True`` also re-fits each layer's Linears toward the dense outputs before scoring
    it.  ``sequential=False``: the one-shot path below (statistics of the dense model for all
    layers at once; ``recovery`` is not available there).  ``alphas``: candidate regularisation
    strengths of the refits; ``criterion_options``: passed to the criterion
    (``LayerContext.options``); ``allocation``: ``"uniform"`` or ``"global"`` (one-shot only);
    ``stat_dtype``: the dtype second (and cross) moments are accumulated in (float32 is faster;
    solves are float64 regardless); ``token_weighting``, ``refit_target``: sequential refits only, see
    :func:`~sketchprune.prune.sequential.prune_sequential`.  ``recon``: ``"layer"`` (default, the
    closed-form refits above), ``"block"`` or ``"cross-block"`` (sequential only; they imply
    ``reconstruct`` and then re-fit all Linears of each pruned block, or of two consecutive
    ones, by Adam toward the dense model's hidden states, :mod:`sketchprune.prune.blockrecon`;
    ``recon_epochs``, ``recon_lr``, ``recon_prox``, ``recon_patience`` tune it).  ``stream_error``
    (sequential only): report each layer's pruned-vs-dense stream distance even when that costs
    an extra dense pass per layer.  ``device`` (sequential only): where the layers are pruned; a
    device other than the model's (e.g. ``"cuda"`` for a model in host memory) moves one decoder
    layer at a time there and back (sequential on-loading, see
    :func:`~sketchprune.prune.sequential.prune_sequential`).

    ``sparsity``: the fraction of the pruned blocks' parameters (q/k/v/o/gate/up/down of the
    pruned layers) to remove; ``attn_sparsity``: the fraction of attention parameters to remove
    (default ``sparsity``; the FFN takes the remainder).  ``head_mode``: ``"query"`` (query
    heads within KV groups, the same number per group) or ``"group"`` (whole KV groups).
    ``batches``: calibration batches (see :func:`collect_statistics`), needed unless the
    criterion is data-free; precomputed ``stats`` may be passed instead.  ``layers``: which
    layers to prune (default all).  ``flap_bias``: see the module doc.  ``reconstruct``: after
    choosing the units, re-fit each pruned layer's down_proj / o_proj over the kept units by least
    squares toward the dense weights (:mod:`sketchprune.prune.reconstruct`), with the
    regularisation chosen per layer on the last ``heldout_fraction`` of the calibration batches;
    the report gives, per layer, the chosen value and the in-sample and held-out errors.
    """
    check_recon(recon)
    if recon != "layer":
        reconstruct = True
        if sequential is False:
            raise ValueError(f"sketchprune.prune: recon={recon!r} re-fits each block on the pruned model's own "
                             "activations, which only the sequential path has; use sequential=True (the default)")
    if sequential is None:   # data-free criteria without refits decide the same either way: one shot is cheaper
        c = get_criterion(criterion)
        data_free = not c.needs and not getattr(c, "needs_gradients", False) and not (reconstruct or recovery)
        sequential = batches is not None and stats is None and allocation == "uniform" and not data_free
    if recon != "layer" and not sequential:
        raise ValueError(f"sketchprune.prune: recon={recon!r} needs the sequential path: calibration batches, no "
                         f"precomputed stats and allocation='uniform'")
    if sequential:
        if stats is not None:
            raise ValueError("sketchprune.prune: sequential pruning collects its own statistics layer by layer; "
                             "pass sequential=False to prune from precomputed stats")
        if allocation != "uniform":
            raise ValueError(f"sketchprune.prune: allocation={allocation!r} ranks units across layers, which needs "
                             "every layer's scores at once; use sequential=False with it")
        return prune_sequential(model, batches, sparsity=sparsity, criterion=criterion, attn_sparsity=attn_sparsity,
                                head_mode=head_mode, seed=seed, layers=layers, budget=budget, progress=progress,
                                flap_bias=flap_bias, reconstruct=reconstruct, recovery=recovery,
                                heldout_fraction=heldout_fraction, alphas=alphas,
                                criterion_options=criterion_options, stat_dtype=stat_dtype,
                                token_weighting=token_weighting, refit_target=refit_target, recon=recon,
                                recon_epochs=recon_epochs, recon_lr=recon_lr, recon_prox=recon_prox,
                                recon_patience=recon_patience, stream_error=stream_error, device=device)
    if device is not None and not same_device(device, next(model.parameters()).device):
        raise ValueError(f"sketchprune.prune: device={str(device)!r} differs from the model's device; moving one "
                         "layer at a time there (on-loading) needs the sequential path (calibration batches, no "
                         "precomputed stats, allocation='uniform', a criterion or refit that reads activations)")
    if recovery:
        raise ValueError("sketchprune.prune: recovery=True needs the sequential path (sequential=True)")
    t0 = time.perf_counter()
    crit = get_criterion(criterion)
    if flap_bias not in FLAP_BIAS:
        raise ValueError(f"sketchprune.prune: flap_bias must be one of {FLAP_BIAS}, got {flap_bias!r}")
    adapter = get_adapter(model)
    n_layers = len(adapter.layers(model))
    layer_idx = layer_indices(n_layers, layers)
    needs = dict(crit.needs)
    if criterion == "flap" and flap_bias != "none":
        needs = _merge_needs(needs, {"down_in": "diag", "o_in": "diag"})
    held = None
    if reconstruct:
        if criterion == "flap" and flap_bias != "none":
            raise ValueError("sketchprune.prune: reconstruct=True re-fits the weights itself; use flap_bias='none' with it")
        if stats is not None or batches is None:
            raise ValueError("sketchprune.prune: reconstruct=True needs calibration batches (and collects its own stats)")
        batches = list(batches)
        if len(batches) < 2:
            raise ValueError("sketchprune.prune: reconstruct=True needs at least 2 calibration batches (some are held out)")
        n_h = min(len(batches) - 1, max(1, round(len(batches) * heldout_fraction)))
        batches, held_batches = batches[:-n_h], batches[-n_h:]
        needs = _merge_needs(needs, RECON_NEEDS)
        held = collect_statistics(model, held_batches, layers=layer_idx, budget=budget, progress=progress,
                                  what=RECON_NEEDS, stat_dtype=stat_dtype)
    if needs and stats is None:
        if batches is None:
            raise ValueError(f"sketchprune.prune: criterion {criterion!r} needs calibration batches")
        stats = collect_statistics(model, batches, layers=layer_idx, budget=budget, progress=progress, what=needs,
                                   stat_dtype=stat_dtype)
    t_stats = time.perf_counter()
    grads = None
    if getattr(crit, "needs_gradients", False):
        if batches is None:
            raise ValueError(f"sketchprune.prune: criterion {criterion!r} needs calibration batches for its gradients")
        from .gradient_scores import gradient_statistics
        grads = gradient_statistics(model, batches, layers=layer_idx, progress=progress)
    removal = removal_plan(model, sparsity, attn_sparsity, head_mode, layers=layer_idx) \
        if allocation == "uniform" else None
    scores = score_model(model, criterion, stats if needs else None, layers=layer_idx, seed=seed, grads=grads,
                         removal=removal, head_mode=head_mode, options=criterion_options)
    alloc = allocate(model, scores.ffn, scores.heads, sparsity=sparsity, attn_sparsity=attn_sparsity,
                     head_mode=head_mode, allocation=allocation)
    params_before = count_parameters(model)
    folded = []
    if criterion == "flap" and flap_bias != "none":
        folded = _flap_compensate(model, adapter, alloc, stats, flap_bias)  # created biases: see slicing
    refits = _refit(model, adapter, alloc, stats, held, alphas) if reconstruct else {}
    slice_model(model, ffn=alloc.ffn, heads=alloc.heads)
    _install_refits(model, adapter, refits)
    params_after = count_parameters(model)
    return {
        "criterion": criterion,
        "head_mode": head_mode,
        "sequential": False,
        "sparsity_requested": alloc.sparsity,
        "attn_sparsity_requested": alloc.attn_sparsity,
        "sparsity_achieved": alloc.achieved(),
        "block_params_before": alloc.params_before,
        "block_params_after": alloc.params_after,
        "params_before": params_before,
        "params_after": params_after,
        "layers": [alloc.layers[i].as_dict(alloc.costs[i]) for i in sorted(alloc.layers)],
        "calibration_tokens": 0 if stats is None or not needs else stats.tokens,
        "calibration_batches": 0 if stats is None or not needs else stats.batches,
        "biases_folded": folded,
        "reconstruction": {i: {k: r[1] for k, r in v.items()} for i, v in refits.items()},
        "seconds": {"statistics": t_stats - t0, "total": time.perf_counter() - t0},
    }
