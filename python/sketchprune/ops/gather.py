"""gather_slices: keep blocks of rows/columns of a whole group of tensors in one launch.

``gather_slices(tensors, indices, dims, block=1)`` -> list of new tensors.  For tensor i,
along dim ``dims[i]`` it keeps the blocks of ``block[i]`` consecutive rows/columns listed in
``indices[i]`` (block indices, in the given order; repeats allowed), exactly like
``torch.index_select`` with the expanded element index.  ``indices`` is one int64 tensor
shared by all tensors or a list with one per tensor; ``dims`` and ``block`` are an int for
all or a list.  1-D tensors (biases) are fine.

One pruned FFN:   gather_slices([gate.weight, up.weight, down.weight], keep, dims=[0, 0, 1])
Heads (GQA):      gather_slices([q.weight, k.weight, v.weight, o.weight],
                                [q_heads, kv_heads, kv_heads, q_heads], dims=[0, 0, 0, 1], block=head_dim)

On CUDA the whole group is one kernel launch (up to 16 tensors per launch) with no host
synchronisation; out-of-range indices trip an asynchronous device assertion
(``torch._assert_async``), on CPU an IndexError.  Non-contiguous sources are copied first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _backends, _native
from ..ref import ops as ref
from ._common import check_tensor, fail, new_output
from ._native_call import call

MAX_GATHER_DESCS = 16

torch.library.define(
    "sketchprune::gather_slices",
    "(Tensor[] tensors, Tensor[] indices, int[] dims, int[] blocks) -> Tensor[]",
)


def _normalize(tensors, indices, dims, blocks):
    op = "gather_slices"
    n = len(tensors)
    if len(indices) != n or len(dims) != n or len(blocks) != n:
        fail(op, f"need one index, dim and block per tensor: got {n} tensors, {len(indices)} indices, "
                 f"{len(dims)} dims, {len(blocks)} blocks")
    out_dims = []
    for i, (t, idx, dim, b) in enumerate(zip(tensors, indices, dims, blocks)):
        check_tensor(op, f"tensors[{i}]", t)
        check_tensor(op, f"indices[{i}]", idx, (torch.int64,), 1)
        if t.dim() == 0:
            fail(op, f"tensors[{i}] is a scalar; nothing to slice")
        if not -t.dim() <= dim < t.dim():
            fail(op, f"dims[{i}]={dim} is out of range for a {t.dim()}-D tensor", IndexError)
        dim = dim % t.dim()
        if b < 1:
            fail(op, f"block[{i}] must be >= 1, got {b}")
        if t.shape[dim] % b:
            fail(op, f"tensors[{i}] has size {t.shape[dim]} along dim {dim}, not a multiple of block {b}")
        if idx.device != t.device:
            fail(op, f"indices[{i}] is on {idx.device} but tensors[{i}] is on {t.device}")
        out_dims.append(dim)
    return out_dims


def _out_shape(t, idx, dim, b):
    shape = list(t.shape)
    shape[dim] = idx.shape[0] * b
    return shape


@torch.library.register_fake("sketchprune::gather_slices")
def _gather_fake(tensors, indices, dims, blocks):
    dims = _normalize(tensors, indices, dims, blocks)
    return [t.new_empty(_out_shape(t, i, d, b)) for t, i, d, b in zip(tensors, indices, dims, blocks)]


def _validate_indices(tensors, indices, dims, blocks):
    seen = set()  # a shared index is checked once per block count (fewer launches on CUDA)
    for i, (t, idx, d, b) in enumerate(zip(tensors, indices, dims, blocks)):
        if idx.numel() == 0:
            continue
        n_blocks = t.shape[d] // b
        key = (idx.data_ptr(), idx.shape[0], idx.stride(0), n_blocks)
        if key in seen:
            continue
        seen.add(key)
        if idx.device.type == "cpu":
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= n_blocks:
                raise IndexError(f"sketchprune::gather_slices: indices[{i}] has values in [{lo}, {hi}] but "
                                 f"tensors[{i}] has {n_blocks} blocks of {b} along dim {d}")
        else:  # no host sync: an asynchronous device-side assertion
            torch._assert_async(((idx >= 0) & (idx < n_blocks)).all(),
                                f"sketchprune::gather_slices: indices[{i}] out of range [0, {n_blocks})")


def _views(shape, dim, b):
    """(outer, blocks, inner) of a tensor of ``shape`` seen as blocks of ``b`` along ``dim``."""
    return math.prod(shape[:dim]), shape[dim] // b, math.prod(shape[dim + 1:])


def _gather_native(tensors, indices, dims, blocks):
    outs, descs, keep = [], [], []
    for t, idx, d, b in zip(tensors, indices, dims, blocks):
        src, idx = t.contiguous(), idx.contiguous()
        dst = new_output(_out_shape(t, idx, d, b), t.dtype, t.device)
        outs.append(dst)
        if dst.numel() == 0:
            continue
        outer, n_blocks, inner = _views(src.shape, d, b)
        keep += [src, idx]  # alive until the launch is queued
        descs.append((_native.ptr(src), _native.ptr(dst), src.element_size(), outer, n_blocks, inner,
                      _native.ptr(idx), idx.shape[0], b))
    for s in range(0, len(descs), MAX_GATHER_DESCS):
        call("gather_slices", tensors[0].device, descs[s:s + MAX_GATHER_DESCS])
    return outs


def _gather_triton(tensors, indices, dims, blocks):
    return torch.ops.sketchprune._gather_slices_triton(
        [t.contiguous() for t in tensors], [i.contiguous() for i in indices], list(dims), list(blocks))


_GATHER = {
    "cpu": _gather_native,
    "cuda": _gather_native,
    "triton": _gather_triton,
    "torch": ref.gather_slices_ref,
}


@torch.library.register_kernel("sketchprune::gather_slices", ("cpu", "cuda"))
def _gather_kernel(tensors, indices, dims, blocks):
    if len(tensors) == 0:
        return []
    dims = _normalize(tensors, indices, dims, blocks)
    devs = {t.device for t in tensors}
    if len(devs) > 1:
        fail("gather_slices", f"all tensors must be on one device, got {sorted(map(str, devs))}")
    _validate_indices(tensors, indices, dims, blocks)
    return _GATHER[_backends.select("gather_slices", tensors[0].device)](tensors, indices, dims, blocks)


# ------------------------------------------------------------------ autograd
def _gather_setup(ctx, inputs, output):
    tensors, indices, dims, blocks = inputs
    ctx.shapes = [t.shape for t in tensors]
    ctx.dims, ctx.blocks = [d % len(t.shape) for d, t in zip(dims, tensors)], list(blocks)
    ctx.save_for_backward(*indices)


def _gather_backward(ctx, grads):
    """Each kept block's gradient goes back to where it came from (summed over repeats); blocks
    not kept get zero."""
    out = []
    for shape, idx, d, b, g in zip(ctx.shapes, ctx.saved_tensors, ctx.dims, ctx.blocks, grads):
        if g is None:
            out.append(None)
            continue
        outer, n_blocks, inner = _views(shape, d, b)
        gin = g.new_zeros(outer, n_blocks, b * inner)
        gin.index_add_(1, idx, g.reshape(outer, idx.shape[0], b * inner))
        out.append(gin.reshape(shape))
    return out, [None] * len(out), None, None


torch.library.register_autograd("sketchprune::gather_slices", _gather_backward, setup_context=_gather_setup)


def _as_list(value, n: int, name: str):
    if isinstance(value, (torch.Tensor, int)):
        return [value] * n
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != n:
            fail("gather_slices", f"{name} has {len(value)} entries for {n} tensors")
        return list(value)
    fail("gather_slices", f"{name} must be a single value or a list, got {type(value).__name__}", TypeError)


def gather_slices(tensors: Sequence[torch.Tensor], indices, dims, block=1) -> list[torch.Tensor]:
    """Keep the listed blocks of rows/columns of each tensor (see module doc)."""
    if isinstance(tensors, torch.Tensor):
        fail("gather_slices", "tensors must be a list of tensors (wrap a single tensor in a list)", TypeError)
    tensors = list(tensors)
    n = len(tensors)
    if n == 0:      # nothing to slice (the dispatcher cannot route an op without tensors)
        return []
    idx = _as_list(indices, n, "indices")
    idx = [i if isinstance(i, torch.Tensor) else torch.as_tensor(i, dtype=torch.int64, device=t.device)
           for i, t in zip(idx, tensors)]
    return list(torch.ops.sketchprune.gather_slices(
        tensors, idx, [int(d) for d in _as_list(dims, n, "dims")], [int(b) for b in _as_list(block, n, "block")]))
