"""Argument checks of :func:`sketchprune.prune` (and the CLI), run before any work.

Each raises :class:`PruneInputError` naming the argument: what can be checked without the model
(:func:`check_call`, :func:`check_args`, :func:`check_recon`), with the model but before the
calibration data exists (:func:`check_model`), and the calibration batches against the model
(:func:`check_batches`).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .._numbers import as_int, as_real
from ..budget import Budget, parse_bytes
from .adapters import get_adapter
from .criteria import CRITERIA

__all__ = ["PruneInputError", "check_args", "check_call", "check_model", "check_batches", "check_recon",
           "check_sequence_length", "check_sliceable", "check_weights"]


class PruneInputError(ValueError):
    """An argument of the pruning call cannot work; the message names it."""

def check_args(sparsity, criterion, budget) -> None:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not math.isfinite(sparsity):
        raise PruneInputError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise PruneInputError(f"sparsity must be in [0, 1), got {sparsity}")
    if criterion not in CRITERIA:
        raise PruneInputError(f"unknown criterion {criterion!r}; choose one of {', '.join(sorted(CRITERIA))}")
    if budget is not None and not isinstance(budget, Budget):
        try:
            parse_bytes(budget)
        except (TypeError, ValueError) as e:
            raise PruneInputError(f"budget: {e}") from None


def _is_int(v) -> bool:
    """An integer (Python or NumPy, an integer 0-d tensor), not a bool."""
    return as_int(v) is not None


def _is_fraction(v, lo_open: bool) -> bool:
    x = as_real(v)
    if x is None:
        return False
    return (0.0 < x < 1.0) if lo_open else (0.0 <= x < 1.0)


#: keywords of :func:`prune_model` that :func:`prune` sets itself (not passed through ``options``)
_OWN = {"model", "batches", "sparsity", "criterion", "seed", "budget", "progress", "reconstruct", "recon", "device"}


def check_call(criterion, seed, batch_size, seq_len, calib_tokens, device, options) -> None:
    """Every argument that can be checked without the model, before any work; a
    :class:`PruneInputError` naming it otherwise."""
    import inspect

    from .allocation import ALLOCATIONS, HEAD_MODES
    from .pipeline import FLAP_BIAS, prune_model

    if not isinstance(criterion, str):
        raise PruneInputError(f"criterion must be a string, one of {', '.join(sorted(CRITERIA))}; got {criterion!r}")
    valid = [k for k in inspect.signature(prune_model).parameters if k not in _OWN]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise PruneInputError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                              f"the options are: {', '.join(valid)}")
    if not _is_int(seed):
        raise PruneInputError(f"seed must be an integer, got {seed!r}")
    if batch_size is not None and not (_is_int(batch_size) and batch_size > 0):
        raise PruneInputError(f"batch_size must be a positive integer or None (automatic), got {batch_size!r}")
    for name, v in (("seq_len", seq_len), ("calib_tokens", calib_tokens)):
        if not (_is_int(v) and v > 0):
            raise PruneInputError(f"{name} must be a positive integer, got {v!r}")
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise PruneInputError(f"device {device!r}: {e}") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise PruneInputError(f"device {device!r}: torch sees no CUDA device here")
    o = options
    choices = {"head_mode": HEAD_MODES, "allocation": ALLOCATIONS, "flap_bias": FLAP_BIAS,
               "refit_target": ("local", "dense"), "token_weighting": ("none", "relative")}
    for name, allowed in choices.items():
        if name in o and o[name] not in allowed:
            raise PruneInputError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {o[name]!r}")
    if o.get("attn_sparsity") is not None and not _is_fraction(o["attn_sparsity"], lo_open=False):
        raise PruneInputError(f"attn_sparsity must be a number in [0, 1) or None, got {o['attn_sparsity']!r}")
    if "heldout_fraction" in o and not _is_fraction(o["heldout_fraction"], lo_open=True):
        raise PruneInputError(f"heldout_fraction must be a number in (0, 1), got {o['heldout_fraction']!r}")
    if o.get("layers") is not None:
        ls = o["layers"]
        if isinstance(ls, (str, bytes)) or not hasattr(ls, "__iter__"):
            raise PruneInputError(f"layers must be a list of decoder-layer indices, got {ls!r}")
        ls = [as_int(i) for i in ls]      # a list: a generator would be used up by the check
        if None in ls:
            raise PruneInputError(f"layers must be a list of decoder-layer indices, got {o['layers']!r}")
        if not ls:
            raise PruneInputError("layers is empty: no layer to prune (None prunes every layer)")
        o["layers"] = ls
    if "stat_dtype" in o:
        sd = {"float32": torch.float32, "float64": torch.float64}.get(o["stat_dtype"], o["stat_dtype"])
        if sd not in (torch.float32, torch.float64):
            raise PruneInputError(f"stat_dtype must be torch.float32 or torch.float64, got {o['stat_dtype']!r}")
        o["stat_dtype"] = sd
    if "alphas" in o:
        a = o["alphas"]
        ok = hasattr(a, "__iter__") and not isinstance(a, (str, bytes))
        vals = list(a) if ok else []
        if not vals or not all(as_real(v) is not None and as_real(v) > 0 for v in vals):
            raise PruneInputError(f"alphas must be a non-empty list of positive regularisation strengths, got {a!r}")
    for name in ("sequential", "recovery", "stream_error"):
        if o.get(name) is not None and not isinstance(o[name], bool):
            raise PruneInputError(f"{name} must be True or False, got {o[name]!r}")


def check_model(model, options, calib, seq_len) -> None:
    """What needs the model but not the calibration data (checked before building it, which for
    ``calib="self"`` runs the model): finite weights, layer indices in range, and a text / self
    calibration ``seq_len`` within a learned position table."""
    check_weights(model)
    n_layers = len(get_adapter(model).layers(model))
    ls = options.get("layers")
    if ls is not None:
        bad = sorted({i for i in ls if not 0 <= i < n_layers})
        if bad:
            raise PruneInputError(f"layers {bad} out of range: the model has {n_layers} decoder layers")
    if isinstance(calib, (str, Path)):
        check_sequence_length(model, int(seq_len), "calibration sequences")


def check_sliceable(model, sparsity: float, options: dict) -> None:
    """Every projection the run will slice must be a plain ``nn.Linear`` (a subclass -- a LoRA or
    observer wrapper -- would be found only when its layer is sliced, half-way through the run).
    Under the uniform allocation only the sides (attention / FFN) that lose units are checked."""
    from torch import nn

    from .allocation import layer_costs, layer_removal

    ad = get_adapter(model)
    layers = ad.layers(model)
    idx = options.get("layers")
    idx = range(len(layers)) if idx is None else idx
    uniform = options.get("allocation", "uniform") == "uniform"
    names = None
    for i in idx:
        heads = ffn = sparsity > 0 or bool(options.get("attn_sparsity"))
        if uniform and heads:
            try:
                r = layer_removal(layer_costs(ad, layers[i]), sparsity, options.get("attn_sparsity"),
                                  options.get("head_mode", "query"))
            except ValueError:
                return              # an infeasible target: the pipeline reports it in its own words
            heads, ffn = bool(r.q_per_group or r.groups), bool(r.ffn)
        att, mlp = ad.attention(layers[i]), ad.ffn(layers[i])
        for lin in ([att.q, att.k, att.v, att.o] if heads else []) + ([*mlp.first, mlp.down] if ffn else []):
            if type(lin) is not nn.Linear:
                names = names or {id(m): n for n, m in model.named_modules()}
                raise PruneInputError(f"{names.get(id(lin), 'a projection')} of decoder layer {i} is a "
                                      f"{type(lin).__module__}.{type(lin).__name__}; only plain torch.nn.Linear "
                                      "projections can be sliced (merge adapters such as LoRA into the weights first)")


def check_batches(model, batches) -> None:
    """The calibration batches against the model: token ids inside the vocabulary, sequences no
    longer than a learned position table."""
    if not batches:
        return
    vocab = getattr(model.config, "vocab_size", None)
    longest, lo, hi = 0, None, None
    for b in batches:
        ids = b["input_ids"] if isinstance(b, dict) else b
        longest = max(longest, int(ids.shape[-1]))
        lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
        hi = int(ids.max()) if hi is None else max(hi, int(ids.max()))
    if lo is not None and (lo < 0 or (vocab is not None and hi >= vocab)):
        raise PruneInputError(f"calibration token ids span [{lo}, {hi}]" + (
            f" but the model's vocabulary has {vocab} entries (ids 0 .. {vocab - 1}): a tokenizer of another model?"
            if vocab is not None else ": token ids cannot be negative"))
    check_sequence_length(model, longest, "calibration sequences")


def check_sequence_length(model, length: int, what: str = "sequences") -> None:
    """Refuse sequences longer than a learned position table (OPT, BERT), which would fail inside
    the embedding; rotary-position models are not limited here."""
    cfg = model.config
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if getattr(cfg, "model_type", None) in ("opt", "bert") and max_pos is not None and length > max_pos:
        raise PruneInputError(f"{what} of {length} tokens are longer than the model's {max_pos} learned "
                              f"positions: use a sequence length <= {max_pos}")


def check_weights(model) -> None:
    """Weights without data (meta device) or non-finite weights would surface much later as an
    unrelated-looking failure."""
    for name, p in model.named_parameters():
        if p.is_meta:
            raise PruneInputError(f"the model's weights are on the meta device (e.g. {name}): they hold no values; "
                                  "load the weights first (from_pretrained, load_state_dict(..., assign=True), "
                                  "or accelerate's load_checkpoint_and_dispatch)")
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise PruneInputError(f"the model has non-finite (NaN/Inf) weights in {name}")


def check_recon(recon, reconstruct, options) -> None:
    from .blockrecon import EPOCHS, LR, PATIENCE, PROX, RECON_MODES, check_options

    if recon not in RECON_MODES:
        raise PruneInputError(f"recon must be one of {', '.join(RECON_MODES)}, got {recon!r}")
    if recon == "layer":
        return
    if not reconstruct:
        raise PruneInputError(f"recon={recon!r} runs after the closed-form refits and needs reconstruct=True")
    if options.get("sequential") is False or options.get("allocation", "uniform") != "uniform":
        raise PruneInputError(f"recon={recon!r} is available only in sequential pruning (not one-shot: "
                              f"sequential=False or allocation='global')")
    try:
        check_options(*(options.get(k, d) for k, d in (("recon_epochs", EPOCHS), ("recon_lr", LR),
                                                       ("recon_prox", PROX), ("recon_patience", PATIENCE))))
    except ValueError as e:
        raise PruneInputError(str(e).replace("sketchprune.prune: ", "")) from None
