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
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .adapters import get_adapter, supported_architectures
from .checks import (PruneInputError, check_args, check_batches, check_call, check_model, check_recon,
                     check_sliceable)
from .criteria import CRITERIA
from .measure import PeakMemory, measure_forward
from .report import jsonable, kept_plan, layer_costs_of, layer_entries, sparsity_summary

__all__ = ["prune", "load_model", "resolve_model_dir", "calibration_batches", "PruneInputError", "MODEL_NAMES",
           "CALIB_SOURCES"]

#: model names that resolve to a cached directory (fetched on first use)
MODEL_NAMES = ("smollm2-135m",)
CALIB_SOURCES = ("wiki", "austen", "self")


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
    elif isinstance(calib, Mapping):
        # one tokenizer output (a dict / BatchEncoding of (n, seq_len) tensors): cut like a tensor
        ids = calib.get("input_ids")
        if not (torch.is_tensor(ids) and ids.dim() == 2 and _integer(ids)):
            raise PruneInputError("a calibration dict must hold 'input_ids' as an integer (n, seq_len) tensor (or give "
                                  "a list of batches)")
        bs = int(batch_size) if batch_size else _auto_batch_size(ids.shape[0])
        batches = [{k: v[i:i + bs] if torch.is_tensor(v) and v.shape[:1] == ids.shape[:1] else v
                    for k, v in calib.items()} for i in range(0, ids.shape[0], bs)]
        desc.update(source="dict", sequences=int(ids.shape[0]), seq_len=int(ids.shape[1]), tokens=int(ids.numel()),
                    batch_size=bs)
    else:
        batches = [dict(b) if isinstance(b, Mapping) else b for b in calib]   # BatchEncoding: a plain dict
        toks = [b.get("input_ids") if isinstance(b, dict) else b for b in batches]
        bad = next((i for i, t in enumerate(toks) if not (torch.is_tensor(t) and _integer(t))), None)
        if bad is not None:
            t = toks[bad]
            got = f"{t.dtype} tensor" if torch.is_tensor(t) else type(t).__name__
            raise PruneInputError(f"calibration batches must be integer token-id tensors or dicts with 'input_ids'; "
                                  f"batch {bad} has {got}")
        desc.update(batches=len(batches), tokens=int(sum(t.numel() for t in toks)))
    if batches is not None:
        desc["batches"] = len(batches)
    return batches, desc


def _integer(t: torch.Tensor) -> bool:
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def _measure_input(batches, seq_len: int, vocab: int, seed: int) -> torch.Tensor:
    if batches:
        b = batches[0]
        ids = b["input_ids"] if isinstance(b, dict) else b
        return ids.reshape(-1, ids.shape[-1])[:1].cpu()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (1, int(seq_len)), generator=g)


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
    if torch.is_inference_mode_enabled():
        # under inference_mode the new weights would be inference tensors (the pruned model could
        # not be trained afterwards) and the gradient passes (taylor, fisher, block reconstruction)
        # could not run: the work runs outside it, without autograd recording, as under no_grad
        kw = {k: v for k, v in locals().items() if k not in ("model", "calib", "options")}
        with torch.inference_mode(False), torch.no_grad():
            return prune(model, calib, **kw, **options)
    from .pipeline import count_parameters, prune_model

    t_start = time.perf_counter()
    check_call(criterion, seed, batch_size, seq_len, calib_tokens, device, options)
    check_args(sparsity, criterion, budget)
    check_recon(recon, reconstruct, options)
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
    check_model(model, options, calib, seq_len)
    check_sliceable(model, float(sparsity), options)
    batches, calib_desc = calibration_batches(calib, model=model, tokenizer=tokenizer, seq_len=seq_len,
                                              calib_tokens=calib_tokens, batch_size=batch_size, seed=seed,
                                              progress=progress, self_options=self_options)
    check_batches(model, batches)
    if reconstruct and batches is not None and len(batches) < 2:
        raise PruneInputError(f"reconstruction holds out part of the calibration batches and needs at least 2, got "
                              f"{len(batches)}: give more calibration tokens or a smaller batch size")
    work = model if inplace else copy.deepcopy(model)
    if device is not None and not onload:
        work.to(device)
    dev = torch.device(device) if onload else next(work.parameters()).device
    x_measure = _measure_input(batches, seq_len, int(getattr(work.config, "vocab_size", 2)), seed)
    dense = measure_forward(work, x_measure) if measure else None
    costs_before = layer_costs_of(work)
    params_before = count_parameters(work)
    t0 = time.perf_counter()
    with PeakMemory(dev) as pm:
        rep = prune_model(work, batches, sparsity=float(sparsity), criterion=criterion, seed=seed, budget=budget,
                          progress=progress, reconstruct=reconstruct, recon=recon,
                          **({"device": dev} if onload else {}), **options)
    t_prune = time.perf_counter() - t0
    params_after = count_parameters(work)
    pruned = measure_forward(work, x_measure) if measure else None
    costs_after = layer_costs_of(work)
    plan = kept_plan(rep, costs_before, costs_after)
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
        "sparsity": sparsity_summary(rep, float(sparsity), costs_before, costs_after),
        "time_s": t_prune,
        "peak_memory_bytes": pm.peak_bytes,
        "peak_memory_method": pm.method,
        "calibration": {**calib_desc, "tokens_used": rep.get("calibration_tokens")},
        "layers": layer_entries(rep, plan, n_layers),
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
    return work, jsonable(report)
