"""Pruning criteria: per-layer scores of FFN channels and query heads, one protocol for all.

A criterion is a :class:`Criterion`: a name, the calibration statistics it needs (see
:mod:`~sketchprune.prune.calibration`) and two functions that score one layer's units from the
layer's weights and statistics:

* ``ffn(ctx) -> (d_ff,)`` -- one score per FFN channel ``i`` (row ``i`` of gate/up, column ``i``
  of down);
* ``heads(ctx) -> (num_heads,)`` -- one score per query head ``h`` (its ``head_dim`` rows of q and
  column block of o).  KV groups are scored as the sum of their query heads (in allocation).

Higher = more important.  Notation, per layer: ``G, U`` gate/up weights (d_ff x d), ``D`` down
(d x d_ff), ``Q_h`` the rows of q for head ``h`` (head_dim x d), ``O_h`` the columns of o for head
``h`` (d x head_dim); ``h`` the down_proj input (FFN intermediate activation), ``z`` the o_proj
input (concatenated head outputs, ``z_h`` head ``h``'s block); expectations over calibration
tokens (padding excluded).  All scores are float64 on the weights' device.

The registry :data:`CRITERIA` holds ``random``, ``magnitude-l1``, ``magnitude-l2``,
``magnitude-depth2``, ``wanda-sp``, ``flap``, ``sigma``, the gradient criteria ``taylor`` and
``fisher`` (``needs_gradients``: scores from
:func:`~sketchprune.prune.gradient_scores.gradient_statistics` on the dense model) and the joint
criteria ``greedy`` (structured OBS) and ``head-similarity`` (:mod:`~sketchprune.prune.greedy`),
which eliminate units in order and use ``LayerContext.ffn_remove`` / ``heads_remove`` when the
caller knows them; :func:`score_model` applies one to every layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .adapters import AttnLinears, FFNLinears, HeadStructure, get_adapter
from .calibration import CalibrationStatistics, LayerStatistics
from .greedy import greedy_obs, order_scores, similarity_elimination


@dataclass
class LayerContext:
    """What a criterion sees of one layer."""

    index: int
    ffn: FFNLinears
    attn: AttnLinears
    heads: HeadStructure
    stats: LayerStatistics | None
    generator: torch.Generator
    #: FFN channels / query heads this layer will lose (None: unknown, rank every unit).  Under
    #: ``head_mode="query"`` ``heads_remove`` is a multiple of ``num_kv_heads`` (the same number
    #: per KV group); under ``"group"`` a multiple of the group size (whole groups).
    ffn_remove: int | None = None
    heads_remove: int | None = None
    head_mode: str = "query"
    #: per-unit gradient reductions of this layer (see :func:`~sketchprune.prune.gradient_scores.gradient_statistics`)
    grads: dict | None = None
    #: criterion options (e.g. ``{"block": 8}`` for ``greedy``)
    options: dict = field(default_factory=dict)

    def stat(self, name: str):
        if self.stats is None:
            raise KeyError(f"sketchprune.prune: layer {self.index} has no calibration statistics")
        return self.stats.get(name)

    def grad(self, name: str) -> torch.Tensor:
        if self.grads is None:
            raise KeyError(f"sketchprune.prune: layer {self.index} has no gradient statistics; "
                           "pass grads=gradient_statistics(model, batches)")
        try:
            return self.grads[name]
        except KeyError:
            raise KeyError(f"sketchprune.prune: gradient statistic {name!r} missing for layer {self.index}") from None

    @property
    def d_ff(self) -> int:
        return self.ffn.up.out_features


@dataclass(frozen=True)
class Criterion:
    """A named pruning criterion: the statistics it needs and its per-layer scoring functions."""

    name: str
    needs: dict
    ffn: Callable[[LayerContext], torch.Tensor]
    heads: Callable[[LayerContext], torch.Tensor]
    doc: str = ""
    #: scores come from gradients of the loss (``LayerContext.grads``), computed on the dense model
    needs_gradients: bool = False

    @property
    def data_free(self) -> bool:
        return not self.needs


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, needs: dict | None = None, needs_gradients: bool = False):
    """Decorator for a class-free criterion: a function returning ``(ffn_fn, heads_fn)``."""
    def deco(make):
        ffn_fn, heads_fn = make()
        CRITERIA[name] = Criterion(name, dict(needs or {}), ffn_fn, heads_fn, (make.__doc__ or "").strip(),
                                   needs_gradients)
        return make
    return deco


# ---------------------------------------------------------------------------- helpers
def _w(lin: nn.Linear) -> torch.Tensor:
    """A Linear's weight, detached, in float64 (scores are small; weights are read once)."""
    return lin.weight.detach().to(torch.float64)


