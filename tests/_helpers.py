"""Shared test helpers: the backend x device matrix, oracle tolerances, random inputs."""

from __future__ import annotations

import math

import pytest
import torch

from sketchprune import _backends
from sketchprune._backends import use_backend

# (backend, device) pairs, each skipped with a reason where it cannot run.
PAIRS = [("torch", "cpu"), ("cpu", "cpu"), ("triton", "cpu"), ("torch", "cuda"), ("cuda", "cuda"), ("triton", "cuda")]


def _param(backend, device):
    marks = []
    if device == "cuda" and not torch.cuda.is_available():
        marks.append(pytest.mark.skip(reason="no GPU"))
    else:
        why = _backends.unavailable_reason(backend, device)
        if why is not None:
            marks.append(pytest.mark.skip(reason=why))
    return pytest.param(backend, device, id=f"{backend}-{device}", marks=marks)


BACKEND_PARAMS = [_param(b, d) for b, d in PAIRS]


def backend_params():
    return pytest.mark.parametrize("backend,device", BACKEND_PARAMS)


def interpreted(backend: str, device: str) -> bool:
    """Triton on CPU runs in the (slow, bf16-unsafe) interpreter."""
    return backend == "triton" and device == "cpu"


def in_dtypes(backend: str, device: str):
    if interpreted(backend, device):
        return [torch.float32, torch.float16]  # the interpreter gets bf16 arithmetic wrong
    return [torch.float32, torch.float16, torch.bfloat16]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.double().cpu(), ref.double().cpu()
    assert torch.isfinite(a).all(), "output has NaN/Inf (unwritten elements or overflow)"
    den = ref.norm().item()
    return (a - ref).norm().item() / (den if den > 0 else 1.0)


def assert_close_to_oracle(out, oracle, same_dtype_torch, reduction_len: int, factor: float = 8.0, what=""):
    """out's error against the float64 oracle must be at most ``factor`` x the error that torch
    makes doing the same computation in the kernel's dtype, plus fp32 rounding noise for a
    reduction of ``reduction_len`` terms."""
    err = rel_err(out, oracle)
    base = rel_err(same_dtype_torch, oracle)
    noise = 4 * torch.finfo(torch.float32).eps * math.sqrt(max(reduction_len, 1))
    assert err <= factor * base + noise, f"{what}: rel err {err:.3e} > {factor} x torch's {base:.3e} + {noise:.1e}"


def randn(*shape, dtype=torch.float32, device="cpu", gen=None):
    """Fresh non-zero random data, rounded to dtype (the oracle uses the same rounded values)."""
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def sizes_for(backend, device, full, small):
    return small if interpreted(backend, device) else full
