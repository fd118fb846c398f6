"""The pruning report of :func:`sketchprune.prune`: per-layer kept units, sparsity counted on the
models themselves, reconstruction errors per refit matrix, all JSON-ready."""

from __future__ import annotations

import math

import torch

from .adapters import get_adapter

__all__ = ["jsonable", "layer_costs_of", "kept_plan", "layer_entries", "sparsity_summary"]

def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if torch.is_tensor(x):
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


_MATRIX = {"down": "down_proj", "o": "o_proj"}


def _per_matrix(v):
    """``{"down": x, "o": y}`` -> ``{"down_proj": x, "o_proj": y}``; empty or missing -> None."""
    if isinstance(v, dict):
        v = {_MATRIX.get(str(k), str(k)): x for k, x in v.items() if x is not None}
        return v or None
    return v


def _recon_errors(entry: dict, info: dict | None) -> dict:
    """One layer's reconstruction errors relative to the dense layer output, per refit matrix:
    the pipeline's per-layer numbers when it gives them, else its reconstruction record."""
    if any(k in entry for k in ("recon_rel_error", "heldout_rel_error")):
        return {k: _per_matrix(entry.get(k)) for k in ("recon_rel_error", "heldout_rel_error",
                                                       "no_refit_rel_error", "no_refit_heldout_rel_error")}
    info = {k: v for k, v in (info or {}).items() if isinstance(v, dict)}
    return {"recon_rel_error": _per_matrix({k: v.get("fit_error") for k, v in info.items()}),
            "heldout_rel_error": _per_matrix({k: v.get("eval_error") for k, v in info.items()}),
            "no_refit_rel_error": _per_matrix({k: v.get("fit_error_none") for k, v in info.items()}),
            "no_refit_heldout_rel_error": _per_matrix({k: v.get("eval_error_none") for k, v in info.items()})}


def layer_costs_of(model) -> list:
    """Per layer its :class:`~sketchprune.prune.allocation.LayerCosts` as the model is now: unit
    counts, and attention / MLP parameters (biases a criterion created included)."""
    from .allocation import layer_costs

    ad = get_adapter(model)
    return [layer_costs(ad, layer) for layer in ad.layers(model)]


def _units(c) -> tuple[int, int, int]:
    return c.ffn_units, c.num_heads, c.num_kv_heads


def kept_plan(rep: dict, before: list, after: list) -> list[dict]:
    """``[{"layer", "ffn_channels", "q_heads", "kv_heads"}]``: per layer the indices (into the input
    model's layer) of the units the pruned model kept, in its order -- as the pipeline chose them
    (layers it did not prune keep everything).  Checked against the pruned model's shapes."""
    kept = {int(e["layer"]): e["kept"] for e in rep.get("layers", []) if isinstance(e, dict) and "kept" in e}
    plan = []
    for i, (cb, ca) in enumerate(zip(before, after)):
        (f, q, kv), now = _units(cb), _units(ca)
        k = kept.get(i) or {"ffn_channels": list(range(f)), "q_heads": list(range(q)), "kv_heads": list(range(kv))}
        entry = {"layer": i, "ffn_channels": list(k["ffn_channels"]), "q_heads": list(k["q_heads"]),
                 "kv_heads": list(k["kv_heads"])}
        if (len(entry["ffn_channels"]), len(entry["q_heads"]), len(entry["kv_heads"])) != now:
            raise RuntimeError(f"sketchprune.prune: internal error: layer {i}'s recorded plan keeps "
                               f"{len(entry['ffn_channels'])} channels / {len(entry['q_heads'])} heads / "
                               f"{len(entry['kv_heads'])} KV heads but the pruned layer has {now}")
        plan.append(entry)
    return plan


def layer_entries(rep: dict, plan: list[dict] | None, n_layers: int) -> list[dict]:
    by_layer = {int(e["layer"]): e for e in rep.get("layers", []) if isinstance(e, dict) and "layer" in e}
    recon = {int(k): v for k, v in (rep.get("reconstruction") or {}).items()}
    out = []
    for i in range(n_layers):
        e = by_layer.get(i, {})
        p = plan[i] if plan else None
        errors = _recon_errors(e, recon.get(i))
        out.append({
            "layer": i,
            "pruned": i in by_layer,
            "kept_channels": len(p["ffn_channels"]) if p else e.get("ffn_kept"),
            "total_channels": e.get("ffn_total"),
            "kept_heads": len(p["q_heads"]) if p else e.get("q_heads_kept"),
            "total_heads": e.get("q_heads_total"),
            "kept_kv_heads": len(p["kv_heads"]) if p else e.get("kv_heads_kept"),
            "total_kv_heads": e.get("kv_heads_total"),
            "params_before": e.get("params_before"),
            "params_after": e.get("params_after"),
            **errors,
            "stream_rel_error": e.get("stream_rel_error"),
            "block_recon": e.get("block_recon"),
        })
    return out


def sparsity_summary(rep: dict, requested: float, before: list, after: list) -> dict:
    """Achieved sparsity counted on the models themselves (attention, MLP, both) over the pruned
    layers; ``allocated``: the allocation's own figure (which does not see biases FLAP creates)."""
    pruned = sorted({int(e["layer"]) for e in rep.get("layers", []) if isinstance(e, dict) and "layer" in e})
    out = {"requested": requested, "of": "attention + MLP parameters of the pruned layers"}

    def frac(count):
        b, a = sum(count(before[i]) for i in pruned), sum(count(after[i]) for i in pruned)
        return 1 - a / b if b else 0.0

    out.update(achieved=frac(lambda c: c.attn_total + c.ffn_total), attention=frac(lambda c: c.attn_total),
               ffn=frac(lambda c: c.ffn_total))
    a = rep.get("sparsity_achieved")
    out["allocated"] = a.get("overall") if isinstance(a, dict) else a
    return out
