"""Host-side helpers shared by the launchers: shape arithmetic only (no host sync, no
allocation).  Everything here works on plain ints and on torch.SymInt (comparisons just
add guards under torch.compile)."""

import functools

import torch


def cdiv(a, b):
    return (a + b - 1) // b


def pow2_at_least(n, lo, hi):
    """Smallest power of two >= n, clamped to [lo, hi] (lo, hi powers of two)."""
    p = lo
    while p < n and p < hi:
        p *= 2
    return p


@functools.lru_cache(maxsize=None)
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a small stand-in elsewhere (interpreter)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _cuda_sm_count(index)
    return 4


def on_gpu(t: torch.Tensor) -> bool:
    """True for a real accelerator; False for CPU tensors (TRITON_INTERPRET=1)."""
    return t.device.type != "cpu"


#: the most programs a launch grid's axis 0 may hold (CUDA's gridDim.x limit)
MAX_GRID_X = 2**31 - 1


def check_grid(programs: int) -> int:
    """``programs`` for grid axis 0, or a ValueError when the launch cannot hold that many."""
    if programs > MAX_GRID_X:
        raise ValueError(f"sketchprune: this Triton launch needs {programs} programs on its first grid axis, "
                         f"more than the {MAX_GRID_X} a launch can hold; split the rows into several calls "
                         "(or use the 'cuda' backend)")
    return programs


def row_splits(programs, chunks, device, max_split=65535):
    """How many programs share the reduction (r) axis: 1 unless the grid is too small to fill
    the device, never more than the number of chunks, and 1 when deterministic algorithms are
    requested (splits combine with fp32 atomics, whose order is not fixed).  Returns
    (splits, chunks_per_split) with every split non-empty."""
    if chunks <= 1 or torch.are_deterministic_algorithms_enabled():
        return 1, max(chunks, 1)
    target = 2 * sm_count(device)
    if programs >= target:
        return 1, chunks
    want = min(cdiv(target, programs), chunks, max_split)
    per = cdiv(chunks, want)
    return cdiv(chunks, per), per


def split_f64(x):
    """x (a Python float, or SymFloat) -> (x1, x2, x3), each exactly representable in fp32, with
    x1 + x2 + x3 == x exactly in fp64 (two Veltkamp splits: 24 + 24 + <= 6 significant bits).

    Triton passes float scalars as fp32; the kernels rebuild the fp64 value from the three
    parts, exactly for |x| in ALPHA_EXACT (beyond it the parts under/overflow: the launchers then
    run the kernel with alpha = 1 into a zeroed buffer and scale outside, see alpha_exact).
    Pure arithmetic, so it also traces under torch.compile."""
    x = x * 1.0
    c = x * 536870913.0            # 2^29 + 1
    x1 = c - (c - x)
    rest = x - x1
    c = rest * 536870913.0
    x2 = c - (c - rest)
    return x1, x2, rest - x2


#: |alpha| range in which the three fp32 parts of :func:`split_f64` are exact normal fp32 numbers
#: (the smallest part can be 2^-53 |alpha|, above fp32's smallest normal 2^-126; the largest
#: about |alpha|, below fp32's overflow); alpha = 0 is exact as well
ALPHA_EXACT = (2.0 ** -72, 2.0 ** 127)


def alpha_exact(alpha) -> bool:
    """Whether the kernels rebuild ``alpha`` exactly from :func:`split_f64`'s parts."""
    a = abs(float(alpha))
    return a == 0.0 or ALPHA_EXACT[0] <= a < ALPHA_EXACT[1]


def wrap_triton(kernel):
    """torch.library.wrap_triton, except for a kernel that TRITON_INTERPRET=1 made an
    InterpretedFunction: that one is launched directly (eagerly), as torch >= 2.13's wrap_triton
    does itself; torch < 2.13 refuses it ("wrap_triton only works on functions annotated with
    triton.jit ...")."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        InterpretedFunction = ()
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return torch.library.wrap_triton(kernel)
