"""Per-layer activation streams: run a transformer one decoder layer at a time.

:func:`capture_layer_inputs` runs each calibration batch through the model once, cheaply, and
records what every decoder layer from ``first`` to ``last`` is called with: the hidden states
entering layer ``first`` and, for each layer, the other positional and keyword arguments (the
attention mask -- which may differ per layer, e.g. Gemma's sliding-window layers -- rotary
position embeddings, position ids, ...).  Layers before ``first`` run normally; from ``first``
on, each layer's ``forward`` is temporarily replaced by one that records its call and returns
its input unchanged, and the pass stops after layer ``last`` (so the head is never run).  This
relies on what Hugging Face decoders do: every layer is called as
``hidden = layer(hidden, **kwargs)`` with arguments that do not depend on earlier layers'
outputs.

:func:`run_layer` then calls one layer on one batch of a stream: the recorded arguments are
moved to the layer's device, the output is checked for NaN/Inf on the unpadded tokens (raising
:class:`NonFiniteActivations` naming the layer) and returned.  Streams and recorded arguments
live in host memory; tensors shared between layers (one mask for many layers) are stored once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .calibration import _as_batch


class NonFiniteActivations(FloatingPointError):
    """NaN or Inf appeared in the activations of a layer."""


class _Stop(Exception):
    pass


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, list):
        return [_map_tensors(o, fn) for o in obj]
    if isinstance(obj, Mapping):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _to_host(memo: dict, host: torch.device):
    def fn(t: torch.Tensor) -> torch.Tensor:
        key = id(t)
        if key not in memo:
            memo[key] = (t, t.detach().to(host))   # keep t alive so its id is not reused
        return memo[key][1]
    return fn


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensors inside ``obj`` (nested tuples / lists / dicts)."""
    seen, total = set(), 0

    def fn(t):
        nonlocal total
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return t
    _map_tensors(obj, fn)
    return total


@dataclass
class LayerCall:
    """The arguments (besides the hidden states) one layer is called with on one batch."""

    args: tuple
    kwargs: dict


@dataclass
class LayerInputs:
    """Recorded layer inputs for a list of calibration batches (all on the host)."""

    first: int
    last: int
    hidden: list[torch.Tensor]                       # per batch: the hidden states entering layer `first`
    calls: dict[int, list[LayerCall]] = field(default_factory=dict)   # layer -> per batch
    masks: list[torch.Tensor | None] = field(default_factory=list)    # per batch (B, T) bool, None = all
    tokens: list[int] = field(default_factory=list)                   # per batch: unpadded tokens

    @property
    def batches(self) -> int:
        return len(self.hidden)


def capture_layer_inputs(model: nn.Module, layers: list[nn.Module], batches: list, first: int, last: int,
                         host: torch.device | str = "cpu") -> LayerInputs:
    """Record the inputs of ``layers[first..last]`` for every batch (see the module doc)."""
    if not 0 <= first <= last < len(layers):
        raise IndexError(f"sketchprune.prune: layer range [{first}, {last}] out of range ({len(layers)} layers)")
    host = torch.device(host)
    device = next(model.parameters()).device
    out = LayerInputs(first, last, [], {j: [] for j in range(first, last + 1)})
    state: dict = {}

    def recorder(j: int):
        def forward(*args, **kwargs):
            if args:
                hidden, rest = args[0], args[1:]
            elif "hidden_states" in kwargs:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            else:
                raise TypeError(f"sketchprune.prune: layer {j} was called without hidden states")
            to_host = _to_host(state["memo"], host)
            if j == first:
                out.hidden.append(hidden.detach().to(host))
            out.calls[j].append(LayerCall(_map_tensors(rest, to_host), _map_tensors(kwargs, to_host)))
            if j == last:
                raise _Stop
            return hidden
        return forward

    was_training = model.training
    patched = []   # (layer, its own instance-level forward if it had one, e.g. from accelerate)
    try:
        for j in range(first, last + 1):
            patched.append((layers[j], layers[j].__dict__.get("forward")))
            layers[j].forward = recorder(j)          # instance attribute shadows the class method
        model.eval()
        with torch.no_grad():
            for batch in batches:
                kwargs, mask = _as_batch(batch, device)
                state["memo"] = {}
                try:
                    model(**kwargs)
                except _Stop:
                    pass
                else:
                    raise RuntimeError(f"sketchprune.prune: the model's forward did not call decoder layer {last}")
                out.masks.append(None if mask is None else mask.to(host))
                out.tokens.append(int(mask.sum()) if mask is not None else kwargs["input_ids"].numel())
                state["memo"] = {}
    finally:
        for layer, own in patched:
            if own is None:
                del layer.forward
            else:
                layer.forward = own
        model.train(was_training)
    return out


def check_finite(x: torch.Tensor, mask: torch.Tensor | None, where: str) -> None:
    """Raise :class:`NonFiniteActivations` if ``x`` (B, T, d) has NaN/Inf on unpadded tokens."""
    if mask is None or bool(mask.all()):
        # one reduction in the tensor's own dtype: NaN/Inf propagate into it, and a sum that overflows
        # only sends the check on to the exact elementwise test below (a float64 sum of bf16 took
        # 35x as long on CPU: 30 ms for one 2048 x 4096 batch)
        if bool(torch.isfinite(x.sum())):
            return
        v = x
    else:
        v = x.reshape(-1, x.shape[-1])[mask.to(x.device).reshape(-1)]   # some layers flatten (B, T)
    if not bool(torch.isfinite(v).all()):
        bad = int((~torch.isfinite(v)).sum())
        raise NonFiniteActivations(f"sketchprune.prune: {bad} non-finite activation values (NaN/Inf) in {where}")


def finite_output_hooks(layers, state: dict, what: str) -> list:
    """Forward hooks on ``layers`` (a list of ``(name, module)``) that raise
    :class:`NonFiniteActivations` naming the first layer whose output hidden states hold NaN/Inf
    on unpadded tokens, for passes of the whole model (``state``: the current batch's ``mask``
    and index ``batch``; ``what``: the pass, for the message).  Returns the hook handles."""
    def make(name):
        def hook(module, args, output):
            h = output[0] if isinstance(output, (tuple, list)) else output
            if not (isinstance(h, torch.Tensor) and h.is_floating_point() and h.dim() >= 2):
                return
            mask = state.get("mask")
            if mask is not None and mask.numel() != h.numel() // h.shape[-1]:
                mask = None
            check_finite(h, mask, f"the output of {name} ({what}, calibration batch {state.get('batch', 0)})")
        return hook
    return [m.register_forward_hook(make(name)) for name, m in layers]


def run_layer(layer: nn.Module, hidden: torch.Tensor, call: LayerCall, device: torch.device,
              mask: torch.Tensor | None, where: str) -> torch.Tensor:
    """``layer(hidden, *call.args, **call.kwargs)`` on ``device``; the output checked for NaN/Inf."""
    to_dev = {}

    def move(t):
        if id(t) not in to_dev:
            to_dev[id(t)] = t.to(device, non_blocking=True)
        return to_dev[id(t)]
    args = _map_tensors(call.args, move)
    kwargs = _map_tensors(call.kwargs, move)
    out = layer(hidden.to(device), *args, **kwargs)
    if isinstance(out, (tuple, list)):
        out = out[0]
    check_finite(out, mask, where)
    return out
