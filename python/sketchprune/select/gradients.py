"""Per-sample gradient sketches from models, without forming the N x r gradient matrix.

* :func:`linear_probe_sketch` -- a linear head W x + b on frozen features with softmax
  cross-entropy: the per-sample weight gradient is (p - y) x^T, sketched with the fused
  :func:`sketchprune.outer_sketch` (T = 1); the bias gradient p - y follows at offset C * d.
* :func:`model_gradient_sketch` -- the last ``nn.Linear`` / ``nn.Conv2d`` layers of any torch
  model.  A layer's per-sample weight gradient is sum_t d_t^T a_t (a_t its input tokens -- for
  a convolution the unfolded patches, t the output positions -- and d_t the gradient of the loss
  with respect to its output), its bias gradient sum_t d_t; both are sketched straight from
  (a, d) by ``outer_sketch`` / ``sparse_sign_sketch`` at the layer's own offset, so all layers
  land in one m-dimensional space and no per-sample gradient is ever formed.

How the gradient pass works (and what it costs):

* During the pass every parameter of the model is frozen (``requires_grad`` off, restored
  afterwards) and the model is in eval mode (batch statistics must not mix samples; restored).
  A forward pre-hook gives a sketched layer whose input does not require grad a detached copy
  of that input that does (a view, no data copied), so autograd records the graph only from the
  earliest sketched layer on.
* A forward hook keeps the layer's input and the *gradient edge* of its output
  (``torch.autograd.graph.get_gradient_edge``): the node that produced the output, as it left the
  layer.  Later in-place changes of the output (``nn.ReLU(inplace=True)``, ``x += shortcut``)
  rewrite the tensor's history but not that edge, so the gradient taken there is the gradient
  with respect to the layer's output itself.
* ``torch.autograd.grad(losses.sum(), edges)`` computes only what is needed to reach those
  edges: no weight gradient, no gradient into or below the earliest sketched layer.  The loss is
  summed over the batch, so each sample's output gradient is its own.
* A layer called several times in one forward (weight sharing) contributes the sum of its
  uses, which is its true per-sample gradient; a layer never called, a layer whose output does
  not reach the loss, a weight shared with a module that is not sketched, and an input modified
  in place after the layer ran are errors naming the layer.
* Convolutions: patches are cut from the (padded) input with one strided copy, in the weight's
  (in, kh, kw) order (grouped convolutions: one ``outer_sketch`` per group on a column block of
  the same patches, no further copy); the output gradient is made position-major (N, T, out) --
  free when it is channels-last.  Linear layers pass their input and output gradient as they are.
* Memory: the per-layer workspaces (patches, the transposed output gradient, partial sketches)
  are planned from ``budget`` (default: the active ``sketchprune.limit_memory`` budget, else free
  memory); a batch whose workspace does not fit is sketched in slices of samples, and a budget
  too small for one sample raises ``BudgetError`` before anything is allocated.  Sketch rows stay
  on the device until a block of rows is complete, then go to the host in one copy (pinned and
  asynchronous on CUDA), into ``out`` (e.g. a ``numpy.memmap`` for large N) or into host memory.

The layout of the sketched vector follows the parameters in the order given: for each layer, its
weight (row-major over (out, in[, kh, kw]), i.e. ``weight.flatten()``) then its bias.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from ..budget import Budget, active_budget, limit_memory
from ..ops import outer_sketch, sparse_sign_sketch
from ..ops._common import sketch_ints
from ..ops.sketch import outer_sketch_workspace, sparse_sign_sketch_workspace
from .._progress import progress_bar
from ._checks import check_labels
from .sources import _block, check_dtype


def _labels(labels, n, num_classes, gen):
    if isinstance(labels, str):
        if labels != "random":
            raise ValueError(f"labels must be a tensor or 'random', got {labels!r}")
        return torch.randint(0, num_classes, (n,), generator=gen)
    return check_labels(labels, n, num_classes)


def linear_probe_sketch(features, labels, num_classes: int, m: int, k: int = 8, seed: int = 0,
                        init: str = "zeros", bias: bool = True, chunk: int | None = None, budget=None,
                        progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Sketch of the per-sample gradients of a linear softmax head at initialisation.

    ``features``: an N x d tensor (CPU or CUDA) or numpy array / memmap (read a block of rows at a
    time, in either byte order; never copied whole).  ``labels``: a tensor of class indices, or
    ``"random"`` (as in the original SkMM experiments).  ``init``: ``"zeros"`` (p uniform) or
    ``"random"`` (W ~ N(0, 1/d), drawn from ``seed``).  Returns the N x m float32 sketch in host
    memory and a record of the sketch.

    Rows are processed in blocks planned from ``budget`` (default: the active
    ``sketchprune.limit_memory`` budget, else free memory) on the features' device: each block's
    float32 features, logits, errors and sketch rows plus the sketch ops' own workspace; at most
    ``chunk`` rows per block when given.  A budget too small for one row is a ``BudgetError``
    before any work.
    """
    if init not in ("zeros", "random"):
        raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
    if isinstance(features, np.ndarray):        # numpy arrays and memmaps, like sketch_matrix
        check_dtype(features, "features")
    elif isinstance(features, torch.Tensor):
        check_dtype(features, "features")
        features = features.detach()
    else:
        raise ValueError(f"features must be a 2-D tensor or numpy array (N x d), got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D tensor or numpy array (N x d), got shape {tuple(features.shape)}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
    m, k, seed, _ = sketch_ints("linear_probe_sketch", m, k, seed, 0)
    N, d = (int(v) for v in features.shape)
    C = num_classes
    device = features.device if isinstance(features, torch.Tensor) else torch.device("cpu")
    budget = active_budget() if budget is None else Budget.of(budget)
    gen = torch.Generator().manual_seed(seed)
    y = _labels(labels, N, C, gen)
    # per row on the device: the source block and its float32 copy, logits / probabilities / errors
    # (float32) and the one-hot (int64), the weight and bias sketch rows; fixed: the probe's
    # weights and the sketch ops' largest workspace for any block of rows
    src = features.element_size() if isinstance(features, torch.Tensor) else features.dtype.itemsize
    per = src * d + 4 * d + 12 * C + 8 * C + 8 * m
    cap = N if chunk is None else min(N, chunk)
    work = outer_sketch_workspace(cap, 1, d, C, m, k, device=device, any_rows=True)
    if bias:
        work = max(work, sparse_sign_sketch_workspace(cap, C, m, k, device=device, any_rows=True))
    rows = min(cap, budget.plan_rows(device, per, N, fixed_bytes=4 * C * d + work,
                                     what=f"linear_probe_sketch ({N} x {d} features, {C} classes, m = {m})"))
    rows = max(1, min(rows, 16384))
    W = torch.zeros(C, d) if init == "zeros" else torch.randn(C, d, generator=gen) / d**0.5
    W = W.to(device)
    out = torch.empty(N, m, dtype=torch.float32)
    bar = progress_bar(progress, total=N, desc="linear-probe sketch", unit="row")
    with limit_memory(budget):                  # the sketch ops plan their workspaces within it
        for i in range(0, N, rows):
            j = min(N, i + rows)
            x = _rows(features, i, j, device)
            p = torch.softmax(x @ W.T, dim=1)
            err = p - nn.functional.one_hot(y[i:j].to(device), C).float()
            s = outer_sketch(x, err, m, k, seed, 0)
            if bias:
                s += sparse_sign_sketch(err, m, k, seed, C * d)
            out[i:j] = s.cpu()
            if bar is not None:
                bar.update(j - i)
    if bar is not None:
        bar.close()
    return out, {"source": "linear-probe", "labels": labels if isinstance(labels, str) else "given",
                 "init": init, "r": C * d + (C if bias else 0), "m": m, "k": k, "seed": seed,
                 "rows_per_block": rows, "budget": repr(budget)}


def _rows(features, i: int, j: int, device) -> torch.Tensor:
    """Rows i:j of the features as float32 on ``device`` (a numpy block converted on its own)."""
    return _block(features, i, j, 0, features.shape[1], device).float()


_LAYER_TYPES = (nn.Linear, nn.Conv2d)
_FLUSH_BYTES = 64 * 2**20  # sketch rows go to the host in blocks of about this many bytes (GPU)


# ----------------------------------------------------------------------------- layers and hooks
def _layer_names(model: nn.Module, layers) -> list[str]:
    """Each layer's name in ``model`` (``layers[i]`` when it is not a submodule); checks types."""
    known = {id(mod): (name or "<model>") for name, mod in model.named_modules()}
    names, seen = [], set()
    for i, mod in enumerate(layers):
        if not isinstance(mod, _LAYER_TYPES):
            raise TypeError(f"model_gradient_sketch supports nn.Linear and nn.Conv2d layers, got "
                            f"{type(mod).__name__} (layers[{i}])")
        name = known.get(id(mod), f"layers[{i}]")
        _check_plain(mod, name)
        if id(mod) in seen:
            raise ValueError(f"layer {name!r} is given twice")
        seen.add(id(mod))
        names.append(name)
    return names


def _check_plain(mod: nn.Module, name: str) -> None:
    """The sketch is of ``F.linear`` / ``F.conv2d`` of the layer's own input, weight and bias: a
    subclass with its own forward (a rescaled or standardised weight, padding done inside) or a
    parametrized weight (weight_norm) computes something else, and the sketch would be wrong."""
    from torch.nn.utils import parametrize

    base = nn.Linear if isinstance(mod, nn.Linear) else nn.Conv2d
    own = type(mod).forward is not base.forward or (base is nn.Conv2d and type(mod)._conv_forward
                                                     is not nn.Conv2d._conv_forward)
    if own or parametrize.is_parametrized(mod):
        what = "has a parametrized weight" if not own else f"is a {type(mod).__name__} with its own forward"
        raise TypeError(f"layer {name!r} {what}; the gradient sketch takes the layer as a plain {base.__name__} of "
                        f"its input, weight and bias, which it does not compute (sketch a plain {base.__name__}, or "
                        "remove the parametrization first)")


def _check_shared(model: nn.Module, layers, names) -> None:
    """A sketched parameter that another module also holds (tied weights) would get only part of
    its per-sample gradient; a module called several times is fine (its uses are summed)."""
    holders: dict[int, list[str]] = {}
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            holders.setdefault(id(p), []).append(name or "<model>")
    for name, mod in zip(names, layers):
        for pname, p in mod.named_parameters(recurse=False):
            others = [h for h in holders.get(id(p), []) if h != name]
            if others:
                raise ValueError(f"the {pname} of layer {name!r} is shared with module {others[0]!r}; its per-sample "
                                 "gradient would miss that module's contribution (sketch a layer whose parameters "
                                 "no other module holds)")


class _Capture:
    """Hooks on the sketched layers for one forward: per call, the layer's input (and its version
    counter) and the gradient edge of its output as it left the layer."""

    def __init__(self, layers, names):
        self.layers, self.names = layers, names
        self.calls: list[list[tuple]] = [[] for _ in layers]
        self.handles = []

    def __enter__(self):
        for i, mod in enumerate(self.layers):
            # the pre-hook runs after the caller's (it sees the input the layer computes with), the
            # forward hook before the caller's (it sees the output as the layer made it, before a
            # hook of theirs replaces it): the gradient is the layer's own
            self.handles.append(mod.register_forward_pre_hook(self._pre))
            self.handles.append(mod.register_forward_hook(lambda mod_, args, out, i=i: self._post(i, args, out),
                                                          prepend=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    @staticmethod
    def _pre(mod, args):
        # an input without grad (the earliest sketched layer): a detached alias that requires grad,
        # so the layer's output gets a gradient edge while nothing below it is recorded
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not x.requires_grad and torch.is_grad_enabled():
            x = (x.clone() if x.is_inference() else x.detach()).requires_grad_()
            return (x, *args[1:])
        return None

    def _post(self, i, args, out):
        name = self.names[i]
        if not args:
            raise ValueError(f"layer {name!r} was called with its input as a keyword argument (e.g. layer(input=x)), "
                             "which its hooks do not see; call it with the input as the first positional argument")
        if not isinstance(out, torch.Tensor) or out.grad_fn is None:
            raise RuntimeError(f"layer {name!r} ran with gradients disabled (torch.no_grad() inside the model's "
                               "forward?), so the gradient with respect to its output cannot be taken")
        x = args[0]
        self.calls[i].append((x.detach(), x._version, get_gradient_edge(out)))


def _output_grads(losses, cap: _Capture) -> list[list[torch.Tensor]]:
    """d loss / d output of every call of every sketched layer, in one backward that stops at them."""
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return one loss per sample (use reduction='none'), got {shape}")
    n = losses.shape[0]
    for name, calls in zip(cap.names, cap.calls):
        if not calls:
            raise ValueError(f"layer {name!r} was not called by the model's forward; every sketched layer must be used")
        for x, _, _ in calls:
            if x.dim() < 2 or x.shape[0] != n:
                raise ValueError(f"layer {name!r} got an input of shape {tuple(x.shape)} but loss_fn returned {n} "
                                 "losses; the inputs of sketched layers must be batch-first (samples along dim 0)")
    if not losses.requires_grad:
        raise ValueError("the losses do not depend on the outputs of the sketched layers")
    edges = [e for calls in cap.calls for (_, _, e) in calls]
    flat = torch.autograd.grad(losses.sum(), edges, allow_unused=True)
    grads, j = [], 0
    for name, calls in zip(cap.names, cap.calls):
        gs = list(flat[j:j + len(calls)])
        j += len(calls)
        if any(g is None for g in gs):
            raise ValueError(f"the output of layer {name!r} does not reach the loss (its gradient is undefined)")
        grads.append(gs)
    return grads


# ----------------------------------------------------------------------------- per-layer sketch
def _dtype(x: torch.Tensor, g: torch.Tensor) -> torch.dtype:
    """outer_sketch takes bf16 / fp16 / fp32 inputs of one dtype; anything else is sketched in fp32."""
    ok = (torch.float32, torch.float16, torch.bfloat16)
    return x.dtype if x.dtype == g.dtype and x.dtype in ok else torch.float32


def _conv_patches(mod: nn.Conv2d, x: torch.Tensor, cache: dict) -> torch.Tensor:
    """(N, L, C * kh * kw) patches of x in the weight's (in, kh, kw) order, after the layer's own
    padding (zeros, 'same', reflect, replicate, circular): one ``index_select`` per batch with a
    per-geometry index of the patch elements within a sample (measured about 2x faster on CPU than
    ``unfold`` + transpose or a strided copy, whose inner loops run over kw only)."""
    pad = mod._reversed_padding_repeated_twice
    if mod.padding_mode != "zeros":
        x = nn.functional.pad(x, pad, mode=mod.padding_mode)
    elif any(pad):
        x = nn.functional.pad(x, pad)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = mod.kernel_size, mod.stride, mod.dilation
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"Conv2d input of shape {tuple(x.shape)} (padded) is smaller than the kernel")
    _, s_c, s_h, s_w = x.stride()
    span = 1 + (c - 1) * s_c + (h - 1) * s_h + (w - 1) * s_w  # one sample's elements, whatever the layout
    key = (x.device, c, h, w, s_c, s_h, s_w, kh, kw, sh, sw, dh, dw)
    idx = cache.get(key)
    if idx is None:
        base = torch.arange(span, dtype=torch.int64, device=x.device)
        idx = base.as_strided((ho, wo, c, kh, kw), (s_h * sh, s_w * sw, s_c, s_h * dh, s_w * dw)).reshape(-1)
        idx = cache[key] = idx.to(torch.int32 if span < 2**31 else torch.int64)
    rows = x.as_strided((n, span), (x.stride(0), 1), x.storage_offset())
    return torch.index_select(rows, 1, idx).view(n, ho * wo, c * kh * kw)


def _kernel_workspace(mod, x, g, dt, m, k, n) -> int:
    """Bytes the sketch kernels allocate themselves for one call of ``mod`` (the largest over every
    row count up to ``n``: per-thread buffers, and with few rows per-chunk partials)."""
    device = x.device
    if isinstance(mod, nn.Conv2d):
        t = g[0, 0].numel()
        cols = x.shape[1] * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups
        d_out = g.shape[1] // mod.groups
    else:
        d_out, cols = g.shape[-1], x.shape[-1]
        t = x[0].numel() // cols
    ws = outer_sketch_workspace(n, t, cols, d_out, m, k, dt, device, any_rows=True)
    if mod.bias is not None:   # the bias gradient's sketch runs after the weight's
        ws = max(ws, sparse_sign_sketch_workspace(n, g.shape[1] if isinstance(mod, nn.Conv2d) else d_out,
                                                  m, k, torch.float32, device, any_rows=True))
    return ws


def _workspace(mod, x, g, dt, m, k=8, n=1) -> tuple[int, int]:
    """(fixed bytes, bytes per sample) of device workspace for sketching one call of ``mod``
    (``n`` samples at most per kernel call), the sketch kernels' own workspace included."""
    es = torch.empty((), dtype=dt).element_size()
    out_ch = g.shape[1] if isinstance(mod, nn.Conv2d) else g.shape[-1]
    per, fixed = 4 * (2 * m + out_ch), _kernel_workspace(mod, x, g, dt, m, k, n)  # partial sketches, bias gradient
    if isinstance(mod, nn.Conv2d):
        t, cols = g[0, 0].numel(), x.shape[1] * mod.kernel_size[0] * mod.kernel_size[1]
        pad = mod._reversed_padding_repeated_twice
        padded = x.shape[1] * (x.shape[2] + pad[2] + pad[3]) * (x.shape[3] + pad[0] + pad[1])
        per += es * (t * cols + padded)  # patches; the padded (or cast) input
        fixed += 8 * t * cols  # the patch index (kept for the pass)
        if g.flatten(2).transpose(1, 2).stride(-1) != 1 or g.dtype != dt:
            per += es * t * out_ch  # position-major output gradient
    else:
        for t in (x, g):
            if t.stride(-1) != 1 or t.dtype != dt:
                per += es * t[0].numel()
    return fixed, per


def _sketch_call(mod, x, g, m, k, seed, offset, sk, rows, cache):
    """sk[n] += sketch of this call's gradient of (weight, bias) for samples n, ``rows`` at a time."""
    n = x.shape[0]
    dt = _dtype(x, g)
    wsize = mod.weight.numel()
    for s0 in range(0, n, rows):
        s1 = min(n, s0 + rows)
        xs, gs = x[s0:s1].to(dt), g[s0:s1].to(dt)
        if isinstance(mod, nn.Conv2d):
            a = _conv_patches(mod, xs, cache)
            d = gs.flatten(2).transpose(1, 2)
            if d.stride(-1) != 1:
                d = d.contiguous()
            groups = mod.groups
            kg, og = a.shape[2] // groups, d.shape[2] // groups
            for j in range(groups):  # grouped: weight rows of group j are one contiguous block
                sk[s0:s1] += outer_sketch(a[..., j * kg:(j + 1) * kg], d[..., j * og:(j + 1) * og], m, k, seed,
                                          offset + j * og * kg)
        else:
            a = xs.reshape(s1 - s0, -1, xs.shape[-1])
            d = gs.reshape(s1 - s0, -1, gs.shape[-1])
            sk[s0:s1] += outer_sketch(a, d, m, k, seed, offset)
        if mod.bias is not None:
            sk[s0:s1] += sparse_sign_sketch(d.sum(1, dtype=torch.float32), m, k, seed, offset + wsize)


# ----------------------------------------------------------------------------- rows to the host
class _RowSink:
    """Sketch rows of successive batches: kept on the device until a block of about
    ``_FLUSH_BYTES`` is complete, then one host copy (pinned, asynchronous on CUDA, overlapping the
    next batches) into ``out`` (N x m tensor / numpy array / memmap) or into host chunks."""

    def __init__(self, m: int, device: torch.device, out):
        self.m, self.device = m, device
        self.pending, self.n_pending, self.done = [], 0, 0
        self.chunks, self.inflight = [], None
        self.flush_rows = 1 if device.type == "cpu" else max(1, _FLUSH_BYTES // (4 * m))
        self.out = None
        if out is not None:
            t = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != m or t.dtype != torch.float32 \
                    or t.device.type != "cpu":
                raise ValueError(f"out must be a float32 host matrix (tensor, numpy array or memmap) of shape (N, {m}), "
                                 f"got {type(out).__name__} {tuple(getattr(out, 'shape', ()))} "
                                 f"{getattr(out, 'dtype', '')}")
            self.out = t

    def pending_bytes(self) -> int:
        return 0 if self.device.type == "cpu" else 8 * self.n_pending * self.m  # rows + their concatenation

    def add(self, rows: torch.Tensor) -> None:
        self.pending.append(rows)
        self.n_pending += rows.shape[0]
        if self.n_pending >= self.flush_rows:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        block = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending)
        self.pending, self.n_pending = [], 0
        r0 = self.done
        self.done += block.shape[0]
        if self.out is not None and self.done > self.out.shape[0]:
            raise ValueError(f"out has {self.out.shape[0]} rows, but the batches hold more samples")
        if block.device.type == "cpu":
            self._store(r0, block)
            return
        host = torch.empty(block.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(block, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(block.device))
        self._drain()
        self.inflight = (event, host, r0)

    def _drain(self) -> None:
        if self.inflight is not None:
            event, host, r0 = self.inflight
            self.inflight = None
            event.synchronize()
            self._store(r0, host if self.out is not None else host.clone())  # pinned staging is released

    def _store(self, r0: int, rows: torch.Tensor) -> None:
        if self.out is None:
            self.chunks.append(rows)
        else:
            self.out[r0:r0 + rows.shape[0]] = rows

    def finish(self) -> torch.Tensor:
        self._flush()
        self._drain()
        if self.out is not None:
            if self.done != self.out.shape[0]:
                raise ValueError(f"out has {self.out.shape[0]} rows, but the batches held {self.done} samples")
            return self.out
        if not self.chunks:
            return torch.zeros(0, self.m, dtype=torch.float32)
        return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)


# ----------------------------------------------------------------------------- entry point
def model_gradient_sketch(model: nn.Module, layers, batches, loss_fn, m: int, k: int = 8, seed: int = 0,
                          progress: bool = False, budget=None, out=None) -> tuple[torch.Tensor, dict]:
    """Sketch per-sample gradients of the parameters of ``layers`` (``nn.Linear`` / ``nn.Conv2d``
    modules of ``model``, each called with batch-first inputs) over ``batches`` of (inputs, targets);
    ``loss_fn(outputs, targets)`` must return per-sample losses (reduction="none").

    ``budget``: caps the sketch pass's own device workspace (default: the active
    ``sketchprune.limit_memory`` budget, else free memory); batches whose workspace does not fit
    are sketched in slices of samples.  ``out``: an optional float32 N x m host matrix (tensor,
    numpy array or ``numpy.memmap``) that receives the sketch, for N too large to hold twice in
    memory; N must equal the number of samples in ``batches``.  Returns (N x m float32 sketch on
    the host, record)."""
    layers = list(layers)
    if not layers:
        raise ValueError("give at least one layer to sketch")
    m, k, seed, _ = sketch_ints("model_gradient_sketch", m, k, seed, 0)
    names = _layer_names(model, layers)
    _check_shared(model, layers, names)
    offsets, off = [], 0
    for mod in layers:
        offsets.append(off)
        off += mod.weight.numel() + (mod.bias.numel() if mod.bias is not None else 0)
    budget = active_budget() if budget is None else Budget.of(budget)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("model_gradient_sketch needs gradients: call it outside torch.inference_mode()")
    params = {id(p): p for p in [*model.parameters(), *(p for mod in layers for p in mod.parameters())]}
    saved = [(p, p.requires_grad) for p in params.values()]
    # every module's own mode (model.train(flag) would reset the submodules a caller set apart)
    modules = {id(mod): mod for mod in [*model.modules(), *(m_ for mod in layers for m_ in mod.modules())]}
    training = [(mod, mod.training) for mod in modules.values()]
    sink, n_batches, plan = None, 0, {"rows": None, "workspace_bytes": 0, "index": {}}
    bar = progress_bar(progress, desc="gradient sketch", unit="batch")
    try:
        model.eval()
        for mod in layers:
            mod.eval()
        for p, _ in saved:  # no parameter gradient is needed; nothing below the sketched layers is recorded
            p.requires_grad_(False)
        for batch in batches:
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                got = f"a {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                raise ValueError(f"batch {n_batches} is {got}; batches must be (inputs, targets) pairs (for a dataset "
                                 "of dicts or with extra fields, map each batch to that pair first)")
            inputs, targets = batch
            with torch.enable_grad(), _Capture(layers, names) as cap:
                losses = loss_fn(model(inputs), targets)
                if losses.dim() >= 1 and losses.shape[0] == 0:   # an empty batch adds no rows
                    n_batches += 1
                    continue
                grads = _output_grads(losses, cap)
            if sink is None:
                sink = _RowSink(m, losses.device, out)
            sink.add(_sketch_batch(layers, names, offsets, cap.calls, grads, m, k, seed, budget, sink, plan))
            del cap, grads, losses
            n_batches += 1
            if bar is not None:
                bar.update(1)
        sketch = sink.finish() if sink is not None else _RowSink(m, torch.device("cpu"), out).finish()
    finally:
        for mod, flag in training:
            mod.training = flag
        for p, flag in saved:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    return sketch, {"source": "model-gradients", "layers": [type(l).__name__ for l in layers], "layer_names": names,
                    "r": off, "m": m, "k": k, "seed": seed, "N": int(sketch.shape[0]), "batches": n_batches,
                    "budget": repr(budget), "sample_rows": plan["rows"], "workspace_bytes": plan["workspace_bytes"]}


def _sketch_batch(layers, names, offsets, calls, grads, m, k, seed, budget, sink, plan) -> torch.Tensor:
    """The (n, m) device sketch of one batch: every call of every layer, at the layer's offset."""
    x0 = calls[0][0][0]
    n, device = x0.shape[0], x0.device
    sk = torch.zeros(n, m, dtype=torch.float32, device=device)
    fixed = sink.pending_bytes() + 4 * n * m
    for mod, name, offset, layer_calls, layer_grads in zip(layers, names, offsets, calls, grads):
        for (x, version, _), g in zip(layer_calls, layer_grads):
            if x._version != version:
                raise RuntimeError(f"the input of layer {name!r} was modified in place after the layer ran, so the "
                                   "captured input is not the one the layer saw; make that operation out of place")
            extra, per = _workspace(mod, x, g, _dtype(x, g), m, k, n)
            rows = budget.plan_rows(device, per, n, fixed_bytes=fixed + extra,
                                    what=f"model_gradient_sketch (layer {name!r})")
            if rows < n:        # the batch is sketched in slices of `rows` samples
                plan["rows"] = rows if plan["rows"] is None else min(plan["rows"], rows)
            plan["workspace_bytes"] = max(plan["workspace_bytes"], fixed + extra + rows * per)
            with limit_memory(budget):
                _sketch_call(mod, x, g, m, k, seed, offset, sk, rows, plan["index"])
    return sk
