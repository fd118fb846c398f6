"""sparse_sign_sketch and outer_sketch: project per-sample gradients with an implicit S.

``sparse_sign_sketch(g, m, k=8, seed=0, offset=0)`` -> (N x m) float32 = g @ S where S
(r x m) is never stored: row ``offset + i`` has k nonzeros +-1/sqrt(k), one in each of k
near-equal column blocks, placed by the counter-based hash of csrc/common/sketch_hash.h.
So the same (seed, offset, k, m) gives the same S on every backend and for every chunking
of N and r: sketching g[:, :a] with offset o and g[:, a:] with offset o + a and adding the
results equals sketching g with offset o.

``outer_sketch(a, d, m, k=8, seed=0, offset=0)`` -> (N x m): the sketch, with the same S,
of each sample's Linear-weight gradient G_n = sum_t d[n,t]^T a[n,t] flattened row-major over
(d_out, d_in), computed without forming G.  a is (N, T, d_in) or (N, d_in); d likewise with
d_out.  Give each layer its own offset (e.g. the running sum of d_out * d_in) to sketch
several layers into one space.

Inputs are bf16/fp16/fp32 (float64 is rejected: convert explicitly); accumulation is fp32.
Inputs whose last dim is not unit-stride are copied.  NaN/Inf propagate like a matmul.

Memory: the C++ CPU kernels allocate workspace besides the output (an m x 16 float32
accumulator per thread that runs a work item, the hashed rows of S, staging buffers);
``sparse_sign_sketch_workspace`` / ``outer_sketch_workspace`` report it, and the ops raise
``BudgetError`` before allocating anything when output + workspace exceed the active
``sketchprune.limit_memory`` budget (else the free memory).  The CPU kernels take m <= 2^27 - 1
(ValueError above; the torch and CUDA backends take m < 2^31).
"""

from __future__ import annotations

import torch

from .. import _backends, _native
from ..budget import active_budget, format_bytes
from ..ref import ops as ref
from ._common import (FLOAT_IN, check_interpreted_dtype, check_same_device, check_sketch_args, check_tensor,
                      contiguous_rows, fail, new_output, sketch_ints)
from ._native_call import call, module_for

torch.library.define(
    "sketchprune::sparse_sign_sketch",
    "(Tensor g, SymInt m, int k=8, int seed=0, int offset=0) -> Tensor",
)
torch.library.define(
    "sketchprune::outer_sketch",
    "(Tensor a, Tensor d, SymInt m, int k=8, int seed=0, int offset=0) -> Tensor",
)


def _check_sketch(g, m, k, seed, offset):
    op = "sparse_sign_sketch"
    check_tensor(op, "g", g, FLOAT_IN, 2)
    check_sketch_args(op, m, k, seed, offset)


def _check_outer(a, d, m, k, seed, offset):
    op = "outer_sketch"
    check_tensor(op, "a", a, FLOAT_IN, (2, 3))
    check_tensor(op, "d", d, FLOAT_IN, (2, 3))
    if a.dtype != d.dtype:
        fail(op, f"a and d must have the same dtype, got {a.dtype} and {d.dtype}", TypeError)
    if a.dim() != d.dim() or a.shape[:-1] != d.shape[:-1]:
        fail(op, f"a (N, T, d_in) and d (N, T, d_out) must agree on N and T, got {tuple(a.shape)} and {tuple(d.shape)}")
    check_sketch_args(op, m, k, seed, offset)
    check_same_device(op, a=a, d=d)


@torch.library.register_fake("sketchprune::sparse_sign_sketch")
def _sketch_fake(g, m, k=8, seed=0, offset=0):
    _check_sketch(g, m, k, seed, offset)
    return g.new_empty((g.shape[0], m), dtype=torch.float32)


@torch.library.register_fake("sketchprune::outer_sketch")
def _outer_fake(a, d, m, k=8, seed=0, offset=0):
    _check_outer(a, d, m, k, seed, offset)
    return a.new_empty((a.shape[0], m), dtype=torch.float32)


# ------------------------------------------------------------------ implementations
def sparse_sign_sketch_workspace(n: int, r: int, m: int, k: int = 8, dtype: torch.dtype = torch.float32,
                                 device: torch.device | str = "cpu", any_rows: bool = False) -> int:
    """Bytes the compiled kernel allocates on ``device``, besides its (n x m float32) output, to sketch an
    (n x r) ``dtype`` g: on CPU the C++ kernel's workspace (per-thread m x 16 float32 accumulators, the
    hashed rows of S, staging buffers) for the current OpenMP thread count, from the plan the kernel
    allocates by; 0 on CUDA (its kernels allocate nothing) or without the C++ CPU module.  Raises
    ValueError for an m the CPU kernels refuse (> 2^27 - 1).  ``any_rows``: the largest workspace
    of any call with 1..n rows (it is not monotone in n: with fewer 16-row tiles than threads, the
    chunk partials of concurrently processed chunks are kept) -- what a planner that splits n
    rows into blocks must reserve."""
    return _workspace_rows("sparse_sign_sketch", device, n, any_rows, r, m, k, dtype)


