"""Saving and loading sliced models.

A sliced model is saved with the ordinary ``model.save_pretrained(path)``: the weights are
plain tensors of the new sizes and ``config.json`` carries ``sketchprune_layers`` (one entry per
layer: ``intermediate_size``, ``num_attention_heads``, ``num_key_value_heads``) plus an explicit
``head_dim``.

* When every layer has the same sizes, :func:`~sketchprune.prune.slicing.record_structure` also
  updated the standard config fields, so the stock ``AutoModelForCausalLM.from_pretrained`` (or
  ``LlamaForCausalLM.from_pretrained``, ``AutoModel.from_pretrained`` for a BERT encoder) loads
  it -- except after head pruning in families whose head width is derived from the head count
  (OPT, BERT): their stock config keeps the original head count and :func:`load_pruned` is
  needed.
* When sizes differ per layer, the stock classes build every layer from the global config fields
  and ``from_pretrained`` stops with a size-mismatch error.  :func:`load_pruned` loads it: it uses
  a subclass of the saved architecture whose constructor re-sizes each layer's Linears to
  ``sketchprune_layers`` (on the meta device that ``from_pretrained`` builds on), then lets
  ``from_pretrained`` fill the weights as usual.  Biases recorded in a layer's ``added_biases``
  (e.g. FLAP's bias compensation on an architecture without down / o biases) are re-created
  there the same way.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .adapters import AttnLinears, FFNLinears, HeadStructure, get_adapter
from .slicing import second_linears

_PRUNED_CLASSES: dict[type, type] = {}


def _empty_linear(old: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    """An uninitialised Linear of the new shape on ``old``'s device and dtype."""
    w = old.weight
    new = nn.Linear(1, 1, bias=old.bias is not None, device="meta", dtype=w.dtype)  # no init work
    new.out_features, new.in_features = out_features, in_features
    new.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=w.dtype, device=w.device),
                              requires_grad=w.requires_grad)
    if old.bias is not None:
        new.bias = nn.Parameter(torch.empty(out_features, dtype=old.bias.dtype, device=old.bias.device),
                                requires_grad=old.bias.requires_grad)
    return new


def resize_to_structure(model: nn.Module, layers: list[dict]) -> None:
    """Re-size each layer's Linears (uninitialised) and attributes to ``layers`` (config format).

    Used when building a model whose weights are then loaded from a sliced checkpoint.
    """
    adapter = get_adapter(model)
    mods = adapter.layers(model)
    if len(layers) != len(mods):
        raise ValueError(f"sketchprune.prune: sketchprune_layers has {len(layers)} entries for "
                         f"{len(mods)} layers")
    for layer, spec in zip(mods, layers):
        f = adapter.ffn(layer)
        n = int(spec["intermediate_size"])
        if f.units != n:
            adapter.set_ffn_size(layer, FFNLinears(
                None if f.gate is None else _empty_linear(f.gate, n, f.gate.in_features),
                _empty_linear(f.up, n, f.up.in_features),
                _empty_linear(f.down, f.down.out_features, n)))
        old = adapter.head_structure(layer)
        h = HeadStructure(int(spec["num_attention_heads"]), int(spec["num_key_value_heads"]), old.head_dim)
        if h.num_kv_heads < 1 or h.num_heads % h.num_kv_heads:
            raise ValueError(f"sketchprune.prune: invalid head counts {spec}")
        if h != old:
            a = adapter.attention(layer)
            q, kv = h.num_heads * h.head_dim, h.num_kv_heads * h.head_dim
            adapter.set_attention(layer, AttnLinears(_empty_linear(a.q, q, a.q.in_features),
                                                     _empty_linear(a.k, kv, a.k.in_features),
                                                     _empty_linear(a.v, kv, a.v.in_features),
                                                     _empty_linear(a.o, a.o.out_features, q)), h)
        lin = second_linears(adapter, layer)
        for role in spec.get("added_biases", ()):
            m = lin.get(role)
            if m is None:
                raise ValueError(f"sketchprune.prune: unknown bias role {role!r} in sketchprune_layers")
            if m.bias is None:
                w = m.weight
                m.bias = nn.Parameter(torch.empty(w.shape[0], dtype=w.dtype, device=w.device),
                                      requires_grad=w.requires_grad)


def pruned_model_class(base: type) -> type:
    """A subclass of the Hugging Face class ``base`` whose layers follow ``config.sketchprune_layers``.

    It keeps ``base``'s name, so a model saved from it names the stock architecture.
    """
    cls = _PRUNED_CLASSES.get(base)
    if cls is None:
        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            layers = getattr(config, "sketchprune_layers", None)
            if layers:
                resize_to_structure(self, layers)

        cls = type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__,
                                            "__qualname__": base.__qualname__})
        _PRUNED_CLASSES[base] = cls
    return cls


def load_pruned(path: str | os.PathLike, **kwargs) -> nn.Module:
    """Load a model saved from :func:`~sketchprune.prune.slicing.slice_model` (per-layer sizes
    allowed).  ``kwargs`` go to ``from_pretrained`` (``dtype``, ``device_map``, ...)."""
    try:
        import transformers
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"sketchprune.load_pruned needs transformers: pip install 'sketchprune[prune]' "
                                  f"({e})", name=e.name) from e

    config = transformers.AutoConfig.from_pretrained(path)
    archs = getattr(config, "architectures", None) or []
    base = getattr(transformers, archs[0], None) if archs else None
    if base is None:
        raise ValueError(f"sketchprune.prune: {path} names no known architecture ({archs})")
    return pruned_model_class(base).from_pretrained(path, config=config, **kwargs)
