"""sparse_sign_sketch and outer_sketch: projecting per-sample gradients.

Measured
--------
``sparse_sign_sketch(g, m, k=8)``: g (N x r) @ S -> N x m fp32 with S the implicit r x m
sparse-sign matrix (k = 8 nonzeros per row, generated on the fly, never stored).
GPU: N = 4096, r in {1e5, 2.5e6}, m in {64, 512}, g bf16.  CPU: N = 512, r = 1e5, m = 512,
g fp32 (the CPU target: the C++ sketch at least 5x faster than ``g @ S_dense``).
Every available sketchprune backend, against stored-matrix baselines:

* ``dense_gaussian_stored``: ``g @ S_dense`` with a prebuilt dense Gaussian r x m S in g's
  dtype (output in g's dtype); skipped, with the sizes, when S would not fit in memory.
* ``countsketch_index_add``: the same sparse S stored as precomputed (column, sign) pairs
  (``sketchprune.ref.hash.sketch_entries``), applied with k ``index_add_`` calls into an
  fp32 output; on GPU the r axis is processed in chunks whose fp32 copy of g stays under
  256 MiB (bf16 g must be upcast: ``index_add_`` needs the output's dtype).
* ``csr_spmm_stored``: the same S stored as a torch sparse CSR matrix, ``g @ S_csr``
  (skipped with torch's error where dense @ sparse-CSR is not supported for the dtype).

``outer_sketch(a, d, m)``: the sketch of each sample's Linear-weight gradient
G_n = sum_t d[n,t]^T a[n,t] (d_out x d_in) without forming it.  GPU: N = 256, T = 16,
d_in = d_out = 1024, m = 512, bf16; CPU: N = 32, T = 16, d_in = d_out = 512, m = 256, fp32.
Baselines form G for all samples with ``torch.bmm`` (in the input dtype) and then sketch it:
``bmm+sparse_sign_sketch`` (sketchprune's default backend on this device) and
``bmm+dense_gaussian_stored`` (``G @ S_dense``).

Counting
--------
* sparse_sign_sketch: bytes = N*r*sizeof(g) (read g once) + N*m*4 (write out);
  flops = 2*N*r*k (k multiply-adds per element of g).  The baselines are charged the same
  (a dense S really does 2*N*r*m flops and reads S too: their rates are effective rates).
* outer_sketch: bytes = N*T*(d_in + d_out)*sizeof(x) + N*m*4; flops = 2*N*T*d_in*d_out
  (forming G) + 2*N*d_in*d_out*k (sketching it).
"""

from __future__ import annotations

import math

import pytest
import torch

import sketchprune as sp
from sketchprune import _backends
from sketchprune.ref.hash import sketch_entries
from conftest import bench_device, fits, measure, n_input_sets, probe

K = 8
SEED = 0
GPU_CASES = [(4096, r, m) for r in (100_000, 2_500_000) for m in (64, 512)]
CPU_CASES = [(512, 100_000, 512)]
SKETCH_BASELINES = ["dense_gaussian_stored", "countsketch_index_add", "csr_spmm_stored"]


def _dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _gb(nbytes):
    return f"{nbytes / 1e9:.2f} GB"


# ----------------------------------------------------------------------------- sparse_sign_sketch
CASES = GPU_CASES if bench_device().type == "cuda" else CPU_CASES


def _case_params():
    return pytest.mark.parametrize("case", CASES, ids=[f"N{n}-r{r}-m{m}" for n, r, m in CASES])


def _sketch_setup(device, n, r, m):
    dtype = _dtype(device)
    es = torch.tensor([], dtype=dtype).element_size()
    if not fits(device, n * r * es + 2 * n * m * 4):
        pytest.skip(f"g ({n} x {r} {dtype}) needs {_gb(n * r * es)}, more than is free on {device}")
    work = {"flops": 2 * n * r * K, "bytes": n * r * es + n * m * 4}
    case = f"N={n} r={r} m={m} k={K} {str(dtype).replace('torch.', '')}"
    sets = n_input_sets(n * r * es + n * m * 4, device, max_sets=8)
    gs = [torch.randn(n, r, device=device, dtype=dtype) for _ in range(sets)]
    return gs, work, case


@_case_params()
def test_sketch_sketchprune(benchmark, roofline, device, backend, case):
    n, r, m = case
    gs, work, name = _sketch_setup(device, n, r, m)
    fns = [lambda g=g: sp.sparse_sign_sketch(g, m, k=K, seed=SEED) for g in gs]
    with sp.use_backend(backend):
        measure(benchmark, fns, **work, roofline=roofline, device=device, op="sparse_sign_sketch", case=name,
                impl=f"sketchprune[{backend}]", kind="sketchprune", backend=backend)


def _dense_gaussian(device, dtype, r, m, extra_bytes=0):
    es = torch.tensor([], dtype=dtype).element_size()
    need = r * m * es + extra_bytes
    if not fits(device, need):
        pytest.skip(f"a stored dense {r} x {m} {dtype} S needs {_gb(r * m * es)} (+{_gb(extra_bytes)} of "
                    f"outputs/temporaries), more than 85% of the free memory on {device}")
    return torch.randn(r, m, device=device, dtype=dtype) / math.sqrt(m)


