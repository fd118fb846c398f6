"""End-to-end SkMM selection from the per-sample gradients of a network's last two layers.

Measured
--------
The gradient shape of ResNet18's last two layers: a 512 -> 512 3x3 convolution on 7 x 7 maps
and a 512 -> 196 linear head (r = 2,359,808 + 100,548 = 2.46M parameters with biases).  Inputs
are random 512 x 7 x 7 feature maps with random labels (the selection cost does not depend on
the values).  N = 16,384 samples on a GPU (2,048 on a CPU, where this is a smoke run), m = 512,
k = 8, n = N / 16.

Three timings in one run, on the same batches:

* ``floor``: one plain forward + backward of the two layers per batch (no hooks, gradients of
  the layer weights only) -- what computing the per-sample gradients can at best cost;
* ``sketch``: :func:`sketchprune.select.model_gradient_sketch` (hooks + ``outer_sketch`` per
  layer, the N x m sketch brought to host memory);
* ``solve``: :func:`sketchprune.select.select` with ``method="skmm"`` on the sketch.

``extra_info`` holds the three times, ``overhead_frac`` = (end-to-end - floor) / end-to-end
(target: under 0.25), and the peak accelerator memory of the sketching pass (GPU) next to what
the N x r gradient matrix alone would take in float32 (never formed).
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from sketchprune.select import model_gradient_sketch, select


def _head(device):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(512, 196)).to(device)


def _batches(N, bs, device):
    g = torch.Generator().manual_seed(1)
    out = []
    for s in range(0, N, bs):
        b = min(bs, N - s)
        out.append((torch.randn(b, 512, 7, 7, generator=g).to(device),
                    torch.randint(0, 196, (b,), generator=g).to(device)))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def test_select_last_two_layers(benchmark, device):
    N = 16_384 if device.type == "cuda" else 2_048
    bs = 512 if device.type == "cuda" else 256
    m, k, n = 512, 8, N // 16
    model = _head(device)
    layers = [model[0], model[4]]
    batches = _batches(N, bs, device)
    params = [p for l in layers for p in l.parameters()]
    r = sum(p.numel() for p in params)
    loss = nn.CrossEntropyLoss(reduction="none")
    info = {}

    def floor():
        for x, y in batches:
            torch.autograd.grad(loss(model(x), y).sum(), params)
        _sync(device)

    def run():
        floor()  # warm-up (kernels, allocator)
        t0 = time.perf_counter()
        floor()
        t1 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        sk, sk_info = model_gradient_sketch(model, layers, batches, loss, m=m, k=k, seed=0)
        _sync(device)
        t2 = time.perf_counter()
        peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
        sel = select(n, "skmm", sk.to(device), seed=0)
        _sync(device)
        t3 = time.perf_counter()
        total = t3 - t1
        info.update(floor_s=t1 - t0, sketch_s=t2 - t1, solve_s=t3 - t2, end_to_end_s=total,
                    overhead_frac=(total - (t1 - t0)) / total, r=r, N=N, m=m, k=k, n=n,
                    sketch_peak_bytes=peak, dense_gradient_bytes=4 * N * r,
                    selected=len(sel.indices), solver_converged=sel.info.get("converged"))

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert info["selected"] == n
    benchmark.extra_info.update(info, details=dict(info), op="select_e2e", case=f"N={N} r={r} m={m} n={n}", impl="skmm",
                                kind="sketchprune", backend="sketchprune", device=str(device),
                                median_s=info["end_to_end_s"])
