"""The C++ CPU sketch kernels' workspace: reported by the module (``*_workspace_bytes``, from the
plan the kernels allocate by), checked with the output against the memory budget before anything
is allocated, close to the memory a call really takes; the per-thread buffers go to the threads
that run work items only (results do not depend on the thread count); m too large for the CPU
kernels' 32-bit table offsets is refused."""

import os
import subprocess
import sys

import pytest
import torch

import sketchprune as sp
from sketchprune import BudgetError, limit_memory
from sketchprune import _native
from _helpers import randn, use_backend

pytestmark = pytest.mark.skipif(_native.cpu_module() is None, reason="C++ CPU module not built")

M_CAP = 2**31 // 16 - 1  # m * 16 must fit in an int32


def _mod():
    return _native.cpu_module()


# (op, N, sizes): sparse_sign_sketch (N, r); outer_sketch (N, T, d_in, d_out)
CASES = [("sparse_sign_sketch", 5, (300,)), ("outer_sketch", 5, (3, 40, 30))]


def _inputs(op, n, sizes, dtype=torch.float32, gen=None):
    if op == "sparse_sign_sketch":
        return (randn(n, sizes[0], dtype=dtype, gen=gen),)
    t, d_in, d_out = sizes
    return randn(n, t, d_in, dtype=dtype, gen=gen), randn(n, t, d_out, dtype=dtype, gen=gen)


def _call(op, inputs, m, k=8, seed=3, offset=11):
    return getattr(sp, op)(*inputs, m, k, seed, offset)


def _need(op, n, sizes, m, k, dtype=torch.float32):
    """Output + workspace of the CPU kernel, as the module reports it for the current thread count."""
    code = _native.DTYPE_CODES[dtype]
    ws = getattr(_mod(), f"{op}_workspace_bytes")(n, *sizes, m, k, code)
    return 4 * n * m + ws


