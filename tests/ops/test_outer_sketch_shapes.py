"""outer_sketch on the C++ CPU backend at the edges of its blocking: samples in 16-wide tiles
(N not a multiple of 16), G formed in register tiles of rows o x columns q (d_out, d_in not
multiples of them), blocks of columns q, chunks of rows o or of columns q (several chunks), T on both sides of
the switch from lane-formed to GEMM-formed gradients, strided inputs, fp16/bf16, and results that
do not depend on the batch or on the thread count."""

import os
import subprocess
import sys

import pytest
import torch

import sketchprune as sp
from sketchprune import _native
from sketchprune.ref import sketch_matrix
from _helpers import assert_close_to_oracle, randn, use_backend

pytestmark = pytest.mark.skipif(_native.cpu_module() is None, reason="C++ CPU module not built")

BIG = 2**35 + 3
# (N, T, d_in, d_out, m, k)
SHAPES = [
    (17, 3, 101, 13, 64, 8),     # T just above 2; every tile / register-tile edge
    (5, 1, 70, 9, 32, 3),        # T = 1, a partial tile only
    (18, 2, 37, 23, 48, 4),      # T = 2
    (9, 4, 100, 170, 64, 8),     # d_out over two chunks of rows o
    (33, 40, 401, 7, 128, 8),    # d_in over several blocks of columns q, 3 tiles
    (17, 2, 3000, 100, 16, 4),   # d_out < d_in: chunks of columns q x every row o, the last partial
    (16, 64, 97, 70, 64, 8),     # the largest T formed in the lanes
    (20, 65, 50, 30, 64, 8),     # the smallest T formed by GEMM slabs
]


def _oracle(a, d, m, k, seed, offset):
    n, d_in, d_out = a.shape[0], a.shape[-1], d.shape[-1]
    s64 = sketch_matrix(seed, offset, d_in * d_out, m, k, torch.float64, "cpu")
    g64 = torch.einsum("nto,ntq->noq", d.double(), a.double()).reshape(n, -1)
    g32 = torch.einsum("nto,ntq->noq", d.float(), a.float()).reshape(n, -1)
    return g64 @ s64, g32 @ s64.float()


def _cpu(a, d, m, k, seed, offset):
    with use_backend("cpu"):
        return sp.outer_sketch(a, d, m, k, seed, offset)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-T{}-{}x{}-m{}-k{}".format(*s))
def test_outer_shapes_match_float64(shape):
    n, t, d_in, d_out, m, k = shape
    gen = torch.Generator().manual_seed(n * 1000 + t)
    a, d = randn(n, t, d_in, gen=gen), randn(n, t, d_out, gen=gen)
    out = _cpu(a, d, m, k, 7, BIG)
    o64, o32 = _oracle(a, d, m, k, 7, BIG)
    assert_close_to_oracle(out, o64, o32, t * (k * d_in * d_out // m + 1), what=f"shape {shape}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t", [3, 70])
def test_outer_half_inputs(dtype, t):
    gen = torch.Generator().manual_seed(t)
    a, d = randn(19, t, 53, dtype=dtype, gen=gen), randn(19, t, 11, dtype=dtype, gen=gen)
    out = _cpu(a, d, 64, 8, 2, 5)
    o64, o32 = _oracle(a, d, 64, 8, 2, 5)
    assert_close_to_oracle(out, o64, o32, t * (8 * 53 * 11 // 64 + 1), what=f"{dtype} T={t}")


@pytest.mark.parametrize("t", [3, 70])
def test_outer_strided_inputs(t):
    """a and d as views with padded rows (T and N strides larger than the row): no copies."""
    gen = torch.Generator().manual_seed(3)
    a_big = randn(21, 2 * t, 60, gen=gen)
    d_big = randn(42, t, 30, gen=gen)
    a = a_big[:, ::2, 5:52]   # T stride 120, row of 47
    d = d_big[::2, :, :25]    # N stride 2 * t * 30
    assert not a.is_contiguous() and not d.is_contiguous()
    out = _cpu(a, d, 32, 4, 1, 0)
    ref = _cpu(a.contiguous(), d.contiguous(), 32, 4, 1, 0)
    assert torch.equal(out, ref)
    o64, o32 = _oracle(a, d, 32, 4, 1, 0)
    assert_close_to_oracle(out, o64, o32, t * (4 * 47 * 25 // 32 + 1), what=f"strided T={t}")
    a_b = a[:, :1].expand(-1, t, -1)   # one input row broadcast over T (stride 0): materialised
    assert torch.equal(_cpu(a_b, d, 32, 4, 1, 0), _cpu(a_b.contiguous(), d, 32, 4, 1, 0))


@pytest.mark.parametrize("t", [1, 5, 70])
def test_outer_batch_invariant(t):
    """A sample's result does not depend on the other samples of the batch (bit for bit)."""
    gen = torch.Generator().manual_seed(11)
    a, d = randn(37, t, 29, gen=gen), randn(37, t, 21, gen=gen)
    full = _cpu(a, d, 64, 8, 4, 9)
    for lo, hi in [(0, 1), (3, 20), (16, 37)]:
        assert torch.equal(_cpu(a[lo:hi], d[lo:hi], 64, 8, 4, 9), full[lo:hi]), (lo, hi)


THREADS_SCRIPT = r"""
import sys, torch, sketchprune as sp
g = torch.Generator().manual_seed(5)
outs = []
for n, t, d_in, d_out in [(3, 5, 300, 200), (40, 5, 300, 200), (2, 70, 40, 30), (3, 1, 900, 100),
                          (3, 2, 3000, 100)]:
    a = torch.randn(n, t, d_in, generator=g); d = torch.randn(n, t, d_out, generator=g)
    outs.append(sp.outer_sketch(a, d, 64, 8, 1, 2))
torch.save(outs, sys.argv[1])
"""


def test_outer_thread_count_invariant(tmp_path):
    """1, 2 and 3 OpenMP threads (fewer tiles than threads included) give identical results."""
    res = []
    for nt in (1, 2, 3):
        path = tmp_path / f"out{nt}.pt"
        env = dict(os.environ, OMP_NUM_THREADS=str(nt), SKETCHPRUNE_BACKEND="cpu")
        run = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(path)], capture_output=True, text=True,
                             env=env)
        assert run.returncode == 0, run.stderr[-2000:]
        res.append(torch.load(path))
    for nt, outs in zip((2, 3), res[1:]):
        for i, (x, y) in enumerate(zip(res[0], outs)):
            assert torch.equal(x, y), f"case {i}: {nt} threads differ from 1"
