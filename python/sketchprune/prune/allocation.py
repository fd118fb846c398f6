"""Allocation: turn unit scores and target sparsities into per-layer keep-sets.

Uniform allocation (the default): every layer loses the same fraction ``attn_sparsity`` of its
attention parameters and the same overall fraction ``sparsity`` of its block parameters
(attention + FFN Linears).  Per layer (:func:`layer_removal`, which depends only on parameter
counts, so a pipeline can pass the counts to a criterion before scoring):

1. the number of heads to remove is rounded to a valid value -- ``head_mode="query"`` removes
   the same number of query heads from every KV group (so, for 9 query / 3 KV heads, steps of 3),
   ``head_mode="group"`` removes whole KV groups with their query heads -- choosing the count
   whose removed parameters are closest to ``attn_sparsity`` x the layer's attention parameters,
   always keeping at least one head, and among counts for which the FFN can make up the rest
   when there are any (coarse groups in small models);
2. the remainder of the layer's parameter target ``sparsity`` x (attention + FFN parameters) is
   taken from FFN channels (rounded to the nearest channel, clipped to [0, d_ff]).

So each layer, and hence the whole model, is within half an FFN channel's parameters of the
target unless the clip is hit.  Within a layer the lowest-scored units go: FFN channels by
score; query heads by score within each KV group (``"query"``); KV groups by the sum of their
query heads' scores (``"group"``).  Ties are broken towards removing the higher index.

Global allocation (``allocation="global"``): the same targets for the whole set of layers, with
the units ranked across layers.  Scores are first normalised per layer and unit type
(``normalise="mean"``: divided by the layer's mean FFN-channel resp. query-head score, so a
unit's score says how it compares with its layer's average; scores must be non-negative;
``"none"`` compares raw scores).  Then

1. attention: a step of layer ``l`` is one more query head from each of its KV groups
   (``"query"``; its key is the mean over groups of the ``r``-th lowest normalised head score)
   or one more KV group (``"group"``; the group's mean normalised head score).  Steps are taken
   in ascending key order, each layer's in order, while the attention parameters removed end no
   farther from ``attn_sparsity`` x all attention parameters than before; every KV group keeps
   at least one query head and every layer one group;
2. FFN: all channels above the per-layer floor (each layer keeps at least
   ``ceil(ffn_floor * d_ff)`` channels, and at least one; default ``ffn_floor=0.1``) are ranked
   by normalised score and removed lowest first until the overall parameters removed are within
   half a channel of ``sparsity`` x all block parameters.

Within each layer the units removed are then chosen exactly as in the uniform allocation (the
lowest-scored, per KV group for heads), only the counts differ.

Parameters counted: the weights and biases of q, k, v, o, gate, up, down.  Per FFN channel:
a row of gate and up (+ their bias entries) and a column of down; per query head: head_dim rows
of q (+ bias) and columns of o; per KV group additionally head_dim rows of k and v (+ biases).
The down/o biases are never removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import HeadStructure, get_adapter, layer_indices
from .slicing import KVGroups, QueryHeads, resolve_heads

HEAD_MODES = ("query", "group")


def _nb(lin: nn.Linear) -> int:
    return 0 if lin.bias is None else 1


def _numel(lin: nn.Linear) -> int:
    return lin.weight.numel() + (0 if lin.bias is None else lin.bias.numel())


@dataclass(frozen=True)
class LayerCosts:
    """Parameter counts of one layer's prunable units."""

    ffn_units: int
    ffn_unit: int       # per FFN channel
    num_heads: int
    num_kv_heads: int
    query_head: int     # per query head (q rows + o columns)
    kv_head: int        # per KV head (k and v rows), on top of its query heads
    attn_total: int
    ffn_total: int

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def total(self) -> int:
        return self.attn_total + self.ffn_total


def layer_costs(adapter, layer) -> LayerCosts:
    ffn, attn, hs = adapter.ffn(layer), adapter.attention(layer), adapter.head_structure(layer)
    first = [lin for lin in (ffn.gate, ffn.up) if lin is not None]   # gate is None for ungated FFNs
    ffn_unit = sum(lin.in_features + _nb(lin) for lin in first) + ffn.down.out_features
    hd = hs.head_dim
    q_head = hd * (attn.q.in_features + _nb(attn.q)) + hd * attn.o.out_features
    kv_head = hd * (attn.k.in_features + _nb(attn.k)) + hd * (attn.v.in_features + _nb(attn.v))
    return LayerCosts(ffn.up.out_features, ffn_unit, hs.num_heads, hs.num_kv_heads, q_head, kv_head,
                      sum(_numel(m) for m in (attn.q, attn.k, attn.v, attn.o)),
                      sum(_numel(m) for m in (*first, ffn.down)))


