"""The three twins of the hash that defines S: plain-int oracle, torch, Triton (and the C++
one, probed through the kernels in tests/ops/test_sparse_sign_sketch.py)."""

import random

import pytest
import torch

from sketchprune import _backends
from sketchprune.ref import sketch_entries, sketch_entry_int
from sketchprune.ref.hash import mix64_int


def test_mix64_known_values():
    # splitmix64's finaliser applied to the golden-ratio increment: a published constant chain
    assert mix64_int(0) == 0
    assert mix64_int(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("m,k", [(8, 8), (10, 3), (512, 8), (1000, 7)])
def test_torch_twin_equals_int_oracle(m, k):
    rng = random.Random(m * 31 + k)
    for _ in range(5):
        seed = rng.randrange(-(2**63), 2**63)
        j0 = rng.choice([0, 2**31 - 3, 2**32 + 5, 2**62 + 11])
        cols, signs = sketch_entries(seed, j0, 9, m, k)
        for i in range(9):
            for t in range(k):
                c, s = sketch_entry_int(seed, j0 + i, t, m, k)
                assert (cols[i, t].item(), signs[i, t].item()) == (c, s)
                assert t * m // k <= c < (t + 1) * m // k


try:  # the Triton twin, when triton can be imported
    import triton
    import triton.language as tl

    from sketchprune.kernels._hash import join_u64, mix64, sketch_entry, split_i64

    @triton.jit
    def _probe_kernel(cols_ptr, signs_ptr, seed_hi, seed_lo, j0_hi, j0_lo, m, k, ROWS: tl.constexpr, KP: tl.constexpr):
        i = tl.arange(0, ROWS)
        t = tl.arange(0, KP)
        j = join_u64(j0_hi, j0_lo) + i.to(tl.uint64)
        col, sign = sketch_entry(mix64(join_u64(seed_hi, seed_lo)), j[:, None], t[None, :], m, k)
        ok = (t[None, :] < k) & (i[:, None] >= 0)
        tl.store(cols_ptr + i[:, None] * KP + t[None, :], col.to(tl.int64), mask=ok)
        tl.store(signs_ptr + i[:, None] * KP + t[None, :], sign.to(tl.float32), mask=ok)
except ImportError:  # pragma: no cover - triton not installed
    triton = None


def test_triton_twin_equals_int_oracle():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    why = _backends.unavailable_reason("triton", dev)
    if why is not None or triton is None:
        pytest.skip(why or "triton not installed")
    for seed, j0, m, k in [(0, 0, 8, 8), (12345, 2**33 + 1, 100, 7), (-(2**62) - 3, 2**62, 512, 8)]:
        cols = torch.full((16, 8), -1, dtype=torch.int64, device=dev)
        signs = torch.zeros((16, 8), dtype=torch.float32, device=dev)
        _probe_kernel[(1,)](cols, signs, *split_i64(seed), *split_i64(j0), m, k, ROWS=16, KP=8)
        ec, es = sketch_entries(seed, j0, 16, m, k)
        assert torch.equal(cols[:, :k].cpu(), ec) and torch.equal(signs[:, :k].cpu(), es)


def test_dense_oracle_values_are_exact_in_float64():
    """The float64 oracle S holds +-1/sqrt(k) rounded once in float64 (its signs were scaled in
    float32 first: 1.7e-8 relative error whenever sqrt(k) is irrational)."""
    import math

    from sketchprune.ref.hash import sketch_matrix

    for k in (1, 3, 5, 8):
        s = sketch_matrix(2, 10, 6, 16, k)
        vals = set(s[s != 0].abs().tolist())
        assert vals == {1 / math.sqrt(k)}, (k, vals)
