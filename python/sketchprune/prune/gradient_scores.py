"""Gradient statistics of the prunable units, for the first- and second-order Taylor criteria.

:func:`gradient_statistics` runs calibration batches through the **dense** model with the
language-model loss (next-token for causal LMs, same-position for masked-LM encoders) and
reduces the gradients of each decoder layer's Linears to one number per unit
as soon as autograd produces them.  Per layer it returns (float64, on the weights' device):

* ``ffn_taylor`` (d_ff,), ``head_taylor`` (H,), ``kv_taylor`` (KV,) -- the first-order term of
  LLM-Pruner, element-wise and summed over the unit's parameters:
  ``sum_{p in unit} |w_p * G_p|`` with ``G = sum_b dL_b/dw`` the gradient summed over the
  calibration batches (``L_b`` the mean next-token cross-entropy of batch ``b``);
* ``ffn_fisher``, ``head_fisher``, ``kv_fisher`` -- the diagonal-Fisher second-order term
  ``0.5 * (1/B) sum_b sum_{p in unit} (w_p * dL_b/dw_p)^2`` (= ``0.5 * w^2 * E[g^2]`` summed over
  the unit, the expectation taken over the ``B`` batches);
* ``batches`` (a 0-d tensor): ``B``.

Units: FFN channel ``i`` = row ``i`` of gate (when the FFN has one) and up, their bias entries,
and column ``i`` of down; query head ``h`` = its ``head_dim`` rows of q (+ bias entries) and its
``head_dim`` columns of o; KV head ``k`` = its rows of k and v (+ biases).  The down/o biases
belong to no unit (they are never removed).

Memory: the Fisher terms are reduced per batch and never keep a gradient; the Taylor term needs
the gradient *sum* element-wise, so one float32 buffer (float64 for float64 weights) the size of
the hooked layers' Linear weights is kept -- ``what=("fisher",)`` skips it.  Each parameter's
``.grad`` is released as soon as it has been reduced, so the model's gradients never all exist
at once beyond that buffer.  Only the hooked Linears' parameters require gradients during the
pass (earlier layers' activations still carry the graph only from the first hooked layer on);
``requires_grad`` flags, existing ``.grad`` tensors and the training flag are restored on exit,
even on error.  No parameter is modified.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import get_adapter, layer_indices
from .._progress import track
from .calibration import _as_batch
from .streams import NonFiniteActivations, finite_output_hooks

GRADIENT_TERMS = ("taylor", "fisher")


def _reducers(adapter, layer):
    """[(param, unit kind, reduce(elementwise tensor) -> (n_units,))] for one decoder layer."""
    ffn, attn, hs = adapter.ffn(layer), adapter.attention(layer), adapter.head_structure(layer)
    H, KV, hd = hs.num_heads, hs.num_kv_heads, hs.head_dim
    out = []
    for lin in (ffn.gate, ffn.up):
        if lin is None:
            continue
        out.append((lin.weight, "ffn", lambda e: e.sum(1)))
        if lin.bias is not None:
            out.append((lin.bias, "ffn", lambda e: e))
    out.append((ffn.down.weight, "ffn", lambda e: e.sum(0)))
    out.append((attn.q.weight, "head", lambda e: e.reshape(H, -1).sum(1)))
    if attn.q.bias is not None:
        out.append((attn.q.bias, "head", lambda e: e.reshape(H, hd).sum(1)))
    out.append((attn.o.weight, "head", lambda e: e.reshape(e.shape[0], H, hd).sum((0, 2))))
    for lin in (attn.k, attn.v):
        out.append((lin.weight, "kv", lambda e: e.reshape(KV, -1).sum(1)))
        if lin.bias is not None:
            out.append((lin.bias, "kv", lambda e: e.reshape(KV, hd).sum(1)))
    return out, {"ffn": ffn.up.out_features, "head": H, "kv": KV}


def causal_lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean next-token cross-entropy (float32, float64 for float64 logits) over the positions whose
    input and target tokens are both unmasked."""
    lg = logits[:, :-1]
    if lg.dtype != torch.float64:
        lg = lg.float()
    tgt = input_ids[:, 1:]
    valid = torch.ones_like(tgt, dtype=torch.bool) if mask is None else (mask[:, 1:] & mask[:, :-1])
    if not valid.any():
        raise ValueError("sketchprune.prune: a calibration batch has no (input, next token) pair to score")
    return F.cross_entropy(lg[valid], tgt[valid])