@dataclass
class LayerPlan:
    """What one layer keeps."""

    index: int
    ffn_keep: torch.Tensor                # sorted channel indices
    heads: KVGroups | QueryHeads
    q_heads_kept: int
    kv_heads_kept: int
    params_before: int
    params_after: int

    def kept_indices(self, costs: LayerCosts) -> dict[str, list[int]]:
        """The kept units as indices into the layer before pruning, in the pruned layer's order:
        ``ffn_channels``, ``q_heads``, ``kv_heads``."""
        heads = resolve_heads(self.heads, HeadStructure(costs.num_heads, costs.num_kv_heads, 1))
        return {"ffn_channels": [int(i) for i in self.ffn_keep.tolist()],
                "q_heads": [int(i) for i in heads.q_heads.tolist()],
                "kv_heads": [int(i) for i in heads.kv_heads.tolist()]}

    def as_dict(self, costs: LayerCosts) -> dict:
        return {"layer": self.index, "ffn_kept": int(self.ffn_keep.numel()), "ffn_total": costs.ffn_units,
                "q_heads_kept": self.q_heads_kept, "q_heads_total": costs.num_heads,
                "kv_heads_kept": self.kv_heads_kept, "kv_heads_total": costs.num_kv_heads,
                "params_before": self.params_before, "params_after": self.params_after,
                "kept": self.kept_indices(costs)}


@dataclass
class Allocation:
    """Per-layer keep-sets plus the sparsity they achieve (of the pruned blocks' parameters)."""

    layers: dict[int, LayerPlan] = field(default_factory=dict)
    costs: dict[int, LayerCosts] = field(default_factory=dict)
    sparsity: float = 0.0
    attn_sparsity: float = 0.0
    head_mode: str = "query"

    @property
    def ffn(self) -> dict[int, torch.Tensor]:
        return {i: p.ffn_keep for i, p in self.layers.items()}

    @property
    def heads(self) -> dict:
        return {i: p.heads for i, p in self.layers.items()}

    @property
    def params_before(self) -> int:
        return sum(p.params_before for p in self.layers.values())

    @property
    def params_after(self) -> int:
        return sum(p.params_after for p in self.layers.values())

    def achieved(self) -> dict[str, float]:
        """Achieved sparsity: overall, of attention parameters and of FFN parameters."""
        attn_b = sum(c.attn_total for c in self.costs.values())
        ffn_b = sum(c.ffn_total for c in self.costs.values())
        attn_rm = sum((c.num_heads - p.q_heads_kept) * c.query_head + (c.num_kv_heads - p.kv_heads_kept) * c.kv_head
                      for c, p in ((self.costs[i], self.layers[i]) for i in self.layers))
        ffn_rm = sum((self.costs[i].ffn_units - p.ffn_keep.numel()) * self.costs[i].ffn_unit
                     for i, p in self.layers.items())
        return {"overall": 1 - self.params_after / max(self.params_before, 1),
                "attention": attn_rm / max(attn_b, 1), "ffn": ffn_rm / max(ffn_b, 1)}


def _check_fraction(name, v):
    if not 0.0 <= float(v) < 1.0:
        raise ValueError(f"sketchprune.prune: {name} must be in [0, 1), got {v}")
    return float(v)