@pytest.mark.parametrize("op,n,sizes", CASES)
def test_budget_boundary_is_output_plus_workspace(op, n, sizes):
    """A budget of exactly output + workspace runs (same bits as without a budget, and the
    values of the torch backend); one byte less is refused with BudgetError."""
    m, k = 4096, 8
    inputs = _inputs(op, n, sizes)
    need = _need(op, n, sizes, m, k)
    assert need > 4 * n * m + 16 * m * 4  # the output plus at least one m x 16 float32 accumulator
    with use_backend("cpu"):
        free = _call(op, inputs, m, k)
        with limit_memory(need):
            exact = _call(op, inputs, m, k)
        with limit_memory(need - 1), pytest.raises(BudgetError, match=rf"{op} \(cpu backend: .* workspace"):
            _call(op, inputs, m, k)
    assert torch.equal(exact, free)
    with use_backend("torch"):
        ref = _call(op, inputs, m, k)
    torch.testing.assert_close(free, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_reproducer_large_m_small_budget():
    """A single sample sketched to m = 2^22 needs a 256 MiB accumulator: refused under 1 MiB, as
    the torch backend refuses."""
    g = torch.randn(1, 10)
    for backend in ("cpu", "torch"):
        with use_backend(backend), limit_memory("1MiB"), pytest.raises(BudgetError, match="sparse_sign_sketch"):
            sp.sparse_sign_sketch(g, 1 << 22, 1)
    with use_backend("cpu"), limit_memory("1MiB"), pytest.raises(BudgetError, match="outer_sketch"):
        sp.outer_sketch(torch.randn(1, 2, 5), torch.randn(1, 2, 5), 1 << 22, 1)


def test_empty_inputs_need_no_workspace():
    mod = _mod()
    assert mod.sparse_sign_sketch_workspace_bytes(0, 100, 64, 8, 0) == 0
    assert mod.sparse_sign_sketch_workspace_bytes(7, 0, 64, 8, 0) == 0
    for n, t, d_in, d_out in [(0, 2, 3, 4), (2, 0, 3, 4), (2, 2, 0, 4), (2, 2, 3, 0)]:
        assert mod.outer_sketch_workspace_bytes(n, t, d_in, d_out, 64, 8, 0) == 0
    with use_backend("cpu"), limit_memory(0):  # nothing to allocate: no refusal
        assert sp.sparse_sign_sketch(torch.zeros(3, 0), 64).abs().sum() == 0


def test_workspace_per_worker():
    """The m x 16 accumulator (and the other per-thread buffers) exist once per thread that runs a
    work item (16 samples x a chunk of S's rows), so at most min(threads, work items) times."""
    mod = _mod()
    m, acc = 1 << 16, (1 << 16) * 16 * 4
    # one sample, one chunk: one work item whatever the thread count
    one = [mod.sparse_sign_sketch_workspace_bytes(1, 10, m, 1, 0, threads=t) for t in (1, 2, 8)]
    assert one[0] == one[1] == one[2] and acc <= one[0] < acc + 2**20
    # 4 tiles of 16 samples: 4 threads hold 4 accumulators
    s1, s4 = (mod.sparse_sign_sketch_workspace_bytes(64, 5000, m, 8, 0, threads=t) for t in (1, 4))
    assert s4 - s1 >= 3 * acc
    o1, o4 = (mod.outer_sketch_workspace_bytes(64, 3, 40, 30, m, 8, 0, threads=t) for t in (1, 4))
    assert o4 - o1 >= 3 * acc
    # fp16 / bf16 inputs are converted in per-thread staging buffers
    assert mod.sparse_sign_sketch_workspace_bytes(64, 5000, m, 8, 2, threads=4) > s4
    # threads=0: the team a call from this thread runs with
    nt = mod.build_info()["threads"]
    assert mod.sparse_sign_sketch_workspace_bytes(64, 5000, m, 8, 0) == \
        mod.sparse_sign_sketch_workspace_bytes(64, 5000, m, 8, 0, threads=nt)


def test_python_workspace_helpers():
    """The wrappers' helpers report the module's numbers (what the budget check adds to the output),
    0 on CUDA (whose kernels allocate nothing)."""
    from sketchprune.ops.sketch import outer_sketch_workspace, sparse_sign_sketch_workspace

    mod = _mod()
    assert sparse_sign_sketch_workspace(40, 5000, 256, 8, torch.bfloat16) == \
        mod.sparse_sign_sketch_workspace_bytes(40, 5000, 256, 8, 2)
    assert outer_sketch_workspace(40, 3, 50, 60, 256, 4, torch.float16) == \
        mod.outer_sketch_workspace_bytes(40, 3, 50, 60, 256, 4, 1)
    assert sparse_sign_sketch_workspace(40, 5000, 256, device="cuda") == 0
    assert outer_sketch_workspace(40, 3, 50, 60, 256, device="cuda") == 0
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        sparse_sign_sketch_workspace(4, 5, 64, 8, torch.float64)
    with pytest.raises(ValueError, match="too large for the 'cpu' backend"):
        outer_sketch_workspace(4, 1, 5, 5, 2**27)


def test_workspace_bad_arguments():
    mod = _mod()
    with pytest.raises(RuntimeError, match="N must be >= 0"):
        mod.sparse_sign_sketch_workspace_bytes(-1, 10, 64, 8, 0)
    with pytest.raises(RuntimeError, match="threads must be >= 0"):
        mod.outer_sketch_workspace_bytes(1, 1, 10, 10, 64, 8, 0, threads=-2)
    with pytest.raises(RuntimeError, match="need m >= k >= 1"):
        mod.outer_sketch_workspace_bytes(1, 1, 10, 10, 4, 8, 0)
    with pytest.raises(RuntimeError, match="dtype must be"):
        mod.sparse_sign_sketch_workspace_bytes(1, 10, 64, 8, 3)


def test_m_cap_on_cpu():
    """m * 16 must fit in an int32 on the CPU backend: m = 2^27 is refused (ValueError naming the
    torch backend) before anything is allocated; m = 2^27 - 1 passes the cap (here it meets the
    budget instead); the torch backend takes m = 2^27."""
    g = torch.randn(2, 10)
    a, d = torch.randn(2, 1, 4), torch.randn(2, 1, 3)
    with use_backend("cpu"):
        with pytest.raises(ValueError, match=r"m = 134217728 is too large for the 'cpu' backend.*'torch' backend"):
            sp.sparse_sign_sketch(g, 2**27, 1)
        with pytest.raises(ValueError, match=r"m = 134217728 is too large for the 'cpu' backend"):
            sp.outer_sketch(a, d, 2**27, 1)
        with limit_memory("1MiB"):
            with pytest.raises(BudgetError, match="sparse_sign_sketch"):
                sp.sparse_sign_sketch(g, M_CAP, 1)
            with pytest.raises(BudgetError, match="outer_sketch"):
                sp.outer_sketch(a, d, M_CAP, 1)
    with use_backend("torch"), limit_memory("1MiB"), pytest.raises(BudgetError, match="torch backend"):
        sp.sparse_sign_sketch(g, 2**27, 1)
    mod = _mod()
    assert mod.sparse_sign_sketch_workspace_bytes(1, 10, M_CAP, 1, 0, threads=1) >= 64 * M_CAP
    # a direct caller of the kernel gets the same refusal (nothing is touched: null pointers)
    with pytest.raises(ValueError, match="too large for the 'cpu' backend"):
        mod.sparse_sign_sketch(0, 0, 0, 1, 10, 10, 2**27, 1, 0, 0, False)
    with pytest.raises(ValueError, match="too large for the 'cpu' backend"):
        mod.outer_sketch(0, 0, 0, 0, 1, 1, 4, 3, 4, 4, 3, 3, 2**27, 1, 0, 0, False)


MEASURE_SCRIPT = r"""
import sys, torch, sketchprune as sp
from sketchprune import _native
torch.set_num_threads(1)
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
op, m = sys.argv[1], 1 << 20
if op == "s":
    x = (torch.randn(1, 10),)
    need = _native.cpu_module().sparse_sign_sketch_workspace_bytes(1, 10, m, 1, 0)
    f = lambda: sp.sparse_sign_sketch(*x, m, 1)
else:
    x = (torch.randn(1, 2, 5), torch.randn(1, 2, 3))
    need = _native.cpu_module().outer_sketch_workspace_bytes(1, 2, 5, 3, m, 1, 0)
    f = lambda: sp.outer_sketch(*x, m, 1)
with sp.use_backend("cpu"):
    f()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")   # reset the peak resident set
    h0 = hwm()
    out = f()
    print(hwm() - h0, need + 4 * out.numel())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("op", ["s", "o"])
def test_reported_workspace_matches_resident_memory(op):
    """One thread, one sample, m = 2^20: the call's peak resident-memory growth is the 64 MiB
    accumulator plus the output, as reported (within a few MiB), never more."""
    run = subprocess.run([sys.executable, "-c", MEASURE_SCRIPT, op], capture_output=True, text=True,
                         env=dict(os.environ, SKETCHPRUNE_BACKEND="cpu"))
    assert run.returncode == 0, run.stderr[-2000:]
    grew, reported = map(int, run.stdout.split()[-2:])
    assert reported - 4 * 2**20 <= grew <= reported + 2**20, (grew, reported)


THREADS_SCRIPT = r"""
import sys, torch, sketchprune as sp
torch.set_num_threads(int(sys.argv[2]))
g = torch.Generator().manual_seed(7)
outs = []
for n, r, m, k, dt in [(1, 70000, 128, 8, torch.float32), (3, 50000, 96, 3, torch.bfloat16),
                       (40, 20001, 64, 13, torch.float16)]:
    outs.append(sp.sparse_sign_sketch(torch.randn(n, r, generator=g).to(dt), m, k, 5, 2**40))
for n, t, d_in, d_out in [(1, 3, 900, 100), (2, 4, 40, 900), (5, 80, 70, 90)]:
    a = torch.randn(n, t, d_in, generator=g); d = torch.randn(n, t, d_out, generator=g)
    outs.append(sp.outer_sketch(a.bfloat16(), d.bfloat16(), 64, 8, 1, 2))
torch.save(outs, sys.argv[1])
"""


def test_thread_count_invariant(tmp_path):
    """1, 2 and 4 threads, mostly with fewer tiles than threads (work items go to whichever threads
    take them, each with its own worker buffers): identical bits."""
    res = []
    for nt in (1, 2, 4):
        path = tmp_path / f"out{nt}.pt"
        run = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(path), str(nt)], capture_output=True,
                             text=True, env=dict(os.environ, SKETCHPRUNE_BACKEND="cpu"))
        assert run.returncode == 0, run.stderr[-2000:]
        res.append(torch.load(path))
    for nt, outs in zip((2, 4), res[1:]):
        for i, (x, y) in enumerate(zip(res[0], outs)):
            assert torch.equal(x, y), f"case {i}: {nt} threads differ from 1"


def test_any_rows_covers_every_row_count():
    """The workspace is not monotone in the row count (with fewer 16-row tiles than threads, the
    partials of concurrently processed chunks are kept): ``any_rows=True`` bounds every call with
    1..n rows, which is what a planner splitting n rows into blocks must reserve."""
    from sketchprune.ops.sketch import outer_sketch_workspace, sparse_sign_sketch_workspace

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(8)
        for n in (1, 40, 130):
            ws = [sparse_sign_sketch_workspace(i, 4096, 4096, 128) for i in range(1, n + 1)]
            assert sparse_sign_sketch_workspace(n, 4096, 4096, 128, any_rows=True) == max(ws)
            wo = [outer_sketch_workspace(i, 1, 64, 64, 512, 8) for i in range(1, n + 1)]
            assert outer_sketch_workspace(n, 1, 64, 64, 512, 8, any_rows=True) == max(wo)
        if sp._native.cpu_module().build_info()["threads"] >= 3:   # the case that was not covered
            ws = [sparse_sign_sketch_workspace(i, 4096, 4096, 128) for i in range(1, 129)]
            assert max(ws) > max(ws[0], ws[-1])
    finally:
        torch.set_num_threads(before)
