"""cov_accumulate_ and cross_accumulate_: streaming second moments.

Measured
--------
``cov_accumulate_(sigma, x)``: sigma (d x d, fp32) += x^T x for x (T x d), T = 8192,
d in {576, 1536, 4096, 11008}; x is bf16 on GPU, fp32 on CPU (CPU: d <= 4096 only).
Every available sketchprune backend, against three torch baselines:

* ``mm_out_dtype+add``: ``sigma.add_(torch.mm(x.T, x, out_dtype=torch.float32))``
* ``addmm_out_dtype``: ``torch.addmm(sigma, x.T, x, out_dtype=torch.float32, out=sigma)``
  (the functional form plus a copy when ``out=`` is refused)
* ``fp32_upcast_addmm``: ``xf = x.float(); sigma.addmm_(xf.T, xf)``

(``out_dtype`` is tried once per device/dtype on a small problem; where this torch does
not support it the baseline is skipped with torch's error as the reason.)

``cross_accumulate_(c, x, y)``: c (d_in x d_out, fp32) += x^T y at one size (GPU: T = 8192,
d_in = 11008, d_out = 4096 bf16 -- LLaMA-7B's down projection; CPU: T = 8192,
d_in = d_out = 1024 fp32), against the same three baselines.

Counting
--------
* cov flops = T * d * (d + 1): the useful work is the upper triangle with the diagonal
  (d(d+1)/2 entries of 2T flops each); the torch baselines compute the full square (2*T*d^2),
  i.e. about twice that, but are charged the same useful flops.
* cov bytes = T*d*sizeof(x) (read x once) + 2*d*d*4 (read and write sigma).
* cross flops = 2*T*d_in*d_out; bytes = T*(d_in + d_out)*sizeof(x) + 2*d_in*d_out*4.
"""

from __future__ import annotations

import pytest
import torch

import sketchprune as sp
from conftest import measure, n_input_sets, probe

T = 8192
DIMS = [576, 1536, 4096, 11008]
CPU_DIMS = (576, 1536, 4096)
BASELINES = ["mm_out_dtype+add", "addmm_out_dtype", "fp32_upcast_addmm"]


def _xdtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _check_case(device, d):
    if device.type == "cpu" and d not in CPU_DIMS:
        pytest.skip(f"d={d} on CPU: {T * d * (d + 1) / 1e12:.1f} TFLOP of useful work per call (about 10 s per "
                    "call on a 2-core runner, times rounds and implementations) is too slow; the CPU benchmark "
                    "covers d <= 4096")


def _sym_rand(d, device):
    s = torch.rand(d, d, device=device)
    return (s + s.T) * 0.5


def _cov_sets(device, d, dtype):
    set_bytes = T * d * torch.tensor([], dtype=dtype).element_size() + 2 * d * d * 4
    n = n_input_sets(set_bytes, device)
    return [(_sym_rand(d, device), torch.randn(T, d, device=device, dtype=dtype)) for _ in range(n)]


# ----------------------------------------------------------------------------- baselines
def _addmm_out_variant(device, dtype):
    """'out' when torch.addmm(..., out_dtype=fp32, out=acc) works in place, 'functional' when
    only the functional form works; raises when out_dtype is not supported at all."""
    x = torch.randn(128, 64, device=device, dtype=dtype)
    ref = x.double().T @ x.double()
    tol = 1e-2 * ref.abs().max().item()
    try:
        acc = torch.zeros(64, 64, device=device)
        torch.addmm(acc, x.T, x, out_dtype=torch.float32, out=acc)
        if (acc.double() - ref).abs().max().item() <= tol:
            return "out"
    except Exception:
        pass
    acc = torch.zeros(64, 64, device=device)
    r = torch.addmm(acc, x.T, x, out_dtype=torch.float32)
    if r.dtype != torch.float32 or (r.double() - ref).abs().max().item() > tol:
        raise RuntimeError("torch.addmm(out_dtype=float32) gave a wrong result")
    return "functional"