def _countsketch(device, n, r, m):
    """k index_add_ calls with stored (column, sign) pairs of the same S sketchprune uses."""
    cols, signs = sketch_entries(SEED, 0, r, m, K, device)
    cols_t = cols.T.contiguous()                       # k x r
    signs_t = (signs / math.sqrt(K)).T.contiguous()    # k x r, fp32
    chunk = max(1024, (256 * 2**20) // (4 * n)) if device.type == "cuda" else r

    def f(g):
        out = torch.zeros(n, m, device=device, dtype=torch.float32)
        for r0 in range(0, r, chunk):
            r1 = min(r, r0 + chunk)
            gc = g[:, r0:r1].float()
            for t in range(K):
                out.index_add_(1, cols_t[t, r0:r1], gc * signs_t[t, r0:r1])
        return out

    return f


def _csr(device, dtype, r, m):
    cols, signs = sketch_entries(SEED, 0, r, m, K, device)
    crow = torch.arange(0, r * K + 1, K, device=device, dtype=torch.int64)
    return torch.sparse_csr_tensor(crow, cols.reshape(-1), (signs / math.sqrt(K)).reshape(-1).to(dtype),
                                   size=(r, m), device=device)


# ----------------------------------------------------------------------------- outer_sketch
def _outer_shape(device):
    # N, T, d_in, d_out, m
    return (256, 16, 1024, 1024, 512) if device.type == "cuda" else (32, 16, 512, 512, 256)


def _outer_setup(device):
    n, t, din, dout, m = _outer_shape(device)
    dtype = _dtype(device)
    es = torch.tensor([], dtype=dtype).element_size()
    in_bytes = n * t * (din + dout) * es
    sets = n_input_sets(in_bytes + n * m * 4, device, max_sets=8)
    inputs = [(torch.randn(n, t, din, device=device, dtype=dtype), torch.randn(n, t, dout, device=device, dtype=dtype))
              for _ in range(sets)]
    work = {"flops": 2 * n * t * din * dout + 2 * n * din * dout * K, "bytes": in_bytes + n * m * 4}
    case = f"N={n} T={t} d_in={din} d_out={dout} m={m} k={K} {str(dtype).replace('torch.', '')}"
    return inputs, work, case, m


def test_outer_sketchprune(benchmark, roofline, device, backend):
    inputs, work, case, m = _outer_setup(device)
    fns = [lambda a=a, d=d: sp.outer_sketch(a, d, m, k=K, seed=SEED) for a, d in inputs]
    with sp.use_backend(backend):
        measure(benchmark, fns, **work, roofline=roofline, device=device, op="outer_sketch", case=case,
                impl=f"sketchprune[{backend}]", kind="sketchprune", backend=backend)


@pytest.mark.parametrize("baseline", ["bmm+sparse_sign_sketch", "bmm+dense_gaussian_stored"])
def test_outer_baseline(benchmark, roofline, device, baseline):
    inputs, work, case, m = _outer_setup(device)
    n, _, din, dout, _ = _outer_shape(device)
    dtype = _dtype(device)
    es = torch.tensor([], dtype=dtype).element_size()
    if baseline == "bmm+sparse_sign_sketch":
        chosen = _backends.select("sparse_sign_sketch", device, warn=False)

        def f(a, d):
            grads = torch.bmm(d.transpose(1, 2), a)            # (N, d_out, d_in), materialised
            return sp.sparse_sign_sketch(grads.reshape(n, -1), m, k=K, seed=SEED)

        note = f"G materialised ({_gb(n * din * dout * es)}), then sketchprune[{chosen}]"
    else:
        s = _dense_gaussian(device, dtype, din * dout, m, extra_bytes=n * din * dout * es + 2 * n * m * 4)

        def f(a, d):
            return torch.bmm(d.transpose(1, 2), a).reshape(n, -1) @ s

        note = f"G materialised ({_gb(n * din * dout * es)}), stored dense S ({_gb(s.numel() * es)})"
    fns = [lambda a=a, d=d: f(a, d) for a, d in inputs]
    measure(benchmark, fns, **work, roofline=roofline, device=device, op="outer_sketch", case=case,
            impl=baseline, kind="baseline", note=note)


# ----------------------------------------------------------------------------- sparse_sign_sketch baselines
# Runs last, baseline-major (the slow stored-index baselines at the very end),
# so a time-boxed run (--sp-deadline) loses the least informative measurements first.
@_case_params()
@pytest.mark.parametrize("baseline", SKETCH_BASELINES)
def test_sketch_baseline(benchmark, roofline, device, case, baseline):
    n, r, m = case
    dtype = _dtype(device)
    if baseline == "csr_spmm_stored":
        def check():
            s = _csr(device, dtype, 256, 64)
            g = torch.randn(8, 256, device=device, dtype=dtype)
            out = g @ s
            ref = g.double() @ s.to_dense().double()
            assert (out.double() - ref).abs().max().item() <= 0.05 * ref.abs().max().item() + 1e-6

        why = probe(("csr", device.type, dtype), check)
        if why:
            pytest.skip(f"dense @ sparse-CSR with {dtype} on {device.type} does not work in torch "
                        f"{torch.__version__}: {why}")
    gs, work, name = _sketch_setup(device, n, r, m)
    if baseline == "dense_gaussian_stored":
        s = _dense_gaussian(device, dtype, r, m, extra_bytes=2 * n * m * 4)
        fns = [lambda g=g: g @ s for g in gs]
        note = f"stored dense S: {_gb(s.numel() * s.element_size())}"
    elif baseline == "countsketch_index_add":
        f = _countsketch(device, n, r, m)
        fns = [lambda g=g: f(g) for g in gs]
        note = f"{K} index_add_ calls per chunk of r"
    else:
        s = _csr(device, dtype, r, m)
        fns = [lambda g=g: g @ s for g in gs]
        note = f"stored CSR S: {r * K} nonzeros"
    measure(benchmark, fns, **work, roofline=roofline, device=device, op="sparse_sign_sketch", case=name,
            impl=baseline, kind="baseline", note=note)