def _head_cols(o: torch.Tensor, hs: HeadStructure) -> torch.Tensor:
    """o weight (d x H*hd) -> (d, H, hd)."""
    return o.reshape(o.shape[0], hs.num_heads, hs.head_dim)


def _head_rows(q: torch.Tensor, hs: HeadStructure) -> torch.Tensor:
    """q weight (H*hd x d) -> (H, hd, d)."""
    return q.reshape(hs.num_heads, hs.head_dim, q.shape[1])


def _per_head(v: torch.Tensor, hs: HeadStructure) -> torch.Tensor:
    """A per-channel vector of the o input (H*hd,) summed over each head's block -> (H,)."""
    return v.reshape(hs.num_heads, hs.head_dim).sum(1)


def _first_half_sq(ctx: LayerContext) -> torch.Tensor:
    """||G_i||^2 + ||U_i||^2 per FFN channel (||U_i||^2 for an FFN without gate)."""
    return sum(_w(lin).square().sum(1) for lin in (ctx.ffn.gate, ctx.ffn.up) if lin is not None)


# ---------------------------------------------------------------------------- criteria
@register_criterion("random")
def _random():
    """Data-free: i.i.d. U(0,1) scores from a generator seeded by (seed, layer)."""
    def ffn(ctx):
        return torch.rand(ctx.d_ff, generator=ctx.generator, dtype=torch.float64).to(ctx.ffn.up.weight.device)

    def heads(ctx):
        return torch.rand(ctx.heads.num_heads, generator=ctx.generator,
                          dtype=torch.float64).to(ctx.attn.q.weight.device)
    return ffn, heads


@register_criterion("magnitude-l1")
def _mag_l1():
    """Data-free, first-layer weights:  ffn_i = sum_j |G_ij| + sum_j |U_ij|;  head_h = sum |Q_h|."""
    def ffn(ctx):
        return sum(_w(lin).abs().sum(1) for lin in (ctx.ffn.gate, ctx.ffn.up) if lin is not None)

    def heads(ctx):
        return _head_rows(_w(ctx.attn.q), ctx.heads).abs().sum((1, 2))
    return ffn, heads


@register_criterion("magnitude-l2")
def _mag_l2():
    """Data-free, first-layer weights:  ffn_i = sqrt(||G_i||^2 + ||U_i||^2);  head_h = ||Q_h||_F."""
    def ffn(ctx):
        return _first_half_sq(ctx).sqrt()

    def heads(ctx):
        return _head_rows(_w(ctx.attn.q), ctx.heads).square().sum((1, 2)).sqrt()
    return ffn, heads


@register_criterion("magnitude-depth2")
def _mag_depth2():
    """Data-free, product of the two halves' norms:
    ffn_i = sqrt(||G_i||^2 + ||U_i||^2) * ||D[:, i]||;  head_h = ||Q_h||_F * ||O_h||_F."""
    def ffn(ctx):
        return _first_half_sq(ctx).sqrt() * _w(ctx.ffn.down).square().sum(0).sqrt()

    def heads(ctx):
        q = _head_rows(_w(ctx.attn.q), ctx.heads).square().sum((1, 2)).sqrt()
        o = _head_cols(_w(ctx.attn.o), ctx.heads).square().sum((0, 2)).sqrt()
        return q * o
    return ffn, heads


@register_criterion("wanda-sp", needs={"down_in": "diag", "o_in": "diag"})
def _wanda_sp():
    """Wanda-SP (structured Wanda, as in FLAP's reference implementation): |W| x input RMS
    summed over the unit's second-layer weights:
    ffn_i = sqrt(E[h_i^2]) * sum_r |D[r, i]|;
    head_h = sum_{c in block h} sqrt(E[z_c^2]) * sum_r |O[r, c]|."""
    def ffn(ctx):
        return _w(ctx.ffn.down).abs().sum(0) * ctx.stat("down_in").diag().sqrt()

    def heads(ctx):
        col = _w(ctx.attn.o).abs().sum(0) * ctx.stat("o_in").diag().sqrt()
        return _per_head(col, ctx.heads)
    return ffn, heads