def baseline_fn(name: str, device, dtype):
    """f(acc, x, y): acc += x^T y the baseline's way (pytest.skip when this torch cannot)."""
    if name == "mm_out_dtype+add":
        def check():
            x = torch.randn(16, 8, device=device, dtype=dtype)
            r = torch.mm(x.T, x, out_dtype=torch.float32)
            assert r.dtype == torch.float32

        why = probe(("mm_out_dtype", device.type, dtype), check)
        if why:
            pytest.skip(f"torch.mm(..., out_dtype=float32) with {dtype} inputs on {device.type} "
                        f"is not supported by torch {torch.__version__}: {why}")
        return lambda acc, x, y: acc.add_(torch.mm(x.T, y, out_dtype=torch.float32))
    if name == "addmm_out_dtype":
        box = {}

        def check():
            box["variant"] = _addmm_out_variant(device, dtype)

        why = probe(("addmm_out_dtype", device.type, dtype), check)
        if why:
            pytest.skip(f"torch.addmm(..., out_dtype=float32) with {dtype} inputs on {device.type} "
                        f"is not supported by torch {torch.__version__}: {why}")
        variant = box.get("variant") or _addmm_out_variant(device, dtype)
        if variant == "out":
            return lambda acc, x, y: torch.addmm(acc, x.T, y, out_dtype=torch.float32, out=acc)
        return lambda acc, x, y: acc.copy_(torch.addmm(acc, x.T, y, out_dtype=torch.float32))
    if name == "fp32_upcast_addmm":
        def f(acc, x, y):
            xf = x.float()
            yf = xf if y is x else y.float()
            acc.addmm_(xf.T, yf)
        return f
    raise ValueError(name)


# ----------------------------------------------------------------------------- cov_accumulate_
@pytest.mark.parametrize("d", DIMS, ids=[f"d{d}" for d in DIMS])
def test_cov_sketchprune(benchmark, roofline, device, backend, d):
    _check_case(device, d)
    dtype = _xdtype(device)
    sets = _cov_sets(device, d, dtype)
    fns = [lambda s=s, x=x: sp.cov_accumulate_(s, x) for s, x in sets]
    with sp.use_backend(backend):
        measure(benchmark, fns, **_cov_work(d, dtype), roofline=roofline, device=device,
                op="cov_accumulate_", case=_cov_case(d, dtype), impl=f"sketchprune[{backend}]",
                kind="sketchprune", backend=backend)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("d", DIMS, ids=[f"d{d}" for d in DIMS])
def test_cov_baseline(benchmark, roofline, device, d, baseline):
    _check_case(device, d)
    dtype = _xdtype(device)
    f = baseline_fn(baseline, device, dtype)
    sets = _cov_sets(device, d, dtype)
    fns = [lambda s=s, x=x: f(s, x, x) for s, x in sets]
    measure(benchmark, fns, **_cov_work(d, dtype), roofline=roofline, device=device,
            op="cov_accumulate_", case=_cov_case(d, dtype), impl=baseline, kind="baseline")


def _cov_case(d, dtype):
    return f"T={T} d={d} {str(dtype).replace('torch.', '')}"


def _cov_work(d, dtype):
    es = torch.tensor([], dtype=dtype).element_size()
    return {"flops": T * d * (d + 1), "bytes": T * d * es + 2 * d * d * 4}


# ----------------------------------------------------------------------------- cross_accumulate_
def _cross_shape(device):
    return (T, 11008, 4096) if device.type == "cuda" else (T, 1024, 1024)


def _cross_sets(device, dtype):
    t, din, dout = _cross_shape(device)
    es = torch.tensor([], dtype=dtype).element_size()
    n = n_input_sets(t * (din + dout) * es + 2 * din * dout * 4, device)
    return [(torch.rand(din, dout, device=device), torch.randn(t, din, device=device, dtype=dtype),
             torch.randn(t, dout, device=device, dtype=dtype)) for _ in range(n)]


def _cross_work(device, dtype):
    t, din, dout = _cross_shape(device)
    es = torch.tensor([], dtype=dtype).element_size()
    return {"flops": 2 * t * din * dout, "bytes": t * (din + dout) * es + 2 * din * dout * 4}


def _cross_case(device, dtype):
    t, din, dout = _cross_shape(device)
    return f"T={t} d_in={din} d_out={dout} {str(dtype).replace('torch.', '')}"


def test_cross_sketchprune(benchmark, roofline, device, backend):
    dtype = _xdtype(device)
    fns = [lambda c=c, x=x, y=y: sp.cross_accumulate_(c, x, y) for c, x, y in _cross_sets(device, dtype)]
    with sp.use_backend(backend):
        measure(benchmark, fns, **_cross_work(device, dtype), roofline=roofline, device=device,
                op="cross_accumulate_", case=_cross_case(device, dtype), impl=f"sketchprune[{backend}]",
                kind="sketchprune", backend=backend)


@pytest.mark.parametrize("baseline", BASELINES)
def test_cross_baseline(benchmark, roofline, device, baseline):
    dtype = _xdtype(device)
    f = baseline_fn(baseline, device, dtype)
    fns = [lambda c=c, x=x, y=y: f(c, x, y) for c, x, y in _cross_sets(device, dtype)]
    measure(benchmark, fns, **_cross_work(device, dtype), roofline=roofline, device=device,
            op="cross_accumulate_", case=_cross_case(device, dtype), impl=baseline, kind="baseline")