def head_removal(costs: LayerCosts, attn_sparsity: float, head_mode: str,
                 sparsity: float | None = None) -> tuple[int, int]:
    """(query heads removed per KV group, KV groups removed) closest to the attention target.

    With ``sparsity`` given, counts for which the FFN cannot make up the layer's overall target
    (it would have to remove more than all, or fewer than no, channels) are avoided when another
    count allows it.
    """
    target = attn_sparsity * costs.attn_total
    g = costs.group_size
    if head_mode == "query" and g > 1:
        options = [(r, 0, r * costs.num_kv_heads * costs.query_head) for r in range(g)]
    elif head_mode in HEAD_MODES:  # "group", or "query" without GQA (each KV group is one query head)
        options = [(0, m, m * (g * costs.query_head + costs.kv_head)) for m in range(costs.num_kv_heads)]
    else:
        raise ValueError(f"sketchprune.prune: head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
    def infeasible(removed):
        if sparsity is None:
            return False
        need = sparsity * costs.total - removed
        return need < -costs.ffn_unit / 2 or need > costs.ffn_total + costs.ffn_unit / 2

    r, m, _ = min(options, key=lambda o: (infeasible(o[2]), abs(o[2] - target), o[2]))
    return r, m


@dataclass(frozen=True)
class LayerRemoval:
    """How many units one layer loses under uniform allocation, known before scoring.

    ``q_per_group``: query heads removed from every KV group (``head_mode="query"``);
    ``groups``: whole KV groups removed (``head_mode="group"``); ``ffn``: FFN channels removed.
    Exactly one of ``q_per_group`` / ``groups`` can be non-zero.
    """

    q_per_group: int
    groups: int
    ffn: int
    head_mode: str

    def query_heads(self, costs: LayerCosts) -> int:
        """Query heads removed in total (``q_per_group * num_kv_heads + groups * group_size``)."""
        return self.q_per_group * costs.num_kv_heads + self.groups * costs.group_size

    def attention_params(self, costs: LayerCosts) -> int:
        """Attention parameters removed."""
        return self.query_heads(costs) * costs.query_head + self.groups * costs.kv_head


def _check_targets(costs: LayerCosts, sparsity: float, attn_sparsity: float, where: str) -> None:
    need = sparsity * costs.total - attn_sparsity * costs.attn_total
    if need < -1e-9 * costs.total or need > costs.ffn_total * (1 + 1e-9):
        raise ValueError(
            f"sketchprune.prune: {where}: sparsity {sparsity} with attn_sparsity {attn_sparsity} "
            f"would need the FFN to lose {need / max(costs.ffn_total, 1):.3f} of its parameters; "
            "choose targets with 0 <= sparsity*total - attn_sparsity*attention <= FFN parameters")


def layer_removal(costs: LayerCosts, sparsity: float, attn_sparsity: float | None = None,
                  head_mode: str = "query") -> LayerRemoval:
    """The uniform allocation's removal counts for one layer (steps 1-2 of the module doc).

    Depends only on the layer's parameter counts, so a pipeline can tell a criterion how many
    units will go before it scores them (``LayerContext.ffn_remove`` / ``heads_remove``).
    :func:`allocate` uses exactly these counts.  Raises ``ValueError`` for infeasible targets.
    """
    sparsity = _check_fraction("sparsity", sparsity)
    attn_sparsity = sparsity if attn_sparsity is None else _check_fraction("attn_sparsity", attn_sparsity)
    if head_mode not in HEAD_MODES:
        raise ValueError(f"sketchprune.prune: head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
    _check_targets(costs, sparsity, attn_sparsity, "layer")
    r, m = head_removal(costs, attn_sparsity, head_mode, sparsity)
    rem = LayerRemoval(r, m, 0, head_mode)
    n_rm = round((sparsity * costs.total - rem.attention_params(costs)) / costs.ffn_unit)
    return LayerRemoval(r, m, min(max(n_rm, 0), costs.ffn_units), head_mode)


def removal_plan(model: nn.Module, sparsity: float, attn_sparsity: float | None = None,
                 head_mode: str = "query", layers=None) -> dict[int, LayerRemoval]:
    """:func:`layer_removal` for each of ``layers`` (default all) of ``model``."""
    adapter = get_adapter(model)
    all_layers = adapter.layers(model)
    idx = layer_indices(len(all_layers), layers)
    return {i: layer_removal(layer_costs(adapter, all_layers[i]), sparsity, attn_sparsity, head_mode) for i in idx}


def _lowest_first(scores: torch.Tensor) -> torch.Tensor:
    """Indices ordered from least to most important (ties: higher index first)."""
    s = scores.detach().to("cpu", torch.float64)
    n = s.numel()
    # stable sort on (score, -index): flip, stable-sort, map back
    order = torch.sort(s.flip(0), stable=True).indices
    return (n - 1 - order)


def _check_scores(i: int, c: LayerCosts, fs: torch.Tensor, hsc: torch.Tensor) -> None:
    if fs.shape != (c.ffn_units,) or hsc.shape != (c.num_heads,):
        raise ValueError(f"sketchprune.prune: layer {i} scores have shapes {tuple(fs.shape)}, "
                         f"{tuple(hsc.shape)}; expected ({c.ffn_units},), ({c.num_heads},)")
    if not (torch.isfinite(fs).all() and torch.isfinite(hsc).all()):
        raise ValueError(f"sketchprune.prune: layer {i} has non-finite scores")


def layer_plan(i: int, c: LayerCosts, fs: torch.Tensor, hsc: torch.Tensor, rem: LayerRemoval) -> LayerPlan:
    """Within one layer: drop the lowest-scored units in the counts of ``rem``."""
    g = c.group_size
    hs = hsc.detach().to("cpu", torch.float64)
    if rem.head_mode == "query" and g > 1:  # (without GQA, query heads go as single-head KV groups)
        per_group = hs.reshape(c.num_kv_heads, g)
        keep = []
        for k in range(c.num_kv_heads):
            drop = set(_lowest_first(per_group[k])[:rem.q_per_group].tolist())
            keep += [k * g + j for j in range(g) if j not in drop]
        heads = QueryHeads(keep)
        q_kept, kv_kept = len(keep), c.num_kv_heads
    else:
        drop = set(_lowest_first(hs.reshape(c.num_kv_heads, g).sum(1))[:rem.groups].tolist())
        kv = [k for k in range(c.num_kv_heads) if k not in drop]
        heads = KVGroups(kv)
        q_kept, kv_kept = len(kv) * g, len(kv)
    attn_removed = (c.num_heads - q_kept) * c.query_head + (c.num_kv_heads - kv_kept) * c.kv_head
    mask = torch.ones(c.ffn_units, dtype=torch.bool)
    mask[_lowest_first(fs)[:rem.ffn]] = False
    ffn_keep = torch.nonzero(mask).reshape(-1)
    after = c.total - attn_removed - rem.ffn * c.ffn_unit
    return LayerPlan(i, ffn_keep, heads, q_kept, kv_kept, c.total, after)


ALLOCATIONS = ("uniform", "global")


NORMALISATIONS = ("mean", "none")


def _normalised(scores: torch.Tensor, normalise: str, what: str, i: int) -> torch.Tensor:
    s = scores.detach().to("cpu", torch.float64)
    if normalise == "none":
        return s
    if (s < 0).any():
        raise ValueError(f"sketchprune.prune: layer {i} has negative {what} scores; normalise='mean' needs "
                         "non-negative scores (use normalise='none')")
    m = float(s.mean())
    return s / m if m > 0 else torch.ones_like(s)


def _take_in_order(items, target: float):
    """items: (key, layer, step, cost) -- accept in ascending key order while the removed total
    ends no farther from ``target`` than before (``removed + cost/2 <= target``); a layer's steps
    are taken in order, so once one is refused the layer's later steps are too."""
    taken: dict[int, int] = {}
    blocked = set()
    removed = 0.0
    for _, layer, step, cost in sorted(items, key=lambda t: (t[0], t[1], t[2])):
        if layer in blocked:
            continue
        if removed + cost / 2 <= target and taken.get(layer, 0) == step - 1:
            taken[layer] = step
            removed += cost
        else:
            blocked.add(layer)
    return taken, removed


def _global_removal(costs, ffn_scores, head_scores, sparsity, attn_sparsity, head_mode, ffn_floor, normalise):
    """Removal counts per layer from one ranking across layers (see the module doc)."""
    if normalise not in NORMALISATIONS:
        raise ValueError(f"sketchprune.prune: normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    if not 0.0 <= float(ffn_floor) <= 1.0:
        raise ValueError(f"sketchprune.prune: ffn_floor must be in [0, 1], got {ffn_floor}")
    total = sum(c.total for c in costs.values())
    attn_total = sum(c.attn_total for c in costs.values())
    floors = {i: max(1, math.ceil(ffn_floor * c.ffn_units)) for i, c in costs.items()}
    ffn_room = sum((c.ffn_units - floors[i]) * c.ffn_unit for i, c in costs.items())
    need = sparsity * total - attn_sparsity * attn_total
    if need < -1e-9 * total or need > ffn_room * (1 + 1e-9):
        raise ValueError(
            f"sketchprune.prune: sparsity {sparsity} with attn_sparsity {attn_sparsity} would need the FFNs to "
            f"lose {need / max(ffn_room, 1):.3f} of the parameters they can lose above the floor "
            f"(ffn_floor={ffn_floor}); lower the targets or the floor")
    # attention: one step = one more query head from every KV group ("query") / one more KV group
    items = []
    for i, c in costs.items():
        hs = _normalised(head_scores[i], normalise, "head", i).reshape(c.num_kv_heads, c.group_size)
        if head_mode == "query" and c.group_size > 1:
            per_rank = torch.sort(hs, dim=1).values.mean(0)          # r-th lowest head, averaged over groups
            items += [(float(per_rank[r - 1]), i, r, c.num_kv_heads * c.query_head) for r in range(1, c.group_size)]
        else:
            grp = torch.sort(hs.mean(1)).values
            items += [(float(grp[m - 1]), i, m, c.group_size * c.query_head + c.kv_head)
                      for m in range(1, c.num_kv_heads)]
    taken, attn_removed = _take_in_order(items, attn_sparsity * attn_total)
    # FFN: every channel above the floors, ranked by normalised score, fills the rest
    ffn_target = sparsity * total - attn_removed
    items = []
    for i, c in costs.items():
        fs = _normalised(ffn_scores[i], normalise, "FFN", i)
        order = _lowest_first(fs)[:c.ffn_units - floors[i]]
        vals = fs[order].tolist()
        items += [(v, i, k + 1, c.ffn_unit) for k, v in enumerate(vals)]
    ffn_taken, _ = _take_in_order(items, ffn_target)
    out = {}
    for i in costs:
        r = taken.get(i, 0)
        per_query = head_mode == "query" and costs[i].group_size > 1  # else whole (single-head) groups
        out[i] = LayerRemoval(r if per_query else 0, 0 if per_query else r, ffn_taken.get(i, 0), head_mode)
    return out


def allocate(model: nn.Module, ffn_scores: dict, head_scores: dict, sparsity: float = 0.2,
             attn_sparsity: float | None = None, head_mode: str = "query", allocation: str = "uniform",
             ffn_floor: float = 0.1, normalise: str = "mean") -> Allocation:
    """Per-layer keep-sets of the layers in ``ffn_scores`` (see the module doc).

    ``ffn_scores[i]``: (d_ff,) scores of layer ``i``'s FFN channels; ``head_scores[i]``: (H,) its
    query heads' scores (higher = keep).  ``attn_sparsity`` defaults to ``sparsity``.
    ``allocation``: ``"uniform"`` (default; every layer loses the same fractions) or
    ``"global"`` (units ranked across layers; ``ffn_floor`` and ``normalise`` apply only there).
    """
    sparsity = _check_fraction("sparsity", sparsity)
    attn_sparsity = sparsity if attn_sparsity is None else _check_fraction("attn_sparsity", attn_sparsity)
    if head_mode not in HEAD_MODES:
        raise ValueError(f"sketchprune.prune: head_mode must be one of {HEAD_MODES}, got {head_mode!r}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"sketchprune.prune: allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    if set(ffn_scores) != set(head_scores):
        raise ValueError("sketchprune.prune: ffn_scores and head_scores must cover the same layers")
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    costs = {i: layer_costs(adapter, layers[i]) for i in sorted(ffn_scores)}
    for i, c in costs.items():
        _check_scores(i, c, ffn_scores[i], head_scores[i])
    if allocation == "uniform":
        removal = {}
        for i, c in costs.items():
            _check_targets(c, sparsity, attn_sparsity, f"layer {i}")
            removal[i] = layer_removal(c, sparsity, attn_sparsity, head_mode)
    else:
        removal = _global_removal(costs, ffn_scores, head_scores, sparsity, attn_sparsity, head_mode,
                                 ffn_floor=ffn_floor, normalise=normalise)
    out = Allocation(sparsity=sparsity, attn_sparsity=attn_sparsity, head_mode=head_mode)
    for i, c in costs.items():
        out.layers[i] = layer_plan(i, c, ffn_scores[i], head_scores[i], removal[i])
        out.costs[i] = c
    return out
