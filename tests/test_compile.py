"""The ops inside torch.compile'd code (fullgraph: no graph breaks)."""

import pytest
import torch

import sketchprune as sp
from _helpers import randn


@pytest.mark.slow
def test_ops_in_compiled_function():
    def step(sigma, x, g, w, idx):
        sp.cov_accumulate_(sigma, x)
        s = sp.sparse_sign_sketch(g, 16, 4, 1, 0)
        o = sp.outer_sketch(x[:, None, :5], x[:, None, 5:], 16, 4, 2, 0)
        sl = sp.gather_slices([w, w], idx, [0, 1])
        return s * 2 + o, sl[0].sum() + sl[1].sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    x, g, w = randn(12, 10), randn(12, 50), randn(6, 6)
    idx = torch.tensor([4, 1])
    s1, s2 = torch.zeros(10, 10), torch.zeros(10, 10)
    e = step(s1, x, g, w, idx)
    c = compiled(s2, x, g, w, idx)
    assert torch.allclose(s1, s2) and torch.allclose(e[0], c[0]) and torch.allclose(e[1], c[1])