def outer_sketch_workspace(n: int, t: int, d_in: int, d_out: int, m: int, k: int = 8,
                           dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                           any_rows: bool = False) -> int:
    """Like :func:`sparse_sign_sketch_workspace`, for ``outer_sketch`` of a (n, t, d_in) and d (n, t, d_out)."""
    return _workspace_rows("outer_sketch", device, n, any_rows, t, d_in, d_out, m, k, dtype)


def _workspace_rows(op, device, n, any_rows, *rest) -> int:
    if not any_rows or n <= 1 or torch.device(device).type != "cpu" or _native.cpu_module() is None:
        return _workspace(op, device, n, *rest)
    # the plan depends on n only through the number of 16-row tiles, and is the same for every
    # count of tiles >= the thread count: those counts, and n itself, cover every row count <= n
    threads = module_for(torch.device(device)).build_info()["threads"]
    counts = {n} | {16 * t for t in range(1, min(threads, -(-n // 16)) + 1) if 16 * t <= n}
    return max(_workspace(op, device, c, *rest) for c in counts | {min(n, 1)})


def _workspace(op, device, *sizes_m_k_dtype) -> int:
    device = torch.device(device)
    if device.type != "cpu" or _native.cpu_module() is None:
        return 0
    *sizes, dtype = sizes_m_k_dtype
    if dtype not in FLOAT_IN:
        fail(op, f"dtype must be float32, float16 or bfloat16, got {dtype}", TypeError)
    if any(int(v) < 0 for v in sizes[:-2]):
        fail(op, f"sizes must be >= 0, got {tuple(sizes[:-2])}")
    check_sketch_args(op, int(sizes[-2]), int(sizes[-1]), 0, 0)   # m, k: the op's own messages
    return getattr(module_for(device), f"{op}_workspace_bytes")(*sizes, _native.DTYPE_CODES[dtype])


#: below this, a call without an explicit memory limit does not read the free memory
_UNCHECKED_BYTES = 16 << 20


def _check_cpu_budget(op: str, device: torch.device, n: int, m: int, *sizes_m_k_dtype) -> None:
    """Refuse with BudgetError, before the output or anything else is allocated, when the CPU
    kernel's output + workspace exceed the active budget (ValueError for an m it cannot take)."""
    if device.type != "cpu":
        return
    out_bytes = 4 * n * m
    work = _workspace(op, device, *sizes_m_k_dtype)
    budget = active_budget()
    # without an explicit limit the budget is the free memory, read from /proc/meminfo (~12 us, as
    # much as a small sketch): not read for requests that small, which it could not refuse usefully
    if budget.limit is None and out_bytes + work <= _UNCHECKED_BYTES:
        return
    if out_bytes + work > budget.bytes_for(device):
        threads = module_for(device).build_info()["threads"]
        budget.check(device, out_bytes + work,
                     what=f"{op} (cpu backend: {format_bytes(out_bytes)} output + {format_bytes(work)} workspace, "
                          f"with {threads} OpenMP thread(s), each holding an m x 16 float32 accumulator; fewer threads "
                          "need less)")


def _sketch_native(g, m, k, seed, offset):
    _check_cpu_budget("sparse_sign_sketch", g.device, g.shape[0], m, g.shape[0], g.shape[1], m, k, g.dtype)
    g = contiguous_rows(g)
    out = new_output((g.shape[0], m), torch.float32, g.device)
    call("sparse_sign_sketch", g.device,
         _native.ptr(out), _native.ptr(g), _native.dtype_code(g), g.shape[0], g.shape[1], g.stride(0),
         m, k, seed, offset, False)
    return out


def _outer_native(a, d, m, k, seed, offset):
    n, t, d_in = a.shape
    _check_cpu_budget("outer_sketch", a.device, n, m, n, t, d_in, d.shape[2], m, k, a.dtype)
    a, d = contiguous_rows(a), contiguous_rows(d)
    out = new_output((n, m), torch.float32, a.device)
    call("outer_sketch", a.device,
         _native.ptr(out), _native.ptr(a), _native.ptr(d), _native.dtype_code(a), n, t, d_in, d.shape[2],
         a.stride(0), a.stride(1), d.stride(0), d.stride(1), m, k, seed, offset, False)
    return out


def _sketch_torch(g, m, k, seed, offset):
    n = g.shape[0]
    # per S row: the dense S row (m) and the upcast g column (n) in float32, plus the hash's
    # int64 temporaries (about 5 of k each); fixed: the output and one matmul result (n x m).
    chunk = active_budget().plan_rows(g.device, 4 * (m + n) + 40 * k, g.shape[1], fixed_bytes=8 * n * m,
                                      what="sparse_sign_sketch (torch backend)")
    return ref.sparse_sign_sketch_ref(g, m, k, seed, offset, chunk=max(1, min(chunk, 1 << 16)))


def _outer_torch(a, d, m, k, seed, offset):
    per_sample = 4 * (a.shape[2] * d.shape[2] + a.shape[1] * (a.shape[2] + d.shape[2]))
    budget = active_budget()
    rows = budget.plan_rows(a.device, per_sample, a.shape[0], fixed_bytes=4 * a.shape[0] * m,
                            what="outer_sketch (torch backend)")
    return ref.outer_sketch_ref(a, d, m, k, seed, offset, max_bytes=max(rows, 1) * per_sample)


def _sketch_triton(g, m, k, seed, offset):
    check_interpreted_dtype("sparse_sign_sketch", g)
    return torch.ops.sketchprune._sparse_sign_sketch_triton(g.contiguous(), m, k, seed, offset)


def _outer_triton(a, d, m, k, seed, offset):
    return torch.ops.sketchprune._outer_sketch_triton(a.contiguous(), d.contiguous(), m, k, seed, offset)


_SKETCH = {"cpu": _sketch_native, "cuda": _sketch_native, "triton": _sketch_triton, "torch": _sketch_torch}
_OUTER = {"cpu": _outer_native, "cuda": _outer_native, "triton": _outer_triton, "torch": _outer_torch}


@torch.library.register_kernel("sketchprune::sparse_sign_sketch", ("cpu", "cuda"))
def _sketch_kernel(g, m, k=8, seed=0, offset=0):
    _check_sketch(g, m, k, seed, offset)
    if g.shape[0] == 0 or g.shape[1] == 0:
        return torch.zeros((g.shape[0], m), dtype=torch.float32, device=g.device)
    return _SKETCH[_backends.select("sparse_sign_sketch", g.device)](g, m, k, seed, offset)


@torch.library.register_kernel("sketchprune::outer_sketch", ("cpu", "cuda"))
def _outer_kernel(a, d, m, k=8, seed=0, offset=0):
    _check_outer(a, d, m, k, seed, offset)
    if a.dim() == 2:
        a, d = a[:, None, :], d[:, None, :]
    if a.numel() == 0 or d.numel() == 0:
        return torch.zeros((a.shape[0], m), dtype=torch.float32, device=a.device)
    return _OUTER[_backends.select("outer_sketch", a.device)](a, d, m, k, seed, offset)


# ------------------------------------------------------------------ autograd
def _no_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError(f"sketchprune::{op} is not differentiable (it records a statistic of its inputs); "
                           "detach the inputs, or call it under torch.no_grad()")
    return backward


def _non_differentiable(ctx, inputs, output):
    # the output does not require grad (so a forward-only torch.compile of a graph whose inputs
    # require grad traces fine); the backward below is a guard that is never expected to run
    ctx.mark_non_differentiable(output)


for _op in ("sparse_sign_sketch", "outer_sketch"):
    torch.library.register_autograd(f"sketchprune::{_op}", _no_backward(_op), setup_context=_non_differentiable)


def sparse_sign_sketch(g: torch.Tensor, m: int, k: int = 8, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """g (N x r) @ S -> (N x m) float32, S the implicit sparse-sign matrix (see module doc).

    The output is not differentiable; the input is read detached, so the call also works inside
    ``torch.func`` transforms (``grad``, ``jacrev``), where the op itself is refused by torch."""
    g = g.detach() if isinstance(g, torch.Tensor) else g
    return torch.ops.sketchprune.sparse_sign_sketch(g, *sketch_ints("sparse_sign_sketch", m, k, seed, offset))


def outer_sketch(a: torch.Tensor, d: torch.Tensor, m: int, k: int = 8, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Sketch of per-sample Linear-weight gradients sum_t d[n,t]^T a[n,t], without forming them
    (inputs read detached, as in :func:`sparse_sign_sketch`)."""
    a = a.detach() if isinstance(a, torch.Tensor) else a
    d = d.detach() if isinstance(d, torch.Tensor) else d
    return torch.ops.sketchprune.outer_sketch(a, d, *sketch_ints("outer_sketch", m, k, seed, offset))
