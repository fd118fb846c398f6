import math

import pytest
import numpy as np
import torch

import sketchprune as sp
from sketchprune.ref import sketch_matrix
from sketchprune.ref.ops import sparse_sign_sketch_ref
from _helpers import assert_close_to_oracle, backend_params, in_dtypes, interpreted, randn, use_backend

BIG = 2**33 + 12345  # row offsets beyond 2^31 (and 2^32)
SIZES = [(1, 1, 8, 8), (7, 33, 16, 3), (13, 1000, 64, 8), (64, 2049, 512, 8), (5, 300, 100, 7)]
SMALL = [(1, 1, 8, 8), (7, 33, 16, 3), (5, 70, 20, 7)]


def _run(backend, g, m, k, seed, offset):
    with use_backend(backend):
        return sp.sparse_sign_sketch(g, m, k, seed, offset)


@backend_params()
def test_sketch_matches_float64_oracle(backend, device):
    for dtype in in_dtypes(backend, device):
        for n, r, m, k in SMALL if interpreted(backend, device) else SIZES:
            for offset in (0, BIG):
                g = randn(n, r, dtype=dtype, device=device)
                seed = int(torch.randint(0, 2**62, ()).item())
                out = _run(backend, g, m, k, seed, offset)
                assert out.shape == (n, m) and out.dtype == torch.float32
                s64 = sketch_matrix(seed, offset, r, m, k, torch.float64, device)
                oracle = g.double() @ s64
                same = g.float() @ s64.float()
                assert_close_to_oracle(out, oracle, same, k * r // m + 1, what=f"{dtype} {n}x{r} m={m} k={k}")


@backend_params()
def test_sketch_rows_of_S_are_exact(backend, device):
    """Probe S with unit vectors: each row has exactly k nonzeros +-1/sqrt(k), one per column
    block, bit-identical to the definition (the torch twin of the hash)."""
    r, m, k = 37, 24, 5
    for offset in (0, BIG, 2**62):
        seed = 987654321
        rows = _run(backend, torch.eye(r, device=device), m, k, seed, offset)
        expect = sketch_matrix(seed, offset, r, m, k, torch.float32, device)
        assert torch.equal(rows, expect)
        nz = rows != 0
        assert (nz.sum(1) == k).all()
        assert torch.allclose(rows[nz].abs(), torch.full((r * k,), 1 / math.sqrt(k), device=device))
        for t in range(k):
            lo, hi = t * m // k, (t + 1) * m // k
            assert (nz[:, lo:hi].sum(1) == 1).all(), f"block {t} must hold exactly one nonzero"


@backend_params()
def test_sketch_linearity_and_chunk_invariance(backend, device):
    n, r, m, k = (9, 130, 32, 4) if interpreted(backend, device) else (33, 3001, 128, 8)
    g1, g2 = randn(n, r, device=device), randn(n, r, device=device)
    seed, off = 42, BIG
    s1, s2 = _run(backend, g1, m, k, seed, off), _run(backend, g2, m, k, seed, off)
    s12 = _run(backend, 2.0 * g1 - 0.5 * g2, m, k, seed, off)
    assert torch.allclose(s12, 2.0 * s1 - 0.5 * s2, rtol=1e-4, atol=1e-4)
    # chunking over N gives the same rows
    top = _run(backend, g1[: n // 3], m, k, seed, off)
    assert torch.allclose(top, s1[: n // 3], rtol=1e-6, atol=1e-6)
    # chunking over r with shifted offsets sums to the whole
    a = r // 3
    parts = _run(backend, g1[:, :a], m, k, seed, off) + _run(backend, g1[:, a:], m, k, seed, off + a)
    assert torch.allclose(parts, s1, rtol=1e-4, atol=1e-4)


def test_sketch_bit_identical_across_backends():
    """The implicit S (probed with unit vectors) is bit-identical on every available backend."""
    from _helpers import BACKEND_PARAMS

    r, m, k, seed, off = 50, 40, 8, 7, BIG
    ref = sketch_matrix(seed, off, r, m, k, torch.float32)
    seen = []
    for p in BACKEND_PARAMS:
        if p.marks:
            continue
        backend, device = p.values
        rows = _run(backend, torch.eye(r, device=device), m, k, seed, off).cpu()
        assert torch.equal(rows, ref), f"{backend} on {device} builds a different S"
        seen.append(p.id)
    assert "torch-cpu" in seen


def test_sketch_norm_preserved_in_expectation():
    """E ||x S||^2 = ||x||^2 over seeds (checked within 5 standard errors)."""
    r, m, k, trials = 400, 64, 4, 300
    x = randn(1, r)
    vals = torch.stack([sp.sparse_sign_sketch(x, m, k, seed).pow(2).sum() for seed in range(trials)]).double()
    ratio = vals / x.double().pow(2).sum()
    se = ratio.std() / math.sqrt(trials)
    assert abs(ratio.mean() - 1) < 5 * se + 1e-3, (ratio.mean().item(), se.item())


@backend_params()
def test_sketch_empty(backend, device):
    assert _run(backend, torch.empty(0, 10, device=device), 16, 4, 0, 0).shape == (0, 16)
    z = _run(backend, torch.empty(3, 0, device=device), 16, 4, 0, 0)
    assert z.shape == (3, 16) and (z == 0).all()


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(m=4, k=8), ValueError, "m \\(sketch size\\) must be >= k"),
        (dict(m=8, k=0), ValueError, "k .* must be >= 1"),
        (dict(m=8, k=2, offset=-1), ValueError, "offset must be in"),
        (dict(m=8, k=2, offset=2**63), ValueError, "offset must be in"),
        (dict(m=8, k=2, seed=2**64), ValueError, "seed must fit in int64"),
        (dict(m=2**31, k=2), ValueError, "must be < 2\\^31"),
        (dict(m=16.5, k=2), TypeError, "m must be an integer"),
        (dict(m=16, k="2"), TypeError, "k must be an integer"),
    ],
)
def test_sketch_bad_args(kwargs, err, match):
    with pytest.raises(err, match=match):
        sp.sparse_sign_sketch(torch.randn(2, 5), **kwargs)


def test_sketch_integral_float_m_accepted():
    g = torch.randn(2, 5)
    assert torch.equal(sp.sparse_sign_sketch(g, 16.0, k=np.int64(2)), sp.sparse_sign_sketch(g, 16, k=2))


def test_sketch_bad_tensors():
    with pytest.raises(TypeError, match="dtype"):
        sp.sparse_sign_sketch(torch.randn(2, 5, dtype=torch.float64), 8)
    with pytest.raises(ValueError, match="2-D"):
        sp.sparse_sign_sketch(torch.randn(5), 8)


@backend_params()
def test_sketch_opcheck(backend, device):
    g = randn(5, 40, device=device)
    kw = {"test_utils": ("test_schema", "test_faketensor")} if interpreted(backend, device) else {}
    with use_backend(backend):
        torch.library.opcheck(torch.ops.sketchprune.sparse_sign_sketch.default, (g, 16, 4, 3, BIG), **kw)


@backend_params()
def test_sketch_misaligned_and_row_strided(backend, device):
    """g as a view one element into its buffer, and with a row stride larger than r."""
    n, r, m, k = 6, 45, 32, 4
    for dtype in in_dtypes(backend, device):
        buf = randn(n * r + 1, dtype=dtype, device=device)
        g1 = buf[1:].view(n, r)
        g2 = randn(n, r + 7, dtype=dtype, device=device)[:, 3 : 3 + r]
        g3 = randn(1, r, dtype=dtype, device=device).expand(n, r)    # broadcast rows (stride 0)
        for g in (g1, g2, g3):
            out = _run(backend, g, m, k, 9, BIG)
            s64 = sketch_matrix(9, BIG, r, m, k, torch.float64, device)
            assert_close_to_oracle(out, g.double() @ s64, g.float() @ s64.float(), r, what=f"{dtype} view")


def test_sketches_are_not_differentiable():
    """Outputs never require grad (before: they did, and backward left None gradients behind a
    warning); a forward-only compiled graph with inputs that require grad still traces."""
    g = torch.randn(3, 20, requires_grad=True)
    out = sp.sparse_sign_sketch(g, 8)
    assert not out.requires_grad and torch.equal(out, sp.sparse_sign_sketch(g.detach(), 8))
    a, d = torch.randn(3, 2, 4, requires_grad=True), torch.randn(3, 2, 5)
    assert not sp.outer_sketch(a, d, 8).requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        sp.sparse_sign_sketch(g, 8).sum().backward()
    f = torch.compile(lambda g: sp.sparse_sign_sketch(g, 8, 2).sum(), backend="aot_eager")
    assert torch.allclose(f(g), sp.sparse_sign_sketch(g.detach(), 8, 2).sum())


def test_sketches_inside_torch_func_transforms():
    """Inside torch.func.grad / jacrev the sketches are constants of the differentiated input (the
    op itself is refused there by torch: its generated autograd.Function has no functorch support)."""
    w = torch.randn(5, 40)
    grad = torch.func.grad(lambda w: (w ** 2).sum() + sp.sparse_sign_sketch(w, 8, seed=3).sum())(w)
    torch.testing.assert_close(grad, 2 * w)
    a, d = torch.randn(3, 2, 4), torch.randn(3, 2, 5)
    c = sp.outer_sketch(a, d, 8).sum()
    jac = torch.func.jacrev(lambda a: a * sp.outer_sketch(a, d, 8).sum())(a)
    torch.testing.assert_close(jac, c * torch.eye(24).reshape(3, 2, 4, 3, 2, 4))


def test_inputs_reach_the_kernels_with_rows_apart():
    """The CUDA kernels take a row stride of at least the row length (the bindings refuse less):
    for them broadcast (stride-0) or overlapping rows are materialised first, other strides pass;
    the CPU kernels read any stride, so CPU tensors are not copied."""
    from sketchprune.ops._common import contiguous_rows

    big = torch.randn(1, 10).expand(1000, 10)
    assert contiguous_rows(big).data_ptr() == big.data_ptr()        # CPU: no N x d copy

    row = torch.randn(1, 10)
    for t, copied in ((row.expand(4, 10), True), (torch.randn(40).as_strided((4, 10), (3, 1)), True),
                      (torch.randn(4, 16)[:, :10], False), (torch.randn(10, 4).T, True), (row, False),
                      (torch.randn(3, 1, 10).expand(3, 5, 10), True), (torch.randn(3, 5, 10)[::2], False),
                      (torch.randn(7), False)):
        out = contiguous_rows(t, rows_apart=True)                     # what CUDA tensors get
        assert torch.equal(out, t) and (out.data_ptr() != t.data_ptr()) == copied, (t.shape, t.stride())
        assert out.dim() < 2 or out.shape[-2] <= 1 or out.stride(-2) >= out.shape[-1]


@backend_params()
def test_sketch_of_values_near_the_float32_limit_is_finite(backend, device):
    """Finite float32 values up to FLT_MAX give a finite sketch on every backend whenever the true
    sums fit (k = 1, one value per output): the Triton GPU path splits float32 into three bfloat16
    terms, and rounding the leading one to nearest turned |g| >= ~3.396e38 into inf (a NaN row)."""
    g = torch.zeros(4, 40)
    g[0, 3], g[1, 7], g[2, 11], g[3, 0] = 3.4e38, -3.3962e38, torch.finfo(torch.float32).max, 1.0
    g = g.to(device)
    with use_backend(backend):
        s = sp.sparse_sign_sketch(g, 64, k=1, seed=4)
    assert torch.isfinite(s).all()
    torch.testing.assert_close(s.double().cpu(), sparse_sign_sketch_ref(g.double().cpu(), 64, 1, 4, 0).double(), rtol=1e-6, atol=0)


def test_triton_sketch_grids_fold_tiles_into_the_first_axis(monkeypatch):
    """The Triton sketches number (sample tile, column tile) pairs on grid axis 0 (axes 1 / 2 hold at
    most 65535 programs, fewer than the column tiles of m > 8.4M); past axis 0's own limit the launch
    is refused with a clear error instead of failing inside the driver."""
    pytest.importorskip("triton")
    from sketchprune._backends import unavailable_reason
    if unavailable_reason("triton", "cpu") is not None:
        pytest.skip(unavailable_reason("triton", "cpu"))
    import sketchprune.kernels._util as ku

    g, a, d = randn(150, 30), randn(150, 2, 5), randn(150, 2, 6)
    with use_backend("triton"):
        s = sp.sparse_sign_sketch(g, 200, 4, 3, 5)      # several sample and column tiles
        o = sp.outer_sketch(a, d, 200, 4, 3, 5)
    torch.testing.assert_close(s.double(), sparse_sign_sketch_ref(g.double(), 200, 4, 3, 5).double(), rtol=1e-5, atol=1e-5)
    G = torch.einsum("nto,ntq->noq", d.double(), a.double()).reshape(150, -1)
    torch.testing.assert_close(o.double(), sparse_sign_sketch_ref(G, 200, 4, 3, 5).double(), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(ku, "MAX_GRID_X", 3)
    for call in (lambda: sp.sparse_sign_sketch(g, 200, 4, 3, 5), lambda: sp.outer_sketch(a, d, 200, 4, 3, 5)):
        with use_backend("triton"), pytest.raises(ValueError, match="programs on its first grid axis"):
            call()