@register_criterion("flap", needs={"down_in": "diag", "o_in": "diag"})
def _flap():
    """FLAP fluctuation metric: input variance times the squared column norm of the second matrix:
    ffn_i = Var[h_i] * ||D[:, i]||^2;  head_h = sum_{c in block h} Var[z_c] * ||O[:, c]||^2.
    (Var is the population variance E[x^2] - E[x]^2.)  The removed channels' mean contribution
    D[:, removed] E[h_removed] (resp. O[:, removed] E[z_removed]) is folded into the bias by
    :func:`~sketchprune.prune.pipeline.fold_mean_into_bias`."""
    def ffn(ctx):
        return _w(ctx.ffn.down).square().sum(0) * ctx.stat("down_in").variance()

    def heads(ctx):
        col = _w(ctx.attn.o).square().sum(0) * ctx.stat("o_in").variance()
        return _per_head(col, ctx.heads)
    return ffn, heads


def _sigma_ffn(ctx):
    """sigma's FFN score E[h_i^2] ||D[:, i]||^2."""
    return _w(ctx.ffn.down).square().sum(0) * ctx.stat("down_in").diag()


@register_criterion("sigma", needs={"down_in": "diag", "o_in": "full"})
def _sigma():
    """The output energy of each unit under the measured input second moments:
    ffn_i = E[h_i^2] * ||D[:, i]||^2  (= E||D[:, i] h_i||^2);
    head_h = E||O_h z_h||^2 = trace(O_h^T O_h Sigma_hh), Sigma = E[z z^T] (uncentred) and
    Sigma_hh its head_dim x head_dim diagonal block of head h."""
    ffn = _sigma_ffn

    def heads(ctx):
        hs = ctx.heads
        o = _head_cols(_w(ctx.attn.o), hs)                       # (d, H, hd)
        gram = torch.einsum("rhi,rhj->hij", o, o)                # O_h^T O_h, (H, hd, hd)
        sig = ctx.stat("o_in").second_moment().to(o.device)
        blocks = torch.stack([sig[h * hs.head_dim:(h + 1) * hs.head_dim, h * hs.head_dim:(h + 1) * hs.head_dim]
                              for h in range(hs.num_heads)])
        return (gram * blocks).sum((1, 2))
    return ffn, heads


def _grad_heads(ctx, term: str) -> torch.Tensor:
    """Per query head: its own q/o term; in head_mode "group" plus its KV head's k/v term shared
    equally by the group's query heads (so a group's summed score is its whole term); likewise
    without GQA, where a query head is removed with its k/v rows."""
    h = ctx.grad(f"head_{term}").to(torch.float64)
    if ctx.head_mode == "group" or ctx.heads.group_size == 1:   # (without GQA a head goes with its k/v)
        g = ctx.heads.group_size
        h = h + (ctx.grad(f"kv_{term}").to(torch.float64) / g).repeat_interleave(g).to(h.device)
    return h


@register_criterion("taylor", needs_gradients=True)
def _taylor():
    """First-order Taylor (LLM-Pruner, element-wise): the unit's sum over its parameters p of
    |w_p * G_p|, G = sum over calibration batches of dL_b/dw (L_b: mean next-token cross-entropy
    of batch b, on the dense model).  FFN channel: row i of gate (if any) and up (+ bias entries),
    column i of down.  Head: its q rows (+ bias) and o columns; k/v rows are removed only with
    whole groups, so in head_mode "group" each query head also gets 1/group_size of its KV head's
    k/v term (a group's score = its full term) and in "query" mode they are left out (the same
    constant for every head of a group would not change which heads go)."""
    def ffn(ctx):
        return ctx.grad("ffn_taylor").to(torch.float64)

    def heads(ctx):
        return _grad_heads(ctx, "taylor")
    return ffn, heads


@register_criterion("fisher", needs_gradients=True)
def _fisher():
    """Second-order diagonal Fisher: 0.5 * sum over the unit's parameters of w^2 E_b[(dL_b/dw)^2]
    (the mean over calibration batches of the squared per-batch gradient; units and the k/v rule
    as for taylor)."""
    def ffn(ctx):
        return ctx.grad("ffn_fisher").to(torch.float64)

    def heads(ctx):
        return _grad_heads(ctx, "fisher")
    return ffn, heads


