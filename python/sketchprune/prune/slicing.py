"""Physically slice a Hugging Face transformer into a smaller dense one.

Given, per layer, the FFN channels to keep and the attention heads to keep, :func:`slice_model`
gathers the kept rows/columns of each layer's weight group with one
:func:`sketchprune.gather_slices` call per (layer, unit kind) and installs smaller ``nn.Linear``
modules (same dtype, device and ``requires_grad``) in place:

* FFN: rows ``keep`` of gate (if the FFN is gated) and up, weights and biases, and columns
  ``keep`` of down;
* attention: row blocks of ``head_dim`` of q (kept query heads) and of k/v (kept KV heads), with
  their biases, and the column blocks of o for the kept query heads.  Biases of down and o are
  per output feature and stay as they are.

Heads are chosen per layer with :class:`KVGroups` (keep whole KV groups, each with all its query
heads) or :class:`QueryHeads` (keep some query heads; every KV group that keeps any must keep the
same number, and a group that keeps none is removed with its K/V heads).  Either way every
remaining KV group serves the same number of query heads, ``head_dim`` is unchanged and RoPE
and per-head q/k norms (Gemma 3), which act within each head, are untouched.

Layers may end up with different sizes.  The attention modules read their head counts from
module attributes (Llama: ``num_key_value_groups``; OPT: ``num_heads``; BERT:
``num_attention_heads``), which the architecture adapter sets per layer.  The per-layer sizes
are recorded in ``config.sketchprune_layers``; when all layers agree and the stock config can
describe them (see :meth:`~sketchprune.prune.adapters.ArchitectureAdapter.stock_config`; not
after head pruning in OPT/BERT, whose head width is ``hidden_size // num_attention_heads``) the
standard fields (e.g. ``intermediate_size`` / ``ffn_dim``, ``num_attention_heads``,
``num_key_value_heads``, ``head_dim``) are updated too, so the stock ``from_pretrained`` loads
the saved model.  See :mod:`sketchprune.prune.serialization`.

Biases the architecture does not have (FLAP's bias compensation gives down / o projections of a
Llama-family model one) are recorded per layer as ``added_biases`` (roles ``"down"``, ``"o"``);
:func:`~sketchprune.prune.load_pruned` re-creates them, and the stock ``from_pretrained``, which
would drop them, is not offered for such a model.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..ops.gather import gather_slices
from .adapters import ArchitectureAdapter, AttnLinears, FFNLinears, HeadStructure, get_adapter


@dataclass(frozen=True)
class KVGroups:
    """Keep these KV groups whole (KV head ``g`` and its query heads ``g*G .. g*G+G-1``)."""

    indices: Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class QueryHeads:
    """Keep these query heads (global indices; head ``h`` belongs to KV group ``h // G``).

    Every KV group that keeps at least one query head must keep the same number; KV groups
    that keep none are removed together with their K/V heads.
    """

    indices: Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class HeadPlan:
    """Resolved head selection of one layer: kept query heads and KV heads (block indices)."""

    q_heads: torch.Tensor
    kv_heads: torch.Tensor
    structure: HeadStructure


def _as_index(name: str, idx, n: int, *, allow_empty: bool) -> torch.Tensor:
    """A sorted, unique, in-range int64 CPU index tensor, or a clear error."""
    if isinstance(idx, torch.Tensor):
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"sketchprune.prune: {name} must be a 1-D integer tensor, got "
                            f"{idx.dtype} of shape {tuple(idx.shape)}")
        t = idx.detach().to("cpu", torch.int64)
    else:
        try:
            items = list(idx)
        except TypeError:
            raise TypeError(f"sketchprune.prune: {name} must be a sequence of ints, got "
                            f"{type(idx).__name__}") from None
        bad = [v for v in items if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise TypeError(f"sketchprune.prune: {name} must be a sequence of ints, got {bad[0]!r}")
        t = torch.tensor([int(v) for v in items], dtype=torch.int64)
    if t.numel() == 0:
        if not allow_empty:
            raise ValueError(f"sketchprune.prune: {name} keeps nothing; at least one is required")
        return t
    if bool((t[1:] <= t[:-1]).any()):
        raise ValueError(f"sketchprune.prune: {name} must be sorted and unique, got {t.tolist()}")
    if int(t[0]) < 0 or int(t[-1]) >= n:
        raise IndexError(f"sketchprune.prune: {name} has values in [{int(t[0])}, {int(t[-1])}] "
                         f"but there are only {n}")
    return t


def resolve_heads(selection, heads: HeadStructure, where: str = "heads") -> HeadPlan:
    """Turn a :class:`KVGroups` / :class:`QueryHeads` selection into kept query / KV head indices.

    Raises ``TypeError`` for other selection types, ``ValueError`` when nothing is kept or the
    kept query heads are not equally many in every kept KV group, ``IndexError`` when out of range.
    """
    g = heads.group_size
    if isinstance(selection, KVGroups):
        kv = _as_index(f"{where} KV groups", selection.indices, heads.num_kv_heads, allow_empty=False)
        q = (kv[:, None] * g + torch.arange(g)).reshape(-1)
        return HeadPlan(q, kv, HeadStructure(q.numel(), kv.numel(), heads.head_dim))
    if isinstance(selection, QueryHeads):
        q = _as_index(f"{where} query heads", selection.indices, heads.num_heads, allow_empty=False)
        kv, counts = torch.unique_consecutive(q // g, return_counts=True)
        if bool((counts != counts[0]).any()):
            per = {int(k): int(c) for k, c in zip(kv, counts)}
            raise ValueError(
                f"sketchprune.prune: {where} keeps unequal numbers of query heads per KV group "
                f"({per}; group size {g}); every kept KV group must keep the same number")
        return HeadPlan(q, kv, HeadStructure(q.numel(), kv.numel(), heads.head_dim))
    raise TypeError(f"sketchprune.prune: {where} must be KVGroups(...) or QueryHeads(...), "
                    f"got {type(selection).__name__}")


def _per_layer(name: str, spec, n_layers: int) -> dict[int, object]:
    """Normalise a per-layer spec (mapping layer -> value, or a list with None = untouched)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out = {}
        for k, v in spec.items():
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < n_layers:
                raise IndexError(f"sketchprune.prune: {name} names layer {k!r}; the model has {n_layers} layers")
            if v is not None:
                out[int(k)] = v
        return out
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        if len(spec) != n_layers:
            raise ValueError(f"sketchprune.prune: {name} has {len(spec)} entries for {n_layers} layers")
        return {i: v for i, v in enumerate(spec) if v is not None}
    raise TypeError(f"sketchprune.prune: {name} must be a mapping layer -> selection or a per-layer list")


def _linear_like(old: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight``/``bias`` (no initialisation, same requires_grad)."""
    new = nn.Linear(1, 1, bias=bias is not None, device="meta", dtype=weight.dtype)  # no init work
    new.out_features, new.in_features = weight.shape
    new.weight = nn.Parameter(weight, requires_grad=old.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=old.bias.requires_grad)
    new.train(old.training)
    return new


def _check_linear(name: str, mod) -> None:
    if type(mod) is not nn.Linear:
        raise TypeError(f"sketchprune.prune: {name} is a {type(mod).__name__}; only plain nn.Linear "
                        "modules can be sliced")


def slice_ffn(ffn: FFNLinears, keep: torch.Tensor) -> FFNLinears:
    """New (gate/)up/down Linears keeping FFN channels ``keep`` (one ``gather_slices`` call)."""
    for n in ("gate", "up", "down"):
        if n != "gate" or ffn.gate is not None:
            _check_linear(n, getattr(ffn, n))
    first = ffn.first                         # (gate, up) or (up,)
    dev = ffn.up.weight.device
    tensors = [m.weight for m in first] + [ffn.down.weight]
    dims = [0] * len(first) + [1]
    biased = [m for m in first if m.bias is not None]
    tensors += [m.bias for m in biased]
    dims += [0] * len(biased)
    with torch.no_grad():
        out = gather_slices([t.detach() for t in tensors], keep.to(dev), dims=dims)
    n = len(first)
    weights = dict(zip([id(m) for m in first], out[:n]))
    bias = dict(zip([id(m) for m in biased], out[n + 1:]))
    new = {id(m): _linear_like(m, weights[id(m)], bias.get(id(m))) for m in first}
    return FFNLinears(
        None if ffn.gate is None else new[id(ffn.gate)],
        new[id(ffn.up)],
        _linear_like(ffn.down, out[n], None if ffn.down.bias is None else ffn.down.bias.detach()),
    )


def slice_attention(attn: AttnLinears, plan: HeadPlan) -> AttnLinears:
    """New q/k/v/o Linears keeping the planned heads (one ``gather_slices`` call, blocks of head_dim)."""
    for n in ("q", "k", "v", "o"):
        _check_linear(n, getattr(attn, n))
    dev = attn.q.weight.device
    q_idx, kv_idx = plan.q_heads.to(dev), plan.kv_heads.to(dev)
    tensors = [attn.q.weight, attn.k.weight, attn.v.weight, attn.o.weight]
    indices = [q_idx, kv_idx, kv_idx, q_idx]
    dims = [0, 0, 0, 1]
    biased = [(m, i) for m, i in ((attn.q, q_idx), (attn.k, kv_idx), (attn.v, kv_idx)) if m.bias is not None]
    tensors += [m.bias for m, _ in biased]
    indices += [i for _, i in biased]
    dims += [0] * len(biased)
    with torch.no_grad():
        out = gather_slices([t.detach() for t in tensors], indices, dims=dims, block=plan.structure.head_dim)
    qw, kw, vw, ow = out[:4]
    bias = dict(zip([id(m) for m, _ in biased], out[4:]))
    return AttnLinears(
        _linear_like(attn.q, qw, bias.get(id(attn.q))),
        _linear_like(attn.k, kw, bias.get(id(attn.k))),
        _linear_like(attn.v, vw, bias.get(id(attn.v))),
        _linear_like(attn.o, ow, None if attn.o.bias is None else attn.o.bias.detach()),
    )


def second_linears(adapter: ArchitectureAdapter, layer: nn.Module) -> dict[str, nn.Module]:
    """{"down": the FFN's down projection, "o": the attention output projection} of ``layer``: the
    second matrices of the depth-2 units, the only ones pruning ever gives a bias."""
    return {"down": adapter.ffn(layer).down, "o": adapter.attention(layer).o}


def _stock_bias_roles(model: nn.Module, adapter: ArchitectureAdapter) -> frozenset:
    """The roles of :func:`second_linears` that carry a bias in the architecture as its config builds it (one
    model built on the meta device, without the recorded per-layer sizes; cached on the model)."""
    cached = model.__dict__.get("_sketchprune_stock_bias_roles")
    if cached is None:
        cfg = copy.deepcopy(model.config)
        if hasattr(cfg, "sketchprune_layers"):
            del cfg.sketchprune_layers
        with torch.device("meta"):
            ref = type(model)(cfg)
        lin = second_linears(adapter, adapter.layers(ref)[0])
        cached = frozenset(r for r, m in lin.items() if getattr(m, "bias", None) is not None)
        model.__dict__["_sketchprune_stock_bias_roles"] = cached
    return cached


def record_structure(model: nn.Module, adapter: ArchitectureAdapter | None = None) -> list[dict]:
    """Write the per-layer sizes into ``model.config`` (see module doc) and return them."""
    adapter = adapter or get_adapter(model)
    units = adapter.layer_units(model)
    cfg = model.config
    layers = [{"intermediate_size": u.ffn_units, "num_attention_heads": u.heads.num_heads,
               "num_key_value_heads": u.heads.num_kv_heads} for u in units]
    has = [{r for r, m in second_linears(adapter, layer).items() if getattr(m, "bias", None) is not None}
           for layer in adapter.layers(model)]
    if any(has):
        stock_roles = _stock_bias_roles(model, adapter)
        for spec, roles in zip(layers, has):
            if roles - stock_roles:
                spec["added_biases"] = sorted(roles - stock_roles)
    head_dims = {u.heads.head_dim for u in units}
    if len(head_dims) != 1:
        raise ValueError(f"sketchprune.prune: layers have different head_dim {sorted(head_dims)}")
    head_dim = head_dims.pop()
    if adapter.explicit_head_dim:
        cfg.head_dim = head_dim  # explicit: hidden_size // num_attention_heads no longer holds
    cfg.sketchprune_layers = layers
    # The stock fields can describe the model only when every layer agrees and the adapter says
    # the config can hold the sizes (transformers rejects hidden_size not divisible by
    # num_attention_heads even with an explicit head_dim; OPT/BERT derive the head width from
    # the head count).  Otherwise they keep the original values and load_pruned reads
    # sketchprune_layers.
    stock = adapter.stock_config(cfg, layers[0], head_dim) if all(l == layers[0] for l in layers) else None
    for k, v in (stock or {}).items():
        setattr(cfg, k, v)
    return layers


def slice_model(model: nn.Module, ffn=None, heads=None) -> nn.Module:
    """Physically remove FFN channels and attention heads from ``model``, in place; returns it.

    ``ffn``: per layer, the FFN channel indices to keep (sorted, unique, in range; may be empty).
    ``heads``: per layer, a :class:`KVGroups` or :class:`QueryHeads` selection (at least one head).
    Each is a mapping ``layer -> selection`` or a list with one entry per layer (``None`` leaves a
    layer's units as they are).  Everything is validated before the model is changed.
    """
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    ffn_spec = _per_layer("ffn", ffn, len(layers))
    head_spec = _per_layer("heads", heads, len(layers))
    ffn_keep = {i: _as_index(f"ffn keep of layer {i}", k, adapter.ffn(layers[i]).units,
                             allow_empty=True) for i, k in ffn_spec.items()}
    head_plans = {i: resolve_heads(s, adapter.head_structure(layers[i]), f"heads of layer {i}")
                  for i, s in head_spec.items()}
    for i, keep in ffn_keep.items():
        adapter.set_ffn_size(layers[i], slice_ffn(adapter.ffn(layers[i]), keep))
    for i, plan in head_plans.items():
        adapter.set_attention(layers[i], slice_attention(adapter.attention(layers[i]), plan), plan.structure)
    record_structure(model, adapter)
    return model
