"""cov_accumulate_ and cross_accumulate_: streaming second moments.

``cov_accumulate_(sigma, x, alpha=1.0, mask=None)``: sigma (d x d, float32/float64) +=
alpha * x^T x for x (T x d, bf16/fp16/fp32, rows are tokens), rows where ``mask`` is False
skipped.  Only the upper triangle is computed (half the flops); sigma is treated as
symmetric -- its upper triangle is read, and both triangles are written, so it is exactly
symmetric afterwards.

``cross_accumulate_(c, x, y, alpha=1.0, mask=None)``: c (d_in x d_out) += alpha * x^T y.

Inputs whose last dim is not unit-stride are copied; row strides are passed through.  An
output whose last dim is not unit-stride is updated through a contiguous temporary.
NaN/Inf in x propagate into sigma as they would in ``x.T @ x``.
"""

from __future__ import annotations

import torch
from torch.autograd.graph import increment_version

from .. import _backends, _native
from ..ref import ops as ref
from ._common import (ACCUM, FLOAT_IN, check_interpreted_dtype, check_mask, check_owns_elements, check_same_device,
                      check_tensor, contiguous_rows, fail, unshare)
from ._native_call import call

torch.library.define(
    "sketchprune::cov_accumulate_",
    "(Tensor(a!) sigma, Tensor x, float alpha=1.0, Tensor? mask=None) -> ()",
)
torch.library.define(
    "sketchprune::cross_accumulate_",
    "(Tensor(a!) c, Tensor x, Tensor y, float alpha=1.0, Tensor? mask=None) -> ()",
)


def _check_cov(sigma, x, mask):
    op = "cov_accumulate_"
    check_tensor(op, "sigma", sigma, ACCUM, 2)
    check_owns_elements(op, "sigma", sigma)
    check_tensor(op, "x", x, FLOAT_IN, 2)
    d = x.shape[1]
    if tuple(sigma.shape) != (d, d):
        fail(op, f"sigma must be ({d}, {d}) to match x of shape {tuple(x.shape)}, got {tuple(sigma.shape)}")
    check_mask(op, mask, x.shape[0], x.device)
    check_same_device(op, sigma=sigma, x=x, mask=mask)


def _check_cross(c, x, y, mask):
    op = "cross_accumulate_"
    check_tensor(op, "c", c, ACCUM, 2)
    check_owns_elements(op, "c", c)
    check_tensor(op, "x", x, FLOAT_IN, 2)
    check_tensor(op, "y", y, FLOAT_IN, 2)
    if x.dtype != y.dtype:
        fail(op, f"x and y must have the same dtype, got {x.dtype} and {y.dtype}", TypeError)
    if x.shape[0] != y.shape[0]:
        fail(op, f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}")
    if tuple(c.shape) != (x.shape[1], y.shape[1]):
        fail(op, f"c must be ({x.shape[1]}, {y.shape[1]}) for x {tuple(x.shape)} and y {tuple(y.shape)}, got {tuple(c.shape)}")
    check_mask(op, mask, x.shape[0], x.device)
    check_same_device(op, c=c, x=x, y=y, mask=mask)


@torch.library.register_fake("sketchprune::cov_accumulate_")
def _cov_fake(sigma, x, alpha=1.0, mask=None):
    _check_cov(sigma, x, mask)


@torch.library.register_fake("sketchprune::cross_accumulate_")
def _cross_fake(c, x, y, alpha=1.0, mask=None):
    _check_cross(c, x, y, mask)


class _RowMajorOut:
    """Yields an output with unit last-dim stride; copies back on exit if it had to copy."""

    def __init__(self, t: torch.Tensor):
        self.t = t
        self.work = t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()

    def __enter__(self):
        return self.work

    def __exit__(self, *exc):
        if self.work is not self.t and exc[0] is None:
            self.t.copy_(self.work)


def _mask_arg(mask):
    return None if mask is None else mask.contiguous()


def _cov_native(sigma, x, alpha, mask):
    x, mask = contiguous_rows(x), _mask_arg(mask)
    try:
        with _RowMajorOut(sigma) as s:
            call("cov_accumulate", s.device,
                 _native.ptr(s), _native.dtype_code(s), s.shape[0], s.stride(0),
                 _native.ptr(x), _native.dtype_code(x), x.shape[0], x.stride(0),
                 float(alpha), _native.ptr(mask))
    finally:
        # the kernel wrote through a raw pointer: bump the version counter as torch's in-place ops do, so
        # autograd refuses a backward that saved sigma before the update instead of reading the new values
        # (also when an interrupt arrives as the kernel returns: sigma may have changed)
        increment_version(sigma)


