"""Argument checks and output allocation shared by every op."""

from __future__ import annotations

import os

import torch

from .._numbers import as_int

FLOAT_IN = (torch.float32, torch.float16, torch.bfloat16)
ACCUM = (torch.float32, torch.float64)


def fail(op: str, msg: str, exc=ValueError):
    raise exc(f"sketchprune::{op}: {msg}")


def check_tensor(op: str, name: str, t, dtypes=None, dim=None) -> None:
    if not isinstance(t, torch.Tensor):
        fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    if dim is not None and t.dim() not in ((dim,) if isinstance(dim, int) else dim):
        fail(op, f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        fail(op, f"{name} must have dtype {names}; got {str(t.dtype).replace('torch.', '')}", TypeError)


def check_same_device(op: str, **tensors) -> torch.device:
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            detail = ", ".join(f"{k} on {v}" for k, v in devs.items())
            fail(op, f"all tensors must be on one device ({detail})")
    return first


def check_mask(op: str, mask, rows: int, device) -> None:
    if mask is None:
        return
    check_tensor(op, "mask", mask, (torch.bool,), 1)
    if mask.shape[0] != rows:
        fail(op, f"mask must have one entry per row of x ({rows}), got {mask.shape[0]}")


def int_arg(op: str, name: str, value) -> int:
    """``value`` as a Python int: ints and NumPy integers as they are, floats only when integral
    (``512.0``); anything else (``16.5``, ``None``, a string) is a TypeError naming the argument."""
    if type(value) is int or isinstance(value, torch.SymInt):   # the common case; symbolic while compiling
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    v = as_int(value)
    if v is None:
        fail(op, f"{name} must be an integer, got {value!r}", TypeError)
    return v


def check_sketch_args(op: str, m: int, k: int, seed: int, offset: int) -> None:
    if k < 1:
        fail(op, f"k (nonzeros per row of S) must be >= 1, got {k}")
    if m < k:
        fail(op, f"m (sketch size) must be >= k ({k}), got {m}")
    if m >= 2**31:
        fail(op, f"m (sketch size) must be < 2^31, got {m}")
    if not 0 <= offset < 2**63:
        fail(op, f"offset must be in [0, 2^63), got {offset}")
    if not (-(2**63) <= seed < 2**63):
        fail(op, f"seed must fit in int64, got {seed}")


def sketch_ints(op: str, m, k, seed, offset) -> tuple[int, int, int, int]:
    """The public wrappers' integer arguments, converted and range-checked before the dispatcher
    sees them (whose own message for an out-of-range int is unhelpful)."""
    m, k, seed, offset = (int_arg(op, n, v) for n, v in (("m", m), ("k", k), ("seed", seed), ("offset", offset)))
    check_sketch_args(op, m, k, seed, offset)
    return m, k, seed, offset


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte) that ``t`` can touch (numel > 0)."""
    steps = [(size - 1) * stride for size, stride in zip(t.shape, t.stride())]
    size = t.element_size()
    return (t.data_ptr() + size * sum(min(0, s) for s in steps),
            t.data_ptr() + size * (1 + sum(max(0, s) for s in steps)))


def unshare(out: torch.Tensor, *inputs):
    """``inputs`` with every one whose memory range meets the in-place output ``out``'s replaced
    by a copy: the kernels read their inputs while writing ``out``, so an input aliasing it would
    give a wrong result.  (Ranges, not elements: interleaved views of one buffer are copied too.)"""
    if out.numel() == 0:
        return inputs
    storage = out.untyped_storage().data_ptr()
    if all(t is None or t.untyped_storage().data_ptr() != storage for t in inputs):
        return inputs                 # separate allocations (the usual case): nothing to compare
    lo, hi = _extent(out)
    res = []
    for t in inputs:
        if t is not None and t.numel() and t.device == out.device:
            a, b = _extent(t)
            if a < hi and lo < b:
                t = t.clone()
        res.append(t)
    return tuple(res)


def check_owns_elements(op: str, name: str, t: torch.Tensor) -> None:
    """An in-place output (2-D) must not have two indices on one memory location (an expanded or
    ``as_strided`` view): every update would land several times.  Exact for 2-D strides: indices
    (i, j) and (i + di, j - dj) meet when di * s0 == dj * s1, the smallest such di being s1 / g."""
    import math

    (n0, n1), (s0, s1) = t.shape, t.stride()
    if n0 <= 1 or n1 <= 1:
        overlap = (n0 > 1 and s0 == 0) or (n1 > 1 and s1 == 0)
    elif s0 == 0 or s1 == 0:
        overlap = True
    else:
        g = math.gcd(s0, s1)
        overlap = s1 // g < n0 and s0 // g < n1
    if overlap:
        fail(op, f"{name} of shape {tuple(t.shape)} with strides {tuple(t.stride())} has several elements on one "
                 f"memory location (an expanded view?); an in-place output must own its elements: pass "
                 f"{name}.clone() (or .contiguous())")


def check_interpreted_dtype(op: str, *tensors: torch.Tensor) -> None:
    """The Triton interpreter (CPU tensors, ``TRITON_INTERPRET=1``) gets bf16 matrix products wrong
    (results off by ~1e9 for cov, cross and the sketch): refuse instead of returning them."""
    from .._backends import triton_interpreted

    if triton_interpreted() and any(t is not None and t.device.type == "cpu" and t.dtype == torch.bfloat16
                                    for t in tensors):
        fail(op, "the Triton interpreter (TRITON_INTERPRET=1) computes bfloat16 products incorrectly: pass "
                 "float32 / float16 inputs to the 'triton' backend on CPU, or use the 'cpu' or 'torch' backend",
             TypeError)


def contiguous_rows(t: torch.Tensor, rows_apart: bool | None = None) -> torch.Tensor:
    """t with unit stride in its last dim (copied if needed); other strides are passed through.
    With ``rows_apart`` (default: for CUDA tensors, whose kernels take a row stride of at least the
    row length) broadcast or overlapping rows (stride 0 from ``expand``) are materialised too; the
    CPU kernels read any row stride >= 0, so there nothing is copied for them."""
    if t.dim() == 0:
        return t
    if rows_apart is None:
        rows_apart = t.device.type == "cuda"
    unit = t.stride(-1) == 1 or t.shape[-1] <= 1
    apart = not rows_apart or t.dim() == 1 or t.shape[-2] <= 1 or t.stride(-2) >= t.shape[-1]
    return t if unit and apart else t.contiguous()


def poison_enabled() -> bool:
    return os.environ.get("SKETCHPRUNE_POISON", "0") not in ("", "0")


def new_output(shape, dtype, device) -> torch.Tensor:
    """Uninitialised output; filled with NaN (or all-ones bits) when SKETCHPRUNE_POISON=1,
    so tests catch kernels that leave elements unwritten."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if poison_enabled():
        if out.is_floating_point():
            out.fill_(float("nan"))
        elif out.dtype == torch.bool:
            out.fill_(True)
        else:
            out.fill_(-1)
    return out