def _head_units(ctx):
    """How heads are eliminated: (unit width in o columns, number of units to remove or None,
    group_of, quota, expand(unit scores) -> per-query-head scores)."""
    hs = ctx.heads
    g = hs.group_size
    rm = ctx.heads_remove
    if ctx.head_mode == "group" or g == 1:  # without GQA, "query" heads go as single-head KV groups
        if rm is not None and rm % g:
            raise ValueError(f"sketchprune.prune: layer {ctx.index}: heads_remove {rm} is not a whole number "
                             f"of KV groups of {g}")
        return (g * hs.head_dim, None if rm is None else rm // g, None, None,
                lambda s: (s / g).repeat_interleave(g))
    if rm is None:
        return hs.head_dim, None, None, None, lambda s: s
    if rm % hs.num_kv_heads:
        raise ValueError(f"sketchprune.prune: layer {ctx.index}: heads_remove {rm} is not the same number "
                         f"for each of the {hs.num_kv_heads} KV groups")
    group_of = torch.arange(hs.num_heads) // g
    quota = torch.full((hs.num_kv_heads,), rm // hs.num_kv_heads, dtype=torch.long)
    return hs.head_dim, rm, group_of, quota, lambda s: s


def _greedy_scores(W, H, width, n_remove, ctx, group_of=None, quota=None):
    n = W.shape[1] // width
    order, incs, rest, rest_costs, _ = greedy_obs(
        W, H, width=width, n_remove=n_remove, block=int(ctx.options.get("block", 1)),
        damp=float(ctx.options.get("damp", 1e-2)), group_of=group_of, quota=quota)
    return order_scores(n, order, incs, rest, rest_costs)


@register_criterion("greedy", needs={"down_in": "full", "o_in": "full"})
def _greedy():
    """Greedy structured OBS (prune.greedy): units are removed one at a time, each time the one
    whose removal increases the least-squares-compensated output error E||W x - V x_kept||^2 of
    down_proj (channels) / o_proj (head column blocks) least, H = E[x x^T] damped by
    damp * mean diag (options "damp", default 1e-2; "block": units removed per step, default 1).
    Stops after ctx.ffn_remove / ctx.heads_remove removals when known (in head_mode "query"
    honouring the same count per KV group), else ranks every unit.  Score: the running maximum of
    the removal increments in removal order (strictly increasing; survivors above, by their
    increment at the final state)."""
    def ffn(ctx):
        W = ctx.ffn.down.weight.detach()        # greedy_obs works on one float64 copy of it
        H = ctx.stat("down_in").second_moment().to(W.device)
        return _greedy_scores(W, H, 1, ctx.ffn_remove, ctx).to(W.device)

    def heads(ctx):
        W = ctx.attn.o.weight.detach()
        H = ctx.stat("o_in").second_moment().to(W.device)
        width, n_rm, group_of, quota, expand = _head_units(ctx)
        return expand(_greedy_scores(W, H, width, n_rm, ctx, group_of, quota)).to(W.device)
    return ffn, heads


def head_gram(o: torch.Tensor, sigma: torch.Tensor, width: int) -> torch.Tensor:
    """D_ij = E[u_i^T u_j] for u_i = O_i z_i over column blocks of ``width``:
    the block sums of (O^T O) * E[z z^T]."""
    n = o.shape[1] // width
    return ((o.T @ o) * sigma).reshape(n, width, n, width).sum((1, 3))


@register_criterion("head-similarity", needs={"down_in": "diag", "o_in": "full"})
def _head_similarity():
    """Redundancy of heads' output contributions u_h = O_h z_h (prune.greedy): D_ij = E[u_i^T u_j]
    = tr(O_i^T O_j Sigma_ji) from the o_in second moment, c_ij = |D_ij| / sqrt(D_ii D_jj);
    heads are eliminated from the most redundant (largest max_j c_ij over surviving j; of the most
    similar pair the lower-energy one goes, its partner stays), honouring the per-KV-group count
    when ctx.heads_remove is known (head_mode "query"); in head_mode "group" whole groups
    (block sums of D).  Score: running maximum of 1 - max_j c_ij in elimination order.  FFN
    channels: sigma's score E[h_i^2] ||D[:, i]||^2 (no redundancy term)."""
    def heads(ctx):
        o = _w(ctx.attn.o)
        width, n_rm, group_of, quota, expand = _head_units(ctx)
        D = head_gram(o, ctx.stat("o_in").second_moment().to(o.device), width)
        order, incs = similarity_elimination(D, n_rm, group_of, quota)
        return expand(order_scores(D.shape[0], order, incs)).to(o.device)
    return _sigma_ffn, heads


# ---------------------------------------------------------------------------- application
@dataclass
class Scores:
    """Per-layer unit scores (float64): FFN channels and query heads."""

    criterion: str
    ffn: dict[int, torch.Tensor] = field(default_factory=dict)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise ValueError(f"sketchprune.prune: unknown criterion {name!r}; choose from "
                         f"{', '.join(sorted(CRITERIA))}") from None


def required_statistics(criterion: str) -> dict[str, str]:
    """The calibration statistics (name -> 'diag'/'full') a criterion needs; {} if data-free."""
    return dict(get_criterion(criterion).needs)


def score_model(model: nn.Module, criterion: str, stats: CalibrationStatistics | None = None,
                layers=None, seed: int = 0, grads: dict | None = None, removal: dict | None = None,
                head_mode: str = "query", options: dict | None = None) -> Scores:
    """Score every FFN channel and query head of the given layers (default: all; for criteria
    that need statistics, the layers that have them) with ``criterion``.

    ``grads``: per-layer gradient reductions from
    :func:`~sketchprune.prune.gradient_scores.gradient_statistics` (criteria with
    ``needs_gradients``).  ``removal``: per layer, the
    :class:`~sketchprune.prune.allocation.LayerRemoval` the allocation will apply (from
    :func:`~sketchprune.prune.allocation.removal_plan`); criteria that choose units jointly
    (``greedy``, ``head-similarity``) then stop at, and honour, those counts.  ``head_mode``: the
    allocation's head mode (must match ``removal``'s).  ``options``: criterion options.
    """
    crit = get_criterion(criterion)
    if head_mode not in ("query", "group"):
        raise ValueError(f"sketchprune.prune: head_mode must be 'query' or 'group', got {head_mode!r}")
    adapter = get_adapter(model)
    all_layers = adapter.layers(model)
    if crit.needs and stats is None:
        raise ValueError(f"sketchprune.prune: criterion {criterion!r} needs calibration statistics "
                         f"({crit.needs}); pass stats=collect_statistics(...)")
    if crit.needs_gradients and grads is None:
        raise ValueError(f"sketchprune.prune: criterion {criterion!r} needs gradients; "
                         "pass grads=gradient_statistics(model, batches)")
    if layers is None:
        if crit.needs:
            layers = sorted(stats.layers)
        elif crit.needs_gradients:
            layers = sorted(grads)
        else:
            layers = range(len(all_layers))
    out = Scores(criterion)
    with torch.no_grad():
        for i in layers:
            layer = all_layers[i]
            ls = None if stats is None else stats.layers.get(i)
            if crit.needs and ls is None:
                raise KeyError(f"sketchprune.prune: no calibration statistics for layer {i}")
            lg = None if grads is None else grads.get(i)
            if crit.needs_gradients and lg is None:
                raise KeyError(f"sketchprune.prune: no gradient statistics for layer {i}")
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i))
            hs = adapter.head_structure(layer)
            ffn_rm = heads_rm = None
            if removal is not None and i in removal:
                rem = removal[i]
                if rem.head_mode != head_mode:
                    raise ValueError(f"sketchprune.prune: removal for layer {i} is for head_mode "
                                     f"{rem.head_mode!r}, scoring for {head_mode!r}")
                ffn_rm = rem.ffn
                heads_rm = rem.q_per_group * hs.num_kv_heads + rem.groups * hs.group_size
            ctx = LayerContext(i, adapter.ffn(layer), adapter.attention(layer), hs, ls, g,
                               ffn_remove=ffn_rm, heads_remove=heads_rm, head_mode=head_mode, grads=lg,
                               options=dict(options or {}))
            f, h = crit.ffn(ctx), crit.heads(ctx)
            if f.shape != (ctx.d_ff,) or h.shape != (ctx.heads.num_heads,):
                raise RuntimeError(f"sketchprune.prune: criterion {criterion!r} returned scores of shapes "
                                   f"{tuple(f.shape)}, {tuple(h.shape)} for layer {i}")
            out.ffn[i], out.heads[i] = f, h
    return out