def _cross_native(c, x, y, alpha, mask):
    x, y, mask = contiguous_rows(x), contiguous_rows(y), _mask_arg(mask)
    try:
        with _RowMajorOut(c) as cw:
            call("cross_accumulate", cw.device,
                 _native.ptr(cw), _native.dtype_code(cw), cw.shape[0], cw.shape[1], cw.stride(0),
                 _native.ptr(x), _native.ptr(y), _native.dtype_code(x), x.shape[0], x.stride(0), y.stride(0),
                 float(alpha), _native.ptr(mask))
    finally:
        increment_version(c)    # as for sigma above


def _cov_triton(sigma, x, alpha, mask):
    check_interpreted_dtype("cov_accumulate_", x)
    s = sigma.contiguous()
    torch.ops.sketchprune._cov_accumulate_triton(s, x.contiguous(), float(alpha), _mask_arg(mask))
    if s is not sigma:
        sigma.copy_(s)


def _cross_triton(c, x, y, alpha, mask):
    check_interpreted_dtype("cross_accumulate_", x, y)
    cw = c.contiguous()
    torch.ops.sketchprune._cross_accumulate_triton(cw, x.contiguous(), y.contiguous(), float(alpha), _mask_arg(mask))
    if cw is not c:
        c.copy_(cw)


_COV = {
    "cpu": _cov_native,
    "cuda": _cov_native,
    "triton": _cov_triton,
    "torch": lambda s, x, a, m: ref.cov_accumulate_ref(s, x, a, m),
}
_CROSS = {
    "cpu": _cross_native,
    "cuda": _cross_native,
    "triton": _cross_triton,
    "torch": lambda c, x, y, a, m: ref.cross_accumulate_ref(c, x, y, a, m),
}


def _check_writable(op, name, t):
    """The in-place statistics are not differentiable: updating a tensor autograd tracks would
    silently break its graph (torch refuses in-place updates of such leaves too); and, as for
    torch's own in-place ops, an inference tensor is updated only inside inference mode."""
    if t.requires_grad and torch.is_grad_enabled():
        fail(op, f"{name} requires grad; the accumulation is not differentiable: pass {name}.detach() or call "
                 "it under torch.no_grad()", RuntimeError)
    if t.is_inference() and not torch.is_inference_mode_enabled():
        fail(op, f"{name} is an inference tensor (created under torch.inference_mode) and cannot be updated in "
                 "place outside inference mode: clone it first, or update it inside inference mode", RuntimeError)


@torch.library.register_kernel("sketchprune::cov_accumulate_", ("cpu", "cuda"))
def _cov_kernel(sigma, x, alpha=1.0, mask=None):
    _check_cov(sigma, x, mask)
    _check_writable("cov_accumulate_", "sigma", sigma)
    if x.shape[0] == 0 or sigma.numel() == 0:
        return
    x, mask = unshare(sigma, x, mask)
    _COV[_backends.select("cov_accumulate_", sigma.device)](sigma, x, alpha, mask)


@torch.library.register_kernel("sketchprune::cross_accumulate_", ("cpu", "cuda"))
def _cross_kernel(c, x, y, alpha=1.0, mask=None):
    _check_cross(c, x, y, mask)
    _check_writable("cross_accumulate_", "c", c)
    if x.shape[0] == 0 or c.numel() == 0:
        return
    x, y, mask = unshare(c, x, y, mask)
    _CROSS[_backends.select("cross_accumulate_", c.device)](c, x, y, alpha, mask)


def cov_accumulate_(sigma: torch.Tensor, x: torch.Tensor, alpha: float = 1.0, mask: torch.Tensor | None = None) -> None:
    """sigma += alpha * x^T x (in place, exactly symmetric); rows where mask is False skipped."""
    torch.ops.sketchprune.cov_accumulate_(sigma, x, float(alpha), mask)


def cross_accumulate_(c: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float = 1.0,
                      mask: torch.Tensor | None = None) -> None:
    """c += alpha * x^T y (in place); rows where mask is False skipped."""
    torch.ops.sketchprune.cross_accumulate_(c, x, y, float(alpha), mask)
