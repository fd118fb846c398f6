"""Sequential (layer-by-layer) structured pruning with least-squares reconstruction.

One-shot pruning scores every layer on the *dense* model's activations, so once early layers are
pruned the later layers' decisions and refits were made for inputs they no longer see, and the
errors compound.  :func:`prune_sequential` prunes one decoder layer at a time on the activations
of the model pruned so far.

The inputs of the layers are recorded once (:func:`~sketchprune.prune.streams.capture_layer_inputs`),
then two streams of hidden states are kept in host memory, batch by batch and token-aligned:
the **pruned stream** (through the layers pruned so far) and, when something needs it (dense-target
refits, relative token weights, recovery, block reconstruction, or ``stream_error=True``), the
**dense stream** (through the original layers).  Per pruned layer ``i``:

1. **dense pass** -- the (still dense) layer on the dense stream: its next state, and the dense
   outputs of the Linears the refits will target (``o``, ``down``; with ``recovery`` also
   ``q, k, v, gate, up``), biases removed, kept on the host;
2. **recovery** (``recovery=True``, before scoring): q/k/v re-fit so that on the pruned-stream
   input they reproduce the dense outputs (one joint ridge fit, one Cholesky); then, on the
   re-captured attention output, o (step 3's pass);
3. **attention stage** -- one pass on the pruned stream collecting the attention-side statistics
   the criterion needs (``attn_in``, ``o_in``) and, for the refits, ``E[z z^T]``, ``E[z y_o^T]``
   of the o_proj input ``z`` against the dense o outputs (fitting and held-out batches apart);
   the heads are scored (``LayerContext.heads_remove`` set), the lowest go (uniform allocation,
   :func:`~sketchprune.prune.allocation.layer_removal`), FLAP's mean is folded into o's bias, the
   attention is sliced and o re-fit over the kept head columns toward the dense o outputs
   (:func:`~sketchprune.prune.reconstruct.fit_linear`; the kept heads' outputs do not change
   when others are removed, so the same moments restricted to the kept columns are exact);
4. **FFN stage** -- with ``recovery`` first gate/up re-fit on the re-captured FFN input, then one
   pass collecting the FFN-side statistics (``mlp_in``, ``down_in``) on the inputs the FFN will
   really see, i.e. *after* the attention was pruned (and down's moments against the dense down
   outputs); with ``recovery`` down is re-fit over all channels, then the channels are scored,
   the lowest go, FLAP folds down's bias, the FFN is sliced and down re-fit over the kept
   channels;
4b. **block reconstruction** (``recon="block"`` / ``"cross-block"``, after the closed-form
   refits): every Linear of the layer -- with ``"cross-block"`` also of the previous pruned layer
   ``j - 1``, on the pruned stream entering ``j - 1``, kept for this -- re-fit by Adam toward the
   dense stream after ``j``, early-stopped on the held-out batches
   (:mod:`~sketchprune.prune.blockrecon`); its last pass writes the new pruned stream, so step 5
   then only updates the dense stream.  Each layer is thus refined twice under
   ``"cross-block"``: with its predecessor, then with its successor;
5. **propagation** -- the pruned layer on the pruned stream; NaN/Inf anywhere raises
   :class:`~sketchprune.prune.streams.NonFiniteActivations` naming the layer.

The order makes every fit use the inputs the Linear will actually receive.  Each fit's strength
is chosen on the held-out batches (the last ``heldout_fraction``; a no-refit candidate wins when
it is better held out) and the per-layer report gives the chosen ``lambda`` and the relative
errors in-sample and held out, with and without the refit, and the relative distance of the two
streams after the layer.  Nothing is re-fit where nothing was removed and the streams agree, so
at sparsity 0 the model comes out bit-identical.  Biases of o/down are kept (the targets exclude
them), not re-fit.

Costs per pruned layer, in forward passes of one layer over the calibration tokens: 1 (dense,
only when the dense stream is kept) + the attention stage (which stops at o_proj's input, so it skips the FFN) + the FFN stage (which
stops at down_proj's input) + the propagation (on the smaller layer) -- about 3 --, plus the
re-captures of recovery (stopping at q_proj's / the FFN's input), plus the fits: per refit
Linear a few float64 Cholesky solves of size (kept inputs), independent of the token count.
Data-free criteria without reconstruction need no activations at all (and
:func:`~sketchprune.prune.prune_model` then prunes in one shot, which decides the same).
Memory: the two streams and the dense targets on the host, one layer and one batch's
activations on the model's device; checked against ``budget`` before any work.  Block
reconstruction adds, per epoch, about 3 passes over the fitting share plus one over the held-out
share (and 2 passes overall), on the device the trained block(s)' weights 5 times more and one
batch's activations kept for the backward pass, and with ``"cross-block"`` a third stream on
the host.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from .._device import same_device
from .._progress import track
from ..budget import Budget, format_bytes
from .adapters import get_adapter, layer_indices
from .allocation import Allocation, layer_plan, layer_costs, layer_removal
from .blockrecon import (EPOCHS, LR, PATIENCE, PROX, BlockRecon, block_linears, check_options, check_recon,
                         training_bytes)
from .calibration import DiagMoments, FullMoments, LayerStatistics, _as_batch
from .criteria import LayerContext, get_criterion
from .reconstruct import ALPHAS, complement, fit_linear, fold_mean_into_bias, head_columns, refit_columns
from .slicing import record_structure, resolve_heads, slice_model
from .streams import LayerInputs, capture_layer_inputs, check_finite, run_layer

FLAP_BIAS = ("create", "existing", "none")



#: the statistics in the order a layer's forward reaches them
SITE_ORDER = ("attn_in", "o_in", "mlp_in", "down_in")


class _StopLayer(Exception):
    """Raised by a hook once a statistics pass has seen everything it needs of a layer."""


def _sites(adapter, layer) -> dict[str, nn.Linear]:
    """Statistic name -> the Linear whose input it is (fresh: slicing replaces modules); for the
    FFN input the first Linear called (gate when gated)."""
    ffn, attn = adapter.ffn(layer), adapter.attention(layer)
    return {"attn_in": attn.q, "o_in": attn.o, "mlp_in": ffn.up if ffn.gate is None else ffn.gate,
            "down_in": ffn.down}


def _width(targets: dict, name: str) -> int | None:
    """The column count of the dense targets of statistic ``name`` (None when none are kept)."""
    return targets[name][0].shape[-1] if name in targets else None


def _install(linears: list[nn.Linear], V: torch.Tensor) -> None:
    """Copy the rows of V (stacked Linears' weights) back into the Linears."""
    with torch.no_grad():
        r = 0
        for lin in linears:
            n = lin.out_features
            lin.weight.copy_(V[r:r + n])
            r += n


def _full_moments(stats: dict, fits: dict) -> list:
    """The distinct accumulated FullMoments of a stage: the criterion's ``stats`` and the refits'
    (fit, held) pairs (a criterion may share a refit's object)."""
    found = {id(m): m for m in [*stats.values(), *(m for pair in fits.values() for m in pair)]}
    return [m for m in found.values() if isinstance(m, FullMoments) and m.count]


class _Pruner:
    def __init__(self, model, batches, crit, sparsity, attn_sparsity, head_mode, seed, idx, budget, progress,
                 flap_bias, reconstruct, recovery, heldout_fraction, alphas, options, grads, stat_dtype=torch.float64,
                 token_weighting="none", refit_target="local", recon="layer", block_options=None,
                 stream_error=False, device=None):
        self.model, self.crit = model, crit
        self.recon, self.block_options = recon, dict(block_options or {})
        self.prev = None        # cross-block: the pruned stream entering the previous pruned layer
        self.sparsity, self.attn_sparsity, self.head_mode, self.seed = sparsity, attn_sparsity, head_mode, seed
        self.idx, self.budget, self.progress = idx, budget, progress
        self.flap = crit.name == "flap" and flap_bias != "none"
        self.flap_create = flap_bias == "create"
        self.reconstruct, self.recovery, self.alphas, self.options = reconstruct, recovery, alphas, options
        self.grads, self.stat_dtype = grads, stat_dtype
        self.token_weighting, self.refit_target = token_weighting, refit_target
        self.adapter = get_adapter(model)
        self.layers = self.adapter.layers(model)
        # where the model lives, and where its layers are pruned: when they differ (a model in host
        # memory pruned on an accelerator) each decoder layer is moved there for its turn and back
        # after it (sequential on-loading), so the device holds one layer, its statistics and one
        # batch's activations
        self.home = next(model.parameters()).device
        self.device = self.home if device is None else torch.device(device)
        self.onload = not same_device(self.device, self.home)
        self.host = torch.device("cpu")
        # the dense model's Linear outputs are targets of the dense-target refits, of the
        # relative token weights and of recovery; the dense stream itself is needed for those, for
        # block reconstruction (its target) and to report how far the pruned stream drifted
        self.need_targets = recovery or (reconstruct and (refit_target == "dense" or token_weighting != "none"))
        self.track_dense = self.need_targets or recon != "layer" or bool(stream_error)
        self.refits = reconstruct or recovery or recon != "layer"
        # whether any decision depends on activations (else no stream is needed at all)
        self.needs_data = bool(crit.needs) or self.track_dense or self.refits or self.flap
        self.batches = list(batches)
        n = len(self.batches)
        if self.refits:
            if n < 2:
                raise ValueError("sketchprune.prune: reconstruct/recovery need at least 2 calibration batches "
                                 "(some are held out to choose the regularisation)")
            n_h = min(n - 1, max(1, round(n * heldout_fraction)))
        else:
            n_h = 0
        self.held = [b >= n - n_h for b in range(n)]
        self.removal = {i: layer_removal(layer_costs(self.adapter, self.layers[i]), sparsity, attn_sparsity, head_mode)
                        for i in idx}
        self.folded: list[str] = []
        self.names = {id(m): nm for nm, m in model.named_modules()}

    # ------------------------------------------------------------------ memory plan
    def memory_plan(self) -> tuple[dict, dict]:
        """Bytes needed on the host and on the device (see the module doc), by component."""
        shapes = [_as_batch(b, "cpu")[0]["input_ids"].shape for b in self.batches]
        rows = sum(s.numel() for s in shapes)
        max_rows = max(s.numel() for s in shapes)
        max_b, max_t = max(s[0] for s in shapes), max(s[-1] for s in shapes)
        p0 = next(self.model.parameters())
        item = p0.element_size()
        worst = {}
        for i in self.idx:
            layer = self.layers[i]
            ffn, attn, hs = self.adapter.ffn(layer), self.adapter.attention(layer), self.adapter.head_structure(layer)
            d, d_ff, d_att = attn.q.in_features, ffn.up.out_features, attn.o.in_features
            d_qkv = attn.q.out_features + attn.k.out_features + attn.v.out_features
            d_first = sum(m.out_features for m in ffn.first)
            tgt = (attn.o.out_features + ffn.down.out_features) if self.need_targets else 0
            # Statistics: one stage (attention, then FFN) at a time, each full moment held as a
            # float64 total for the fitting and (with refits) the held-out tokens, plus a float32
            # kernel workspace of the same shape while accumulating (freed before the criterion
            # and the solves run, see _collect).  Entries: d_in x (d_in + target columns).
            copies = 2 if self.refits else 1
            t_o, t_down = (attn.o.out_features, ffn.down.out_features) if self.need_targets else (0, 0)
            entries = max(d_att * (d_att + t_o) + d * d, d_ff * (d_ff + t_down) + d * d)
            if self.recovery:
                tgt += d_qkv + d_first
                entries += d * (d + max(d_qkv, d_first))
            stat = copies * 8 * entries
            # Workspace after accumulation: the criterion's (greedy: the damped inverse and its
            # Cholesky factor, n x n float64 each, and a float64 copy of the weight; a compaction
            # briefly holds a second, smaller inverse) or the refit's (restricted moments, one
            # Cholesky factor, a few d_out x |K| solutions) -- at most three n x n float64 arrays
            # plus the layer's weights in float64; before that, the float32 workspace.
            n_max = max(d_ff, d_att)
            work = max(8 * 3 * n_max * n_max + 8 * d * n_max, copies * 4 * entries)
            block = sum(p.numel() for p in layer.parameters()) * item + work
            act = max_rows * (3 * d_ff + 8 * d + d_qkv) * item + max_b * hs.num_heads * max_t * max_t * item
            cand = {"dense targets": rows * tgt * item, "statistics": stat, "block workspace": block,
                    "one batch's activations": act}
            if self.recon != "layer":
                n_blk = 2 if self.recon == "cross-block" else 1
                n_par = sum(p.numel() for lin in block_linears(self.adapter, layer) for p in lin.parameters())
                # half-precision blocks train on a float32 copy (activations in float32 too) and
                # keep their half-precision originals
                t_item = max(item, 4)
                upcast = n_blk * sum(p.numel() for p in layer.parameters()) * (t_item + item) if item < 4 else 0
                cand["block training (gradients, Adam moments, weight copies, backward activations)"] = \
                    training_bytes(n_blk * n_par, t_item, n_blk * act * t_item // item) + (n_blk - 1) * block + upcast
            for k, v in cand.items():
                worst[k] = max(worst.get(k, 0), v)
        n_streams = (2 if self.track_dense else 1) if self.needs_data else 0
        if self.recon == "cross-block":
            n_streams += 1          # the pruned stream entering the previous layer
        if not self.needs_data:
            worst = {"dense targets": 0, "block workspace": worst["block workspace"]}
        first = self.layers[self.idx[0]]
        hidden, head_dim = self.adapter.attention(first).q.in_features, self.adapter.head_structure(first).head_dim
        host = {"hidden-state streams": (n_streams * rows + max_rows) * hidden * item,
                # a (B, 1, T, T) mask and rotary (B, T, head_dim) cos/sin per batch, at most
                "layer arguments (estimate)": sum(s[0] * s[-1] * (s[-1] + 2 * head_dim) for s in shapes) * item,
                "dense targets": worst.pop("dense targets")}
        return host, worst

    def check_budget(self, first: int, last: int) -> None:
        host, dev = self.memory_plan()
        budget = Budget.of(self.budget)
        what = (f"sequential pruning of layers {first}..{last} on {len(self.batches)} calibration batches "
                f"({'; '.join(f'{k} {format_bytes(v)}' for k, v in {**host, **dev}.items())})")
        if self.device.type == "cpu":
            budget.check("cpu", sum(host.values()) + sum(dev.values()), what)
        else:
            budget.check(self.device, sum(dev.values()), what)
            Budget(None).check("cpu", sum(host.values()), what + " [host memory]")

    # ------------------------------------------------------------------ passes
    def _pass(self, layer, j, stream, which, pre=None, post=None, out=None, stop=None):
        """Run layer ``j`` on every batch of ``stream``; ``pre``/``post``: module -> fn(tensor, b)
        called with the module's input / output; outputs written into list ``out`` if given;
        ``stop``: a module at whose input the layer's forward is abandoned (after the hooks)."""
        state = {"b": 0}
        handles = []
        for mod, fn in (pre or {}).items():
            handles.append(mod.register_forward_pre_hook(lambda m, a, fn=fn: fn(a[0], state["b"])))
        for mod, fn in (post or {}).items():
            handles.append(mod.register_forward_hook(lambda m, a, o, fn=fn: fn(o, state["b"])))
        if stop is not None:
            def halt(m, a):
                raise _StopLayer
            handles.append(stop.register_forward_pre_hook(halt))
        try:
            with torch.no_grad():
                for b in range(len(stream)):
                    state["b"] = b
                    try:
                        y = run_layer(layer, stream[b], self.inputs.calls[j][b], self.device, self.inputs.masks[b],
                                      f"the output of decoder layer {j} ({which} stream, calibration batch {b})")
                    except _StopLayer:
                        continue
                    if out is not None:
                        out[b] = y.to(self.host)
        finally:
            for h in handles:
                h.remove()
        return out

    def _moments(self, site_mod, target_dim):
        """(fit, held) FullMoments of the input of ``site_mod`` with targets of ``target_dim``
        columns (None: second moments only, for the local-target refits)."""
        return tuple(FullMoments(site_mod.in_features, self.device, self.budget, self.stat_dtype, cross_dim=target_dim,
                                 stage_rows=0) for _ in range(2))

    def _collect(self, layer, j, wants: dict, fits: dict, targets: dict) -> dict:
        """One pruned-stream pass.  ``wants``: statistic -> kind for the criterion (fitting batches);
        ``fits``: statistic -> (fit, held) FullMoments with targets; ``targets``: statistic -> per-batch
        dense targets.  Returns statistic -> moments object for the criterion."""
        sites = _sites(self.adapter, layer)
        crit_stats = {}
        weighted = self.token_weighting != "none"
        for name, kind in wants.items():
            if name in fits and not weighted:
                crit_stats[name] = fits[name][0]      # a FullMoments serves any criterion kind
            else:
                m = sites[name]
                crit_stats[name] = (FullMoments(m.in_features, self.device, self.budget, self.stat_dtype, stage_rows=0)
                                    if kind == "full" else DiagMoments(m.in_features, self.device))
        pre = {}
        names = sorted(set(crit_stats) | set(fits), key=SITE_ORDER.index)
        for name in names:
            def fn(x, b, name=name):
                mask = self.inputs.masks[b]
                check_finite(x, mask, f"the input of {name} in decoder layer {j} (pruned stream, calibration batch {b})")
                if name in fits:
                    y = targets[name][b].to(x.device) if name in targets else None
                    if weighted:     # token t weighted by 1 / ||y_t||: every token's relative error counts alike
                        if name in crit_stats and not self.held[b]:
                            crit_stats[name].update(x, mask)
                        n = y.to(torch.float64).square().sum(-1, keepdim=True).sqrt()
                        w = torch.where(n > 0, 1.0 / n, torch.zeros_like(n))
                        x, y = x * w.to(x.dtype), y * w.to(y.dtype)
                    fits[name][1 if self.held[b] else 0].update(x, mask, y=y)
                elif not self.held[b]:
                    crit_stats[name].update(x, mask)
            pre[sites[name]] = fn
        if pre:
            self._pass(layer, j, self.pruned, "pruned", pre=pre, stop=sites[names[-1]])
        # the pass is complete: fold the full moments into their float64 totals now, so their
        # float32 kernel workspaces are freed before the criterion and the refits run
        for m in _full_moments(crit_stats, fits):
            m.finish()
        return crit_stats

    def _fit(self, linears, keep, moments, name, report, section, release=False):
        """Re-fit the stacked weight of ``linears`` over input columns ``keep``; install if chosen."""
        W = torch.cat([lin.weight.detach() for lin in linears], 0)
        V, info = fit_linear(W, keep, moments[0], moments[1], self.alphas, release=release)
        if info["refit"]:
            _install(linears, V)
        report.setdefault(section, {})[name] = info
        return info["refit"]

    def _refit(self, linears, full, keep, moments, name, rep, release=False):
        """Post-pruning refit over ``keep``: toward the dense outputs, or (``refit_target="local"``)
        toward this layer's own unpruned output ``full @ x`` on the same pruned-stream inputs.
        ``release``: the statistics are not read again, so their full arrays may go before the solves."""
        if full is None:
            return self._fit(linears, keep, moments, name, rep, "refit", release=release)
        V, info = refit_columns(full, keep, moments[0], moments[1], self.alphas, release=release)
        if info["refit"]:
            _install(linears, V)
        rep.setdefault("refit", {})[name] = info
        return info["refit"]

    def _ctx(self, j, layer, stats, rem, costs, generator):
        hs = self.adapter.head_structure(layer)
        return LayerContext(j, self.adapter.ffn(layer), self.adapter.attention(layer), hs,
                            LayerStatistics(j, **stats), generator, ffn_remove=rem.ffn,
                            heads_remove=rem.query_heads(costs), head_mode=self.head_mode,
                            grads=None if self.grads is None else self.grads.get(j), options=dict(self.options))

    def _scores(self, j, fn, ctx, n, what):
        s = fn(ctx)
        if s.shape != (n,) or not bool(torch.isfinite(s).all()):
            raise ValueError(f"sketchprune.prune: criterion {self.crit.name!r} gave {what} scores of shape "
                             f"{tuple(s.shape)} (expected ({n},), all finite) for layer {j}")
        return s

    def _fold(self, linear, removed, mean):
        had = linear.bias is not None
        if fold_mean_into_bias(linear, removed, mean, self.flap_create):
            self.folded.append(self.names.get(id(linear), "?") + ("" if had else " (created)"))

    # ------------------------------------------------------------------ one layer
    def prune_layer(self, j: int) -> dict:
        t0 = time.perf_counter()
        layer, ad = self.layers[j], self.adapter
        costs, rem = layer_costs(ad, layer), self.removal[j]
        identical = self.dense is self.pruned
        rep: dict = {"layer": j}
        targets: dict = {}
        new_dense = None
        if self.track_dense:      # 1. dense pass: next dense state + dense Linear outputs (no bias)
            ffn, attn = ad.ffn(layer), ad.attention(layer)
            lins = {"o": attn.o, "down": ffn.down} if self.need_targets else {}
            if self.recovery:
                lins.update(q=attn.q, k=attn.k, v=attn.v, up=ffn.up)
                if ffn.gate is not None:
                    lins["gate"] = ffn.gate
            store = {k: [None] * len(self.dense) for k in lins}

            def keeper(k, lin):
                def fn(y, b):
                    y = y if lin.bias is None else y - lin.bias
                    store[k][b] = y.detach().to(self.host)
                return fn
            new_dense = self.dense if not identical else [None] * len(self.dense)
            self._pass(layer, j, self.dense, "dense", post={lin: keeper(k, lin) for k, lin in lins.items()},
                       out=new_dense)
            targets = {"o_in": store["o"], "down_in": store["down"]} if self.need_targets else {}
            if self.recovery:
                targets["attn_in"] = [torch.cat([store[k][b] for k in ("q", "k", "v")], -1) for b in range(len(new_dense))]
                firsts = [k for k in ("gate", "up") if k in store]
                targets["mlp_in"] = [torch.cat([store[k][b] for k in firsts], -1) for b in range(len(new_dense))]
            del store
        changed = False
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(j))
        needs = self.crit.needs
        recover = self.recovery and not identical
        heads_rm, ffn_rm = rem.query_heads(costs), rem.ffn

        # 2. recovery of q/k/v
        if recover:
            a = ad.attention(layer)
            fits = {"attn_in": self._moments(a.q, targets["attn_in"][0].shape[-1])}
            self._collect(layer, j, {}, fits, targets)
            changed |= self._fit([a.q, a.k, a.v], None, fits["attn_in"], "qkv", rep, "recovery")
            del fits

        # 3. attention stage
        want = {k: v for k, v in needs.items() if k in ("attn_in", "o_in")}
        if self.flap and heads_rm:
            want.setdefault("o_in", "diag")
        fits = {}
        if (self.reconstruct and heads_rm) or recover:
            fits["o_in"] = self._moments(ad.attention(layer).o, _width(targets, "o_in"))
        stats = self._collect(layer, j, want, fits, targets)
        if recover:
            changed |= self._fit([ad.attention(layer).o], None, fits["o_in"], "o", rep, "recovery")
        hs0 = ad.head_structure(layer)
        h_scores = self._scores(j, self.crit.heads, self._ctx(j, layer, stats, rem, costs, gen), hs0.num_heads, "head")
        head_plan = layer_plan(j, costs, torch.zeros(costs.ffn_units, dtype=torch.float64), h_scores, rem).heads
        if heads_rm:
            cols = head_columns(resolve_heads(head_plan, hs0).q_heads, hs0.head_dim)
            if self.flap:
                self._fold(ad.attention(layer).o, complement(hs0.num_heads * hs0.head_dim, cols), stats["o_in"].mean())
            o_full = ad.attention(layer).o.weight.detach().clone() if self.refit_target == "local" else None
            slice_model(self.model, heads={j: head_plan})
            changed = True
            if self.reconstruct:
                self._refit([ad.attention(layer).o], o_full, cols, fits["o_in"], "o", rep)
        # the attention stage's full moments are read no more (the FFN criteria use their own
        # statistics): free them before the FFN stage, which the memory plan counts alone
        for m in _full_moments(stats, fits):
            m.release()
        attn_stats = {k: v for k, v in stats.items()}
        del fits

        # 4. FFN stage
        recover_mlp = self.recovery and (changed or not identical)
        if recover_mlp:
            f = ad.ffn(layer)
            fits = {"mlp_in": self._moments(f.up, targets["mlp_in"][0].shape[-1])}
            self._collect(layer, j, {}, fits, targets)
            changed |= self._fit(list(f.first), None, fits["mlp_in"], "gate_up", rep, "recovery")
        want = {k: v for k, v in needs.items() if k in ("mlp_in", "down_in")}
        if self.flap and ffn_rm:
            want.setdefault("down_in", "diag")
        fits = {}
        if (self.reconstruct and ffn_rm) or recover_mlp:
            fits["down_in"] = self._moments(ad.ffn(layer).down, _width(targets, "down_in"))
        stats = self._collect(layer, j, want, fits, targets)
        if recover_mlp:
            changed |= self._fit([ad.ffn(layer).down], None, fits["down_in"], "down", rep, "recovery")
        ctx = self._ctx(j, layer, {**attn_stats, **stats}, rem, costs, gen)
        f_scores = self._scores(j, self.crit.ffn, ctx, costs.ffn_units, "FFN")
        plan = layer_plan(j, costs, f_scores, h_scores, rem)
        if ffn_rm:
            if self.flap:
                self._fold(ad.ffn(layer).down, complement(costs.ffn_units, plan.ffn_keep), stats["down_in"].mean())
            down_full = ad.ffn(layer).down.weight.detach().clone() if self.refit_target == "local" else None
            slice_model(self.model, ffn={j: plan.ffn_keep})
            changed = True
            if self.reconstruct:
                self._refit([ad.ffn(layer).down], down_full, plan.ffn_keep, fits["down_in"], "down", rep,
                            release=True)
        del fits, stats, attn_stats, targets

        # 4b. block / cross-block reconstruction (writes the new pruned stream itself)
        propagated = self.recon != "layer" and self._block_recon(j, layer, identical, changed, new_dense, rep)

        # 5. propagation
        if self.needs_data:
            self._propagate(layer, j, identical, changed, new_dense, rep, propagated)
        rep["plan"] = plan
        rep["seconds"] = time.perf_counter() - t0
        return rep

    @contextlib.contextmanager
    def _loaded(self, *js):
        """With on-loading, decoder layers ``js`` on the pruning device for the block, then back
        home (also on an error, so the model is never left split across devices)."""
        if not self.onload:
            yield
            return
        try:
            for j in js:
                self.layers[j].to(self.device)
            yield
        finally:
            for j in js:
                self.layers[j].to(self.home)

    def _block_recon(self, j, layer, identical, changed, new_dense, rep) -> bool:
        """Re-fit layer ``j`` -- with ``recon="cross-block"`` jointly with layer ``j - 1`` when that
        one was pruned just before -- toward the dense stream after ``j`` (``new_dense``), by
        :class:`~sketchprune.prune.blockrecon.BlockRecon`, which writes the new pruned stream (and,
        for a pair, the new stream entering ``j``, kept as ``self.prev`` for the next pair).
        Skipped, like every refit, when nothing was removed and the streams agree.  Returns
        whether it ran (the pruned stream is then already propagated)."""
        cross = self.recon == "cross-block"
        pair = cross and self.prev is not None and (j - 1) in self.removal
        if identical and not changed:
            if cross:
                self.prev = list(self.pruned)
            return False
        if cross and not pair:
            self.prev = list(self.pruned)       # the input of j, before the refit overwrites the stream
        first = j - 1 if pair else j
        blocks = [self.layers[k] for k in range(first, j + 1)]
        br = BlockRecon(blocks, [self.inputs.calls[k] for k in range(first, j + 1)],
                        [lin for blk in blocks for lin in block_linears(self.adapter, blk)],
                        self.prev if pair else self.pruned, new_dense, self.inputs.masks, self.held, self.device,
                        seed=int(self.seed) * 1_000_003 + int(j), token_weighting=self.token_weighting,
                        progress=self.progress, host=self.host,
                        where=f"decoder layers {first}..{j}" if pair else f"decoder layer {j}", **self.block_options)
        with self._loaded(*([first] if pair else [])):     # layer j is on the device already
            info = br.run(write=[self.prev, self.pruned] if pair else [self.pruned])
        rep["block_recon"] = {"mode": "cross-block" if pair else "block", "layers": list(range(first, j + 1)), **info}
        return True

    def _propagate(self, layer, j, identical, changed, new_dense, rep, propagated=False):
        if self.track_dense and new_dense is None:           # an unpruned layer between pruned ones
            new_dense = self.dense if not identical else [None] * len(self.dense)
            self._pass(layer, j, self.dense, "dense", out=new_dense)
        if self.track_dense and identical and not changed:
            self.pruned = self.dense = new_dense             # nothing differs: one stream
            rep["stream_rel_error"] = 0.0
            return
        if not propagated:
            self._pass(layer, j, self.pruned, "pruned", out=self.pruned)
        if self.track_dense:
            self.dense = new_dense
            num = den = 0.0
            for b, (p, d) in enumerate(zip(self.pruned, self.dense)):
                m = self.inputs.masks[b]
                diff, ref = (p - d), d
                if m is not None:
                    diff, ref = diff[m], ref[m]
                num += float(diff.double().square().sum())
                den += float(ref.double().square().sum())
            rep["stream_rel_error"] = (num / den) ** 0.5 if den > 0 else 0.0

    # ------------------------------------------------------------------ driver
    def run(self) -> tuple[list[dict], dict]:
        first, last = min(self.idx), max(self.idx)
        t0 = time.perf_counter()
        if self.needs_data:
            self.inputs = capture_layer_inputs(self.model, self.layers, self.batches, first, last, self.host)
        else:
            self.inputs = LayerInputs(first, last, [None] * len(self.batches), tokens=[0] * len(self.batches))
        for b, h in enumerate(self.inputs.hidden if self.needs_data else []):
            check_finite(h, self.inputs.masks[b], f"the input of decoder layer {first} (calibration batch {b})")
        self.pruned = self.inputs.hidden
        self.dense = self.pruned if self.track_dense else None
        t_cap = time.perf_counter() - t0
        reports = []
        todo = set(self.idx)
        was_training = self.model.training
        self.model.eval()
        try:
            for j in track(range(first, last + 1), self.progress, "sequential pruning"):
                if j not in todo and not (j < last and self.needs_data):
                    continue
                with self._loaded(j):
                    if j in todo:
                        reports.append(self.prune_layer(j))
                    else:
                        self.prev = None        # cross-block pairs are two consecutive pruned layers
                        self._propagate(self.layers[j], j, self.dense is self.pruned, False, None, {})
        finally:
            self.model.train(was_training)
        return reports, {"capture": t_cap, "layers": time.perf_counter() - t0 - t_cap}


def _layer_report(r: dict, costs) -> dict:
    plan = r.pop("plan")
    out = plan.as_dict(costs)
    out.update(kept_channels=int(plan.ffn_keep.numel()), kept_heads=plan.q_heads_kept,
               kept_kv_heads=plan.kv_heads_kept)
    refit = r.get("refit", {})
    out["lambda"] = {k: v.get("lambda") for k, v in refit.items()}
    out["recon_rel_error"] = {k: v["fit_error"] for k, v in refit.items()}
    out["heldout_rel_error"] = {k: v.get("eval_error") for k, v in refit.items()}
    out["no_refit_rel_error"] = {k: v["fit_error_none"] for k, v in refit.items()}
    out["no_refit_heldout_rel_error"] = {k: v.get("eval_error_none") for k, v in refit.items()}
    for k in ("refit", "recovery", "block_recon", "stream_rel_error", "seconds"):
        if k in r:
            out[k] = r[k]
    return out


def prune_sequential(model: nn.Module, batches, sparsity: float = 0.2, criterion: str = "sigma",
                     attn_sparsity: float | None = None, head_mode: str = "query", seed: int = 0, layers=None,
                     budget=None, progress: bool = True, flap_bias: str = "create", reconstruct: bool = False,
                     recovery: bool = False, heldout_fraction: float = 0.25, alphas=ALPHAS,
                     criterion_options: dict | None = None, stat_dtype: torch.dtype = torch.float64,
                     token_weighting: str = "none", refit_target: str = "local", recon: str = "layer",
                     recon_epochs: int = EPOCHS, recon_lr: float = LR, recon_prox: float = PROX,
                     recon_patience: int = PATIENCE, stream_error: bool = False, device=None) -> dict:
    """Prune ``model`` in place one decoder layer at a time (see the module doc); returns a report.

    Arguments as for :func:`~sketchprune.prune.prune_model`; ``recovery``: re-fit each layer's
    Linears toward the dense outputs before scoring it; ``alphas``: the candidate regularisation
    strengths (relative to the mean input energy); ``stat_dtype``: the dtype the second and cross
    moments are accumulated in (float32 is faster; the solves are always float64);
    ``token_weighting``: ``"none"`` (the least-squares objectives of the module doc) or
    ``"relative"`` (token ``t`` weighted by ``1/||y*_t||``, so the few tokens with massive
    activations -- e.g. the first token of every sequence from SmolLM2's layer 11 on, ~98% of the
    hidden-state energy -- do not decide the fit alone; the reported errors are then weighted
    the same way); ``refit_target``: ``"local"`` (default: the layer's own output before this
    layer was pruned, ``W x`` on the same pruned-stream inputs -- the one-shot refit of
    :func:`~sketchprune.prune.reconstruct.refit_columns` on the sequential statistics) or
    ``"dense"`` (the dense model's outputs, module doc).  Why ``"local"`` is the default: on
    SmolLM2 the first token of every sequence carries a massive activation from layer 11 on (~98%
    of the hidden-state energy) and the pruned stream drifts ~65% from the dense one there, so a
    fit toward the dense outputs is decided by that token alone (20% sigma: held-out perplexity
    106.5 with ``"dense"`` vs 34.0 with ``"local"``, dense model 16.1).  Raises
    :class:`~sketchprune.BudgetError` before any work when the streams, targets, statistics and
    one layer's activations cannot fit ``budget``.

    ``recon``: ``"layer"`` (default: the closed-form per-Linear refits only), ``"block"`` (then
    each pruned layer's Linears are all re-fit by Adam toward the dense stream after it,
    :mod:`~sketchprune.prune.blockrecon`) or ``"cross-block"`` (layer ``j`` jointly with the
    previous pruned layer ``j - 1``, input the pruned stream before ``j - 1``; the first pruned
    layer, or one after an unpruned layer, is re-fit alone).  Both imply ``reconstruct=True``
    and run after the closed-form refits, which give the Adam fit its starting point.
    ``recon_epochs``, ``recon_lr`` (relative to each weight's RMS), ``recon_prox`` (pull toward
    the starting weights), ``recon_patience``: see :class:`~sketchprune.prune.blockrecon.BlockRecon`.

    ``stream_error``: also run the dense stream when nothing else needs it, to report per layer
    ``stream_rel_error`` (the pruned stream's relative distance from the dense one).  With the
    default local-target refits and no recovery or block reconstruction the dense stream is not
    needed, and leaving it out saves one layer forward per layer (about a third of the passes);
    otherwise the error is reported anyway.

    ``device``: where the layers are pruned (default: where the model is).  Another device than
    the model's -- a model in host memory pruned on a GPU -- means sequential on-loading: each
    decoder layer is moved to ``device`` for its turn and back afterwards, so the device holds one
    layer, its statistics and one batch's activations (what ``budget`` is checked against), and the
    model (embeddings, other layers) stays where it is.  What runs the whole model runs where it
    is: the capture of the first pruned layer's inputs (the embeddings and any layers before it)
    and the gradients of the ``taylor`` / ``fisher`` criteria (a forward and backward of the whole
    model per calibration batch -- slow for a large model in host memory).
    """
    t0 = time.perf_counter()
    crit = get_criterion(criterion)
    check_recon(recon)
    block_options = {}
    if recon != "layer":
        check_options(recon_epochs, recon_lr, recon_prox, recon_patience)
        reconstruct = True
        block_options = {"epochs": recon_epochs, "lr": recon_lr, "prox": recon_prox, "patience": recon_patience}
    if flap_bias not in FLAP_BIAS:
        raise ValueError(f"sketchprune.prune: flap_bias must be one of {FLAP_BIAS}, got {flap_bias!r}")
    if reconstruct and criterion == "flap" and flap_bias != "none":
        raise ValueError("sketchprune.prune: reconstruct=True re-fits the weights itself; use flap_bias='none' with it")
    if refit_target not in ("dense", "local"):
        raise ValueError(f"sketchprune.prune: refit_target must be 'dense' or 'local', got {refit_target!r}")
    if token_weighting not in ("none", "relative"):
        raise ValueError(f"sketchprune.prune: token_weighting must be 'none' or 'relative', got {token_weighting!r}")
    if not 0.0 < float(heldout_fraction) < 1.0:
        raise ValueError(f"sketchprune.prune: heldout_fraction must be in (0, 1), got {heldout_fraction}")
    if batches is None:
        raise ValueError("sketchprune.prune: sequential pruning needs calibration batches")
    batches = list(batches)
    if not batches:
        raise ValueError("sketchprune.prune: no calibration batches")
    adapter = get_adapter(model)
    n_layers = len(adapter.layers(model))
    idx = layer_indices(n_layers, layers)
    if not idx:
        raise IndexError("sketchprune.prune: no layers to prune")
    pr = _Pruner(model, batches, crit, sparsity, attn_sparsity, head_mode, seed, idx, budget, progress, flap_bias,
                 reconstruct, recovery, heldout_fraction, alphas, criterion_options or {}, None, stat_dtype,
                 token_weighting, refit_target, recon, block_options, stream_error, device)
    pr.check_budget(min(idx), max(idx))
    if getattr(crit, "needs_gradients", False):     # on the dense model, before anything changes
        from .gradient_scores import gradient_statistics
        fit = [b for b, h in zip(pr.batches, pr.held) if not h]
        pr.grads = gradient_statistics(model, fit, layers=idx, progress=progress)
    costs = {i: layer_costs(adapter, pr.layers[i]) for i in idx}
    params_before = sum(p.numel() for p in model.parameters())
    reports, secs = pr.run()
    record_structure(model, adapter)  # biases FLAP created after a layer was sliced (see slicing)
    plans = {r["layer"]: r["plan"] for r in reports}
    alloc = Allocation(layers=plans, costs=costs, sparsity=float(sparsity),
                       attn_sparsity=float(sparsity if attn_sparsity is None else attn_sparsity), head_mode=head_mode)
    layer_reports = [_layer_report(r, costs[r["layer"]]) for r in reports]
    fit_tokens = sum(t for t, h in zip(pr.inputs.tokens, pr.held) if not h)
    return {
        "criterion": criterion, "head_mode": head_mode, "sequential": True,
        "reconstruct": reconstruct, "recovery": recovery, "recon": recon, "recon_options": block_options or None,
        "sparsity_requested": alloc.sparsity, "attn_sparsity_requested": alloc.attn_sparsity,
        "sparsity_achieved": alloc.achieved(),
        "block_params_before": alloc.params_before, "block_params_after": alloc.params_after,
        "params_before": params_before, "params_after": sum(p.numel() for p in model.parameters()),
        "layers": layer_reports,
        "calibration_tokens": fit_tokens, "calibration_batches": pr.held.count(False) if pr.needs_data else 0,
        "heldout_tokens": sum(pr.inputs.tokens) - fit_tokens, "heldout_batches": pr.held.count(True),
        "biases_folded": pr.folded,
        "reconstruction": {r["layer"]: r["refit"] for r in reports if r.get("refit")},
        "seconds": {**secs, "total": time.perf_counter() - t0},
    }
