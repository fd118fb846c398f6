"""End-to-end SkMM selection from the per-sample gradients of a network's last layers.

Two cases, each timed in one run on the same batches:

* ``test_select_last_two_layers`` -- the gradient shape of ResNet18's last two layers: a
  512 -> 512 3x3 convolution on 7 x 7 maps and a 512 -> 196 linear head (r = 2,359,808 +
  100,548 = 2.46M parameters with biases).  Inputs are random 512 x 7 x 7 feature maps with
  random labels (the selection cost does not depend on the values).  N = 16,384 samples on a GPU
  (2,048 on a CPU, where this is a smoke run), m = 512, k = 8, n = N / 16.
* ``test_select_small_cnn`` -- the Fashion-MNIST CNN of ``bench/selection_fmnist.py`` (conv
  1->16, conv 16->32, fc1 1568->64, fc2 64->10; fc1 + fc2 sketched, r = 101,066) on N = 6,000
  random 28 x 28 images in batches of 1,000, m = 256, k = 8, n = 1,000 -- the same shapes as that
  script's overhead record, with random weights and data.

Timings, repeated (2 on the ResNet shapes, 3 on the small CNN) with the three parts interleaved
so that changes in the load of a shared machine hit all three; the best of the repeats is
reported (the medians too):

* ``floor``: one plain forward + backward per batch (no hooks, gradients of the sketched
  layers' weights only) -- what computing the per-sample gradients can at best cost;
* ``sketch``: :func:`sketchprune.select.model_gradient_sketch` (hooks, output gradients,
  ``outer_sketch`` per layer, the N x m sketch brought to host memory);
* ``solve``: :func:`sketchprune.select.select` with ``method="skmm"`` on the sketch.

``extra_info`` holds the three times, ``overhead_frac`` = (end-to-end - floor) / end-to-end
(target: under 0.25), the sketch pass's planned workspace (``sketch_workspace_bytes``) and, on a
GPU, its measured peak memory, next to what the N x r gradient matrix alone would take in float32
(never formed).  ``per_batch`` times, on one batch, the model's (ResNet: the conv layer's)
forward alone and the native ``outer_sketch`` alone on the sketched layers' shapes (ResNet conv:
T = 49 positions, d_in = 4608, d_out = 512), to show how much of the remaining overhead is the
op itself.

Measured (CPU, 1 thread, a shared and loaded 2-core VM; ``bench/results/select-e2e-*``),
before -> after the output-edge gradient pass (no weight gradients, backward stops at the
earliest sketched layer, patches by one ``index_select``):

* ResNet shapes: floor 10.1 / 9.5 s, sketch 33.8 -> 22.3 s, solve 0.5 s: overhead 0.705 -> 0.582.
  ``outer_sketch`` of the conv layer alone takes 4.0-5.5x the conv's forward (4.4x in a separate
  interleaved measurement), i.e. more than the whole floor: the target is out of reach here
  without a faster native op (see docs/selection.md);
* small CNN: overhead 0.327 -> 0.240 (medians 0.28 -> 0.26: within the noise of this machine);
  the pass is the model's forward plus ``outer_sketch`` of fc1 at T = 1.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import sketchprune as sp
from sketchprune.select import model_gradient_sketch, select


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _random_batches(N, bs, shape, classes, device):
    g = torch.Generator().manual_seed(1)
    out = []
    for s in range(0, N, bs):
        b = min(bs, N - s)
        out.append((torch.randn(b, *shape, generator=g).to(device),
                    torch.randint(0, classes, (b,), generator=g).to(device)))
    return out


def _end_to_end(benchmark, device, model, layers, batches, m, k, n, case, repeats, extra=None):
    N = sum(x.shape[0] for x, _ in batches)
    params = [p for l in layers for p in l.parameters()]
    r = sum(p.numel() for p in params)
    loss = nn.CrossEntropyLoss(reduction="none")
    info, raw = {}, {"floor_s": [], "sketch_s": [], "solve_s": []}

    def floor():
        for x, y in batches:
            torch.autograd.grad(loss(model(x), y).sum(), params)
        _sync(device)

    def run():
        floor()  # warm-up (kernels, allocator)
        for _ in range(repeats):  # floor, sketch and solve alternate, so load changes hit all three
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
            for key, v in (("floor_s", t1 - t0), ("sketch_s", t2 - t1), ("solve_s", t3 - t2)):
                raw[key].append(v)
        # the best of the repeats: the least disturbed by other work on a shared machine
        best = {key: min(v) for key, v in raw.items()}
        total = best["sketch_s"] + best["solve_s"]
        med = {key: statistics.median(v) for key, v in raw.items()}
        med_total = med["sketch_s"] + med["solve_s"]
        info.update(best, end_to_end_s=total, overhead_frac=(total - best["floor_s"]) / total,
                    overhead_frac_median=(med_total - med["floor_s"]) / med_total, repeats=repeats, raw=raw,
                    r=r, N=N, m=m, k=k, n=n, sketch_peak_bytes=peak,
                    sketch_workspace_bytes=sk_info.get("workspace_bytes"), dense_gradient_bytes=4 * N * r,
                    selected=len(sel.indices), solver_converged=sel.info.get("converged"),
                    torch_threads=torch.get_num_threads())

    benchmark.pedantic(run, rounds=1, iterations=1)
    assert info["selected"] == n
    if extra is not None:
        info.update(extra())
    benchmark.extra_info.update(info, details=dict(info), op="select_e2e", case=case, impl="skmm",
                                kind="sketchprune", backend="sketchprune", device=str(device),
                                median_s=info["end_to_end_s"])


def _time(fn, device, reps=2):
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def test_select_last_two_layers(benchmark, device):
    N = 16_384 if device.type == "cuda" else 2_048
    bs = 512 if device.type == "cuda" else 256
    m, k, n = 512, 8, N // 16
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(512, 196)).to(device)
    batches = _random_batches(N, bs, (512, 7, 7), 196, device)

    def per_batch():
        """One batch: the conv's forward alone vs outer_sketch alone on the conv's (a, d) shapes."""
        x = batches[0][0]
        g = torch.Generator(device=device).manual_seed(2)
        a = torch.randn(x.shape[0], 49, 512 * 9, generator=g, device=device)
        d = torch.randn(x.shape[0], 49, 512, generator=g, device=device)
        with torch.no_grad():
            conv_s = _time(lambda: model[0](x), device)
        outer_s = _time(lambda: sp.outer_sketch(a, d, m, k, 0, 0), device)
        return {"batch": x.shape[0], "conv_forward_s": conv_s, "outer_sketch_conv_s": outer_s,
                "outer_sketch_over_conv_forward": outer_s / conv_s}

    _end_to_end(benchmark, device, model, [model[0], model[4]], batches, m, k, n,
                f"resnet-last-two N={N} r=2460356 m={m} n={n}", repeats=2, extra=lambda: {"per_batch": per_batch()})


def test_select_small_cnn(benchmark, device):
    N, bs, m, k, n = 6_000, 1_000, 256, 8, 1_000
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(1568, 64), nn.ReLU(), nn.Linear(64, 10)).to(device).eval()
    batches = _random_batches(N, bs, (1, 28, 28), 10, device)

    def per_batch():
        """One batch: the model's forward alone vs outer_sketch alone on fc1's and fc2's shapes (T = 1)."""
        x = batches[0][0]
        g = torch.Generator(device=device).manual_seed(2)
        a1, d1, d2 = (torch.randn(x.shape[0], w, generator=g, device=device) for w in (1568, 64, 10))
        with torch.no_grad():
            fwd_s = _time(lambda: model(x), device)
        fc1_s = _time(lambda: sp.outer_sketch(a1, d1, m, k, 0, 0), device)
        fc2_s = _time(lambda: sp.outer_sketch(d1, d2, m, k, 0, 0), device)
        return {"batch": x.shape[0], "model_forward_s": fwd_s, "outer_sketch_fc1_s": fc1_s, "outer_sketch_fc2_s": fc2_s,
                "outer_sketch_over_model_forward": (fc1_s + fc2_s) / fwd_s}

    _end_to_end(benchmark, device, model, [model[7], model[9]], batches, m, k, n,
                f"small-cnn fc1+fc2 N={N} r=101066 m={m} n={n}", repeats=3, extra=lambda: {"per_batch": per_batch()})
