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
        with pytest.raises(torch._dynamo.exc.Unsupported):       # not the eager error: no graph
            torch.compile(fn, backend="aot_eager", fullgraph=True)(g)

    def forced(g):
        with sp.use_backend("torch"):
            return sp.sparse_sign_sketch(g, 64, 8) * 2
    from sketchprune import _backends
    used, select = [], _backends.select

    def recording(op, device, warn=True):
        used.append(select(op, device, warn))
        return used[-1]
    _backends.select = recording
    try:
        torch._dynamo.reset()
        assert torch.equal(torch.compile(forced, backend="aot_eager")(g), forced(g))
    finally:
        _backends.select = select
    assert used == ["torch", "torch"], used            # compiled and eager: the forced backend ran


def test_settings_under_export_and_as_decorators():
    """torch.export traces a module whose forward uses use_backend / limit_memory (the graph holds
    the op opaquely); both also work as decorators."""
    class M(torch.nn.Module):
        def forward(self, g):
            with sp.use_backend("torch"), sp.limit_memory("1GiB"):
                return sp.sparse_sign_sketch(g, 16, 4) * 2

    g = randn(8, 100)
    ep = torch.export.export(M(), (g,), strict=False)
    assert torch.equal(ep.module()(g), M()(g))
    # strict export traces with Dynamo, which cannot keep the thread-local setting: refused, like
    # torch.compile with fullgraph=True (export the ops without the block instead)
    with pytest.raises(Exception):
        torch.export.export(M(), (g,), strict=True)

    @sp.use_backend("cuda")
    def wrong(g):
        return sp.sparse_sign_sketch(g, 16, 4)
    from sketchprune._backends import BackendUnavailableError
    with pytest.raises(BackendUnavailableError):
        wrong(g)

    @sp.limit_memory("2GiB")
    def budgeted():
        from sketchprune.budget import active_budget
        return active_budget()
    assert budgeted().limit == 2 * 2**30


@pytest.mark.slow
def test_new_sketch_size_does_not_recompile():
    """m is a SymInt in the schemas: a compiled function called with several sketch sizes compiles
    once (with `int m` every new m recompiled), through the wrappers and the raw ops alike."""
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return gm.forward

    g = randn(7, 40)
    for fn in (lambda g, m: sp.sparse_sign_sketch(g, m, 4) * 2,
               lambda g, m: torch.ops.sketchprune.sparse_sign_sketch(g, m, 4) * 2,
               lambda g, m: sp.outer_sketch(g[:, None, :5], g[:, None, 5:], m, 4) * 2):
        torch._dynamo.reset()
        compiles.clear()
        c = torch.compile(fn, backend=backend, dynamic=True, fullgraph=True)
        for m in (16, 24, 32, 48):
            assert torch.equal(c(g, m), fn(g, m)), m
        assert len(compiles) == 1, len(compiles)
    with pytest.raises(ValueError, match="must be >= k"):
        torch._dynamo.reset()
        torch.compile(lambda g, m: sp.sparse_sign_sketch(g, m, 4), dynamic=True, backend="aot_eager")(g, 2)
