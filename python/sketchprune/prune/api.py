"""``sketchprune.prune(model, calib, ...)``: the user-facing pruning call, returning (model, report).

It checks its arguments before any work, builds the calibration batches from whatever it is
given (token ids, batches, a text source name or file, or ``"self"`` for sequences sampled from
the model), prunes a copy of the model (or the model itself with ``inplace=True``) with
:func:`~sketchprune.prune.pipeline.prune_model`, measures the dense and the pruned model's
forward latency and memory on the same input (:mod:`~sketchprune.prune.measure`), records the
kept indices per layer as the pipeline chose them and assembles one JSON-ready report.
:func:`load_model` resolves a model name (``smollm2-135m``) or directory.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .._numbers import as_int, as_real
from ..budget import Budget, parse_bytes
from .adapters import get_adapter, supported_architectures
from .criteria import CRITERIA
from .measure import PeakMemory, measure_forward

__all__ = ["prune", "load_model", "resolve_model_dir", "calibration_batches", "PruneInputError", "MODEL_NAMES",
           "CALIB_SOURCES"]

#: model names that resolve to a cached directory (fetched on first use)
MODEL_NAMES = ("smollm2-135m",)
CALIB_SOURCES = ("wiki", "austen", "self")


class PruneInputError(ValueError):
    """An argument of the pruning call cannot work; the message names it."""


# ---------------------------------------------------------------------------------------- models

def resolve_model_dir(name_or_path) -> Path:
    """A model name (:data:`MODEL_NAMES`, fetched into the cache on first use) or a directory with
    a ``config.json`` whose architecture can be pruned; checked before any weights are read."""
    if isinstance(name_or_path, str) and name_or_path.lower() in MODEL_NAMES:
        from ..datasets.smollm2 import smollm2_dir

        return Path(smollm2_dir())
    p = Path(name_or_path)
    if not p.exists():
        raise PruneInputError(f"model {str(name_or_path)!r} is neither a known name ({', '.join(MODEL_NAMES)}) "
                              f"nor an existing directory")
    if not (p / "config.json").is_file():
        raise PruneInputError(f"model directory {str(p)!r} has no config.json (not a Hugging Face model directory)")
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type")
    except (OSError, ValueError) as e:
        raise PruneInputError(f"model directory {str(p)!r}: cannot read config.json ({e})") from None
    if model_type not in supported_architectures():
        raise PruneInputError(f"model {str(p)!r}: unsupported architecture {model_type!r}; supported model "
                              f"types: {', '.join(supported_architectures())}")
    return p


def load_model(name_or_path, device="cpu", dtype: torch.dtype | None = torch.float32):
    """(model in eval mode on ``device``, tokenizer or None) for a name or directory (also one
    written by ``sketchprune prune``, with per-layer sizes)."""
    from .export import load_saved

    d = resolve_model_dir(name_or_path)
    model = load_saved(d, **({"dtype": dtype} if dtype is not None else {})).to(device).eval()
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
    except (OSError, ValueError, TypeError):
        tok = None
    return model, tok


# -------------------------------------------------------------------------------- calibration

def _auto_batch_size(n_seqs: int) -> int:
    return max(1, min(8, n_seqs // 8))


def calibration_batches(calib, model=None, tokenizer=None, seq_len: int = 512, calib_tokens: int = 16384,
                        batch_size: int | None = None, seed: int = 0, progress: bool = False,
                        self_options: dict | None = None) -> tuple[list, dict]:
    """(batches, description) from ``calib``:

    * a LongTensor (n, seq_len) of token ids (cut into batches of ``batch_size`` sequences);
    * a list of batches (tensors or dicts with ``input_ids``), used as they are;
    * ``"wiki"``, ``"austen"`` or a text file path: ``calib_tokens // seq_len`` windows of the
      source's calibration slice (:mod:`sketchprune.datasets.text`), tokenized by ``tokenizer``;
    * ``"self"``: as many sequences sampled from ``model`` itself
      (:func:`~sketchprune.datasets.selfgen.self_generated`, ``self_options`` passed on).

    ``batch_size`` default: 1 to 8 sequences, so that there are at least 8 batches when possible.
    """
    if isinstance(calib, (str, Path)):
        seq_len, calib_tokens = int(seq_len), int(calib_tokens)
        if seq_len < 2:
            raise PruneInputError(f"sequence length must be at least 2, got {seq_len}")
        if calib_tokens < seq_len:
            raise PruneInputError(f"calibration set of {calib_tokens} tokens is shorter than the sequence length "
                                  f"{seq_len}")
        n_seqs = calib_tokens // seq_len
        t0 = time.perf_counter()
        if str(calib) == "self":
            if model is None:
                raise PruneInputError("self-generated calibration needs the model")
            from ..datasets.selfgen import self_generated

            opts = dict(self_options or {})
            if tokenizer is not None and "exclude_ids" not in opts:
                opts["exclude_ids"] = list(getattr(tokenizer, "all_special_ids", []) or [])
            ids = self_generated(model, n_seqs, seq_len, seed=seed, progress=progress, **opts)
            desc = {"source": "self", "slice": "sampled from the dense model", "seed": seed,
                    **{k: v for k, v in opts.items() if k != "exclude_ids"}}
        else:
            from ..datasets.text import describe_split, text_tokens

            try:
                ids = text_tokens(calib, tokenizer, seq_len, calib_tokens, split="calib", seed=seed)
            except (ValueError, FileNotFoundError, IsADirectoryError) as e:
                raise PruneInputError(f"calibration: {e}") from None
            desc = {"source": str(calib), "slice": describe_split(str(calib), "calib"), "seed": seed}
        desc["seconds"] = time.perf_counter() - t0
        calib = ids
    else:
        desc = {"source": "tensor" if torch.is_tensor(calib) else "batches"}
    if torch.is_tensor(calib):
        if calib.dim() != 2 or calib.dtype not in (torch.int64, torch.int32):
            raise PruneInputError(f"calibration token ids must be an integer (n, seq_len) tensor, got "
                                  f"{calib.dtype} of shape {tuple(calib.shape)}")
        bs = int(batch_size) if batch_size else _auto_batch_size(calib.shape[0])
        batches = list(calib.long().split(bs))
        desc.update(sequences=int(calib.shape[0]), seq_len=int(calib.shape[1]), tokens=int(calib.numel()),
                    batch_size=bs)
    elif calib is None:
        batches = None
        desc = {"source": None}
    else:
        batches = list(calib)
        toks = [b["input_ids"] if isinstance(b, dict) else b for b in batches]
        if not all(torch.is_tensor(t) for t in toks):
            raise PruneInputError("calibration batches must be token-id tensors or dicts with 'input_ids'")
        desc.update(batches=len(batches), tokens=int(sum(t.numel() for t in toks)))
    if batches is not None:
        desc["batches"] = len(batches)
    return batches, desc


# ---------------------------------------------------------------------------------------- checks

def _check_args(sparsity, criterion, budget) -> None:
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


def _check_call(criterion, seed, batch_size, seq_len, calib_tokens, device, options) -> None:
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


def _check_model(model, options, calib, seq_len) -> None:
    """What needs the model but not the calibration data (checked before building it, which for
    ``calib="self"`` runs the model): finite weights, layer indices in range, and a text / self
    calibration ``seq_len`` within a learned position table."""
    _check_weights(model)
    n_layers = len(get_adapter(model).layers(model))
    ls = options.get("layers")
    if ls is not None:
        bad = sorted({i for i in ls if not 0 <= i < n_layers})
        if bad:
            raise PruneInputError(f"layers {bad} out of range: the model has {n_layers} decoder layers")
    if isinstance(calib, (str, Path)):
        check_sequence_length(model, int(seq_len), "calibration sequences")


def _check_batches(model, batches) -> None:
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


def _check_weights(model) -> None:
    """Weights without data (meta device) or non-finite weights would surface much later as an
    unrelated-looking failure."""
    for name, p in model.named_parameters():
        if p.is_meta:
            raise PruneInputError(f"the model's weights are on the meta device (e.g. {name}): they hold no values; "
                                  "load the weights first (from_pretrained, load_state_dict(..., assign=True), "
                                  "or accelerate's load_checkpoint_and_dispatch)")
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise PruneInputError(f"the model has non-finite (NaN/Inf) weights in {name}")


def _check_recon(recon, reconstruct, options) -> None:
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


def _measure_input(batches, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    if batches:
        b = batches[0]
        ids = b["input_ids"] if isinstance(b, dict) else b
        return ids.reshape(-1, ids.shape[-1])[:1].cpu()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, int(seq_len)), generator=g)


# ---------------------------------------------------------------------------------------- report

def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if torch.is_tensor(x):
        return _jsonable(x.tolist())
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


def _layer_costs(model) -> list:
    """Per layer its :class:`~sketchprune.prune.allocation.LayerCosts` as the model is now: unit
    counts, and attention / MLP parameters (biases a criterion created included)."""
    from .allocation import layer_costs

    ad = get_adapter(model)
    return [layer_costs(ad, layer) for layer in ad.layers(model)]


def _units(c) -> tuple[int, int, int]:
    return c.ffn_units, c.num_heads, c.num_kv_heads


def _plan(rep: dict, before: list, after: list) -> list[dict]:
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


def _layer_entries(rep: dict, plan: list[dict] | None, n_layers: int) -> list[dict]:
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


def _sparsity(rep: dict, requested: float, before: list, after: list) -> dict:
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


# ------------------------------------------------------------------------------------------ prune

def prune(model, calib=None, *, sparsity: float = 0.2, criterion: str = "sigma", reconstruct: bool = True,
          recon: str = "layer", budget=None, inplace: bool = False, tokenizer=None, seq_len: int = 512,
          calib_tokens: int = 16384, batch_size: int | None = None, seed: int = 0, device=None,
          onload: bool = False, measure: bool = True, progress: bool = True, self_options: dict | None = None,
          **options):
    """Prune ``model`` and return ``(pruned_model, report)``.

    ``model``: a Hugging Face causal LM of a supported architecture, or a name / directory
    (:func:`load_model`; its tokenizer is then used for text calibration).  ``calib``: see
    :func:`calibration_batches` (``None`` only for data-free criteria).  ``sparsity``: the
    fraction of the attention + MLP parameters of the pruned layers to remove, in [0, 1).
    ``criterion``: one of :data:`~sketchprune.prune.CRITERIA`.  ``reconstruct``: re-fit
    down_proj / o_proj over the kept units (part of the calibration batches is held out to
    choose the regularisation).  ``recon``: ``"layer"`` (default: those closed-form refits),
    ``"block"`` or ``"cross-block"`` (after them, every Linear of each pruned block -- or of two
    consecutive blocks jointly -- re-fit by a few epochs of Adam toward the dense model's hidden
    states, stopped on the held-out calibration batches; sequential pruning only, needs
    ``reconstruct``; per-layer ``block_recon`` in the report).  ``budget``: memory budget of the pruning device (e.g. ``"8GiB"``; one layer, its statistics and workspaces, one batch's activations -- planned, and refused before any work when it does not fit).
    ``inplace``: prune ``model`` itself; otherwise a deep copy is pruned and ``model`` is left
    untouched.  ``device``: where to prune (default: where the model is).  ``onload``: keep the
    model where it is (host memory) and move one decoder layer at a time to ``device`` for its
    turn (sequential on-loading: the device holds one layer, its statistics and one batch's
    activations, which is what ``budget`` bounds); the dense / pruned forward measurements then
    run where the model is.  ``measure``: time
    and measure memory of the dense and pruned model's forward pass on the first calibration
    sequence.  Further ``options`` (``attn_sparsity``, ``head_mode``, ``layers``, ``flap_bias``,
    ``heldout_fraction``, ...) go to :func:`~sketchprune.prune.prune_model`.

    The report (JSON-ready) holds ``params.before/after``, ``sparsity``, ``time_s``,
    ``peak_memory_bytes``, per-layer ``kept_channels`` / ``kept_heads`` / ``recon_rel_error`` /
    ``heldout_rel_error``, the kept indices (``plan``), ``inference`` measurements and the
    pipeline's own record (``pipeline``).  See ``docs/pruning.md``.
    """
    from .pipeline import count_parameters, prune_model

    t_start = time.perf_counter()
    _check_call(criterion, seed, batch_size, seq_len, calib_tokens, device, options)
    _check_args(sparsity, criterion, budget)
    _check_recon(recon, reconstruct, options)
    if onload and device is None:
        raise PruneInputError("onload=True moves one layer at a time to a device: give device=... (e.g. 'cuda')")
    if onload:      # before any model is loaded: on-loading is a mode of the sequential path only
        crit = CRITERIA[criterion]
        one_shot = (options.get("sequential") is False or options.get("allocation", "uniform") != "uniform"
                    or (not crit.needs and not getattr(crit, "needs_gradients", False) and not reconstruct))
        if one_shot:
            raise PruneInputError("onload=True needs the sequential path: calibration data with a criterion or a "
                                  "refit that reads activations, allocation='uniform' and sequential not False")
    source = None
    if not isinstance(model, nn.Module):
        source = str(model)
        model, tok = load_model(model, device="cpu" if onload else (device or "cpu"))
        tokenizer = tokenizer if tokenizer is not None else tok
        inplace = True  # nobody else holds it
    try:
        get_adapter(model)
    except ValueError as e:
        raise PruneInputError(str(e)) from None
    data_free = not CRITERIA[criterion].needs
    if calib is None and (not data_free or reconstruct):
        raise PruneInputError(f"criterion {criterion!r}{' with reconstruction' if reconstruct else ''} needs "
                              f"calibration data (calib=...)")
    if "flap_bias" not in options and criterion == "flap" and reconstruct:
        options["flap_bias"] = "none"  # the refit replaces FLAP's bias compensation
    _check_model(model, options, calib, seq_len)
    batches, calib_desc = calibration_batches(calib, model=model, tokenizer=tokenizer, seq_len=seq_len,
                                              calib_tokens=calib_tokens, batch_size=batch_size, seed=seed,
                                              progress=progress, self_options=self_options)
    _check_batches(model, batches)
    if reconstruct and batches is not None and len(batches) < 2:
        raise PruneInputError(f"reconstruction holds out part of the calibration batches and needs at least 2, got "
                              f"{len(batches)}: give more calibration tokens or a smaller batch size")
    work = model if inplace else copy.deepcopy(model)
    if device is not None and not onload:
        work.to(device)
    dev = torch.device(device) if onload else next(work.parameters()).device
    x_measure = _measure_input(batches, seq_len, int(getattr(work.config, "vocab_size", 2)), seed)
    dense = measure_forward(work, x_measure) if measure else None
    costs_before = _layer_costs(work)
    params_before = count_parameters(work)
    t0 = time.perf_counter()
    with PeakMemory(dev) as pm:
        rep = prune_model(work, batches, sparsity=float(sparsity), criterion=criterion, seed=seed, budget=budget,
                          progress=progress, reconstruct=reconstruct, recon=recon,
                          **({"device": dev} if onload else {}), **options)
    t_prune = time.perf_counter() - t0
    params_after = count_parameters(work)
    pruned = measure_forward(work, x_measure) if measure else None
    costs_after = _layer_costs(work)
    plan = _plan(rep, costs_before, costs_after)
    for e in rep.get("layers", []):     # the kept indices live in the report's plan only
        if isinstance(e, dict):
            e.pop("kept", None)
    n_layers = len(costs_before)
    report = {
        "model": source or type(model).__name__,
        "architecture": getattr(work.config, "model_type", None),
        "device": str(dev),
        "onload": bool(onload),
        "dtype": str(next(work.parameters()).dtype).replace("torch.", ""),
        "criterion": criterion,
        "reconstruct": bool(reconstruct),
        "recon": recon,
        "options": options,
        "seed": seed,
        "budget": None if budget is None else str(budget),
        "params": {"before": params_before, "after": params_after,
                   "removed_fraction": 1 - params_after / max(params_before, 1)},
        "sparsity": _sparsity(rep, float(sparsity), costs_before, costs_after),
        "time_s": t_prune,
        "peak_memory_bytes": pm.peak_bytes,
        "peak_memory_method": pm.method,
        "calibration": {**calib_desc, "tokens_used": rep.get("calibration_tokens")},
        "layers": _layer_entries(rep, plan, n_layers),
        "plan": plan,
        "inference": None if not measure else {
            "input": "the first calibration sequence" if batches else "random token ids (seeded)",
            "dense": dense, "pruned": pruned,
            "speedup": dense["latency_s"] / pruned["latency_s"] if pruned["latency_s"] else None,
            "memory_ratio": (pruned["peak_memory_bytes"] / dense["peak_memory_bytes"]
                             if dense["peak_memory_bytes"] and pruned["peak_memory_bytes"] else None)},
        "pipeline": rep,
        "total_time_s": time.perf_counter() - t_start,
    }
    got = report["sparsity"]["achieved"]
    if got is not None and abs(got - float(sparsity)) > 0.02:
        warnings.warn(f"sketchprune.prune: achieved sparsity {got:.3f} differs from the requested {float(sparsity):.3f}: "
                      "head counts are rounded to valid values and an FFN cannot lose more than all of its "
                      "channels (see report['sparsity'])", stacklevel=3)
    return work, _jsonable(report)
