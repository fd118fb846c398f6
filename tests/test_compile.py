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


@pytest.mark.slow
def test_backend_and_budget_blocks_inside_compiled_code_still_hold():
    """use_backend / limit_memory set a thread-local choice read when an op runs; Dynamo traced
    their bodies away, so inside a compiled function they were silently ignored.  Now the block is
    a graph break that runs eagerly (the choice holds), and fullgraph=True refuses to compile."""
    from sketchprune import BudgetError
    from sketchprune._backends import BackendUnavailableError

    def wrong_backend(g):
        with sp.use_backend("cuda"):          # cannot run on CPU tensors
            return sp.sparse_sign_sketch(g, 64, 8) * 2

    def tiny_budget(g):
        with sp.limit_memory("1KiB"), sp.use_backend("torch"):   # the reference plans a workspace
            return sp.sparse_sign_sketch(g, 256, 8, 0, 0) * 2

    g = randn(64, 3000)
    for fn, err in ((wrong_backend, BackendUnavailableError), (tiny_budget, BudgetError)):
        with pytest.raises(err):
            fn(g)
        torch._dynamo.reset()
        with pytest.raises(err):
            torch.compile(fn, backend="aot_eager")(g)
        torch._dynamo.reset()
        with pytest.raises(Exception):
            torch.compile(fn, backend="aot_eager", fullgraph=True)(g)

    def forced(g):
        with sp.use_backend("torch"):
            return sp.sparse_sign_sketch(g, 64, 8) * 2
    torch._dynamo.reset()
    assert torch.equal(torch.compile(forced, backend="aot_eager")(g), forced(g))
