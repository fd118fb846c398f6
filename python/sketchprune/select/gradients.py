"""Per-sample gradient sketches from models, without forming the N x r gradient matrix.

* :func:`linear_probe_sketch` -- a linear head W x + b on frozen features with softmax
  cross-entropy: the per-sample weight gradient is (p - y) x^T, sketched with the fused
  :func:`sketchprune.outer_sketch` (T = 1); the bias gradient p - y follows at offset C * d.
* :func:`model_gradient_sketch` -- the last layers of any torch model: forward hooks capture each
  selected ``nn.Linear`` / ``nn.Conv2d`` layer's input, a gradient hook on its output the output gradient, and each
  layer's per-sample weight gradient sum_t d_t^T a_t (Conv2d through unfolded patches, t = spatial
  positions) is sketched with ``outer_sketch`` at its own offset, bias gradients with
  ``sparse_sign_sketch``; all layers land in one m-dimensional space.  The model runs in eval mode
  (batch statistics must not mix samples) and the loss is summed over the batch, so each sample's
  output gradient is its own.

The layout of the sketched vector follows the parameters in the order given: for each layer, its
weight (row-major over (out, in[, kh, kw])) then its bias.
"""

from __future__ import annotations


import torch
from torch import nn

from ..ops import outer_sketch, sparse_sign_sketch
from .._progress import progress_bar


def _labels(labels, n, num_classes, gen):
    if isinstance(labels, str):
        if labels != "random":
            raise ValueError(f"labels must be a tensor or 'random', got {labels!r}")
        return torch.randint(0, num_classes, (n,), generator=gen)
    return torch.as_tensor(labels).long()


def linear_probe_sketch(features: torch.Tensor, labels, num_classes: int, m: int, k: int = 8, seed: int = 0,
                        init: str = "zeros", bias: bool = True, chunk: int = 4096) -> tuple[torch.Tensor, dict]:
    """Sketch of the per-sample gradients of a linear softmax head at initialisation.

    ``labels``: a tensor of class indices, or ``"random"`` (as in the original SkMM experiments).
    ``init``: ``"zeros"`` (p uniform) or ``"random"`` (W ~ N(0, 1/d), drawn from ``seed``).
    """
    N, d = features.shape
    gen = torch.Generator().manual_seed(seed)
    y = _labels(labels, N, num_classes, gen)
    W = torch.zeros(num_classes, d) if init == "zeros" else torch.randn(num_classes, d, generator=gen) / d**0.5
    if init not in ("zeros", "random"):
        raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
    W = W.to(features.device)
    out = torch.empty(N, m, dtype=torch.float32)
    for i in range(0, N, chunk):
        x = features[i:i + chunk].float()
        p = torch.softmax(x @ W.T, dim=1)
        err = p - nn.functional.one_hot(y[i:i + chunk].to(x.device), num_classes).float()
        s = outer_sketch(x, err, m, k, seed, 0)
        if bias:
            s += sparse_sign_sketch(err, m, k, seed, num_classes * d)
        out[i:i + chunk] = s.cpu()
    return out, {"source": "linear-probe", "labels": labels if isinstance(labels, str) else "given",
                 "init": init, "r": num_classes * d + (num_classes if bias else 0), "m": m, "k": k, "seed": seed}


def _param_size(mod: nn.Module) -> tuple[int, int]:
    w = mod.weight.numel()
    b = mod.bias.numel() if mod.bias is not None else 0
    return w, b


class _Capture:
    def __init__(self, layers):
        self.layers = layers
        self.inputs, self.grads = {}, {}
        self.handles = []

    def __enter__(self):
        for i, mod in enumerate(self.layers):
            self.handles.append(mod.register_forward_hook(lambda m_, a, o, i=i: self._forward(i, a[0], o)))
        return self

    def _forward(self, i, a, o):
        self.inputs[i] = a.detach()
        if o.requires_grad:  # the gradient w.r.t. this layer's output, when backward reaches it
            o.register_hook(lambda g, i=i: self.grads.__setitem__(i, g.detach()))

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _as_tokens(mod: nn.Module, a: torch.Tensor, d: torch.Tensor):
    """(N, T, d_in), (N, T, d_out) views of a layer's input and output gradient."""
    n = a.shape[0]
    if isinstance(mod, nn.Linear):
        return a.reshape(n, -1, a.shape[-1]), d.reshape(n, -1, d.shape[-1])
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise ValueError("grouped convolutions are not supported by model_gradient_sketch")
        cols = nn.functional.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
        return cols.transpose(1, 2), d.reshape(n, d.shape[1], -1).transpose(1, 2)
    raise TypeError(f"model_gradient_sketch supports nn.Linear and nn.Conv2d layers, got {type(mod).__name__}")


def model_gradient_sketch(model: nn.Module, layers, batches, loss_fn, m: int, k: int = 8, seed: int = 0,
                          progress: bool = False) -> tuple[torch.Tensor, dict]:
    """Sketch per-sample gradients of the parameters of ``layers`` (Linear / Conv2d modules of
    ``model``) over ``batches`` of (inputs, targets); ``loss_fn(outputs, targets)`` must return
    per-sample losses (reduction="none")."""
    layers = list(layers)
    if not layers:
        raise ValueError("give at least one layer to sketch")
    offsets, off = [], 0
    for mod in layers:
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"model_gradient_sketch supports nn.Linear and nn.Conv2d layers, got {type(mod).__name__}")
        w, b = _param_size(mod)
        offsets.append(off)
        off += w + b
    was_training = model.training
    saved = [(p, p.requires_grad) for mod in layers for p in mod.parameters(recurse=False)]
    rows = []
    bar = progress_bar(progress, desc="gradient sketch", unit="batch")
    try:
        model.eval()
        for p, _ in saved:
            p.requires_grad_(True)
        for inputs, targets in batches:
            with _Capture(layers) as cap:
                losses = loss_fn(model(inputs), targets)
                if losses.dim() != 1:
                    raise ValueError("loss_fn must return one loss per sample (use reduction='none')")
                # gradients only as far as the sketched layers; nothing is accumulated in .grad
                torch.autograd.grad(losses.sum(), [p for p, _ in saved])
            sk = None
            for i, mod in enumerate(layers):
                a, d = _as_tokens(mod, cap.inputs[i], cap.grads[i])
                part = outer_sketch(a.contiguous(), d.contiguous(), m, k, seed, offsets[i])
                if mod.bias is not None:
                    part += sparse_sign_sketch(d.sum(1).contiguous(), m, k, seed, offsets[i] + mod.weight.numel())
                sk = part if sk is None else sk + part
            rows.append(sk.cpu())
            if bar is not None:
                bar.update(1)
    finally:
        model.train(was_training)
        for p, flag in saved:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
    return torch.cat(rows), {"source": "model-gradients", "layers": [type(l).__name__ for l in layers],
                             "r": off, "m": m, "k": k, "seed": seed}