def lm_loss(model: nn.Module, out, input_ids: torch.Tensor, mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The language-model loss of a calibration batch: next-token cross-entropy for causal LMs,
    for masked-LM encoders the cross-entropy of each (unmasked, uncorrupted) position's own token.
    A model without a language-model head (``BertModel``, ``LlamaModel``: no ``.logits``) is
    refused: the gradient criteria need a loss."""
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise ValueError(
            f"sketchprune.prune: the gradient criteria (taylor, fisher) need the language-model loss, but "
            f"{type(model).__name__} returns no vocabulary logits (a bare backbone): load the model with its "
            "language-model head (e.g. AutoModelForCausalLM, or ...ForMaskedLM for BERT encoders)")
    if causal:
        return causal_lm_loss(logits, input_ids, mask)
    lg = logits if logits.dtype == torch.float64 else logits.float()
    valid = torch.ones_like(input_ids, dtype=torch.bool) if mask is None else mask
    if not valid.any():
        raise ValueError("sketchprune.prune: a calibration batch has no unpadded token to score")
    return F.cross_entropy(lg[valid], input_ids[valid])


def gradient_statistics(model: nn.Module, batches: Iterable, layers=None, progress: bool = True,
                        what=GRADIENT_TERMS) -> dict[int, dict[str, torch.Tensor]]:
    """Per-unit first-order (Taylor) and diagonal-Fisher gradient reductions (see the module doc).

    ``batches``: calibration batches as for
    :func:`~sketchprune.prune.calibration.collect_statistics` (dicts with ``input_ids`` and
    optionally ``attention_mask``, or ``input_ids`` tensors); the model must return ``.logits``
    (a causal LM).  ``layers``: layer indices (default all).  ``what``: a subset of
    ``("taylor", "fisher")``.
    """
    what = tuple(what)
    bad = [w for w in what if w not in GRADIENT_TERMS]
    if bad or not what:
        raise ValueError(f"sketchprune.prune: what must be a non-empty subset of {GRADIENT_TERMS}, got {what}")
    adapter = get_adapter(model)
    all_layers = adapter.layers(model)
    idx = layer_indices(len(all_layers), layers)

    params = list(model.parameters())
    saved_flags = [p.requires_grad for p in params]
    saved_grads = [p.grad for p in params]
    was_training = model.training
    handles = []
    fisher: dict[int, dict[str, torch.Tensor]] = {}
    gsum: dict[int, list] = {}
    entries: dict[int, list] = {}
    n_batches = 0
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for i in idx:
            red, sizes = _reducers(adapter, all_layers[i])
            entries[i] = red
            dev = red[0][0].device
            fisher[i] = {k: torch.zeros(n, dtype=torch.float64, device=dev) for k, n in sizes.items()}
            gsum[i] = []
            for p, kind, reduce in red:
                p.requires_grad_(True)
                buf = None
                if "taylor" in what:
                    buf = torch.zeros_like(p, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
                gsum[i].append(buf)

                def hook(param, acc=fisher[i][kind], reduce=reduce, buf=buf):
                    g = param.grad
                    if buf is not None:
                        buf.add_(g)
                    if "fisher" in what:
                        acc.add_(reduce((param.detach().to(torch.float64) * g.to(torch.float64)).square()))
                    param.grad = None
                handles.append(p.register_post_accumulate_grad_hook(hook))
        word = "decoder" if adapter.causal else "encoder"
        state = {}
        handles += finite_output_hooks([(f"{word} layer {j}", l) for j, l in enumerate(all_layers)], state,
                                       "dense model, gradient pass")
        model.eval()
        device = next(model.parameters()).device
        with torch.enable_grad():
            for batch in track(batches, progress, "gradients"):
                kwargs, mask = _as_batch(batch, device)
                state.update(mask=mask, batch=n_batches)
                out = model(**kwargs)
                loss = lm_loss(model, out, kwargs["input_ids"], mask, adapter.causal)
                if not bool(torch.isfinite(loss)):
                    raise NonFiniteActivations(f"sketchprune.prune: the language-model loss of calibration batch "
                                               f"{n_batches} is {float(loss)} (the layers' outputs were finite: "
                                               "the final norm or the LM head overflowed)")
                loss.backward()
                n_batches += 1
        if n_batches == 0:
            raise ValueError("sketchprune.prune: gradient_statistics got no calibration batches")
    finally:
        for h in handles:
            h.remove()
        for p, flag, g in zip(params, saved_flags, saved_grads):
            p.requires_grad_(flag)
            p.grad = g
        model.train(was_training)

    result = {}
    with torch.no_grad():
        for i in idx:
            r = {}
            if "fisher" in what:
                for k, v in fisher[i].items():
                    r[f"{k}_fisher"] = 0.5 * v / n_batches
            if "taylor" in what:
                tay = {k: torch.zeros_like(v) for k, v in fisher[i].items()}
                for (p, kind, reduce), buf in zip(entries[i], gsum[i]):
                    tay[kind] += reduce((p.detach().to(torch.float64) * buf.to(torch.float64)).abs())
                for k, v in tay.items():
                    r[f"{k}_taylor"] = v
            r["batches"] = torch.tensor(n_batches)
            result[i] = r
    return result
