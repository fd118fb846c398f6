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


def test_triton_twin_equals_int_oracle():
    if _backends.unavailable_reason("triton", "cuda" if torch.cuda.is_available() else "cpu") is not None:
        pytest.skip("triton not installed or not runnable here")
    import triton
    import triton.language as tl

    from sketchprune.kernels._hash import sketch_hash_cols_signs

    @triton.jit
    def probe(cols_ptr, signs_ptr, seed, j0, m, k, ROWS: tl.constexpr, KP: tl.constexpr):
        i = tl.arange(0, ROWS)
        t = tl.arange(0, KP)
        j = j0.to(tl.uint64) + i.to(tl.uint64)
        col, sign = sketch_hash_cols_signs(seed, j[:, None], t[None, :], m, k)
        ok = (t[None, :] < k) & (i[:, None] >= 0)
        tl.store(cols_ptr + i[:, None] * KP + t[None, :], col.to(tl.int64), mask=ok)
        tl.store(signs_ptr + i[:, None] * KP + t[None, :], sign.to(tl.float32), mask=ok)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for seed, j0, m, k in [(0, 0, 8, 8), (12345, 2**33 + 1, 100, 7), (2**62 + 3, 2**62, 512, 8)]:
        cols = torch.full((16, 8), -1, dtype=torch.int64, device=dev)
        signs = torch.zeros((16, 8), dtype=torch.float32, device=dev)
        probe[(1,)](cols, signs, seed, j0, m, k, ROWS=16, KP=8)
        ec, es = sketch_entries(seed, j0, 16, m, k)
        assert torch.equal(cols[:, :k].cpu(), ec) and torch.equal(signs[:, :k].cpu(), es)
