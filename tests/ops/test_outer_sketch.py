import pytest
import torch

import sketchprune as sp
from sketchprune.ref import sketch_matrix
from _helpers import assert_close_to_oracle, backend_params, in_dtypes, interpreted, randn, use_backend

BIG = 2**33 + 77
SIZES = [(1, 1, 1, 1, 8, 8), (5, 3, 7, 9, 32, 4), (17, 1, 64, 33, 128, 8), (6, 20, 33, 70, 256, 8)]
SMALL = [(1, 1, 1, 1, 8, 8), (3, 2, 5, 6, 16, 4), (4, 1, 9, 7, 24, 3)]


def _run(backend, a, d, m, k, seed, offset):
    with use_backend(backend):
        return sp.outer_sketch(a, d, m, k, seed, offset)


@backend_params()
def test_outer_matches_float64_oracle(backend, device):
    for dtype in in_dtypes(backend, device):
        for n, t, d_in, d_out, m, k in SMALL if interpreted(backend, device) else SIZES:
            a = randn(n, t, d_in, dtype=dtype, device=device)
            d = randn(n, t, d_out, dtype=dtype, device=device)
            out = _run(backend, a, d, m, k, 11, BIG)
            s64 = sketch_matrix(11, BIG, d_in * d_out, m, k, torch.float64, device)
            g64 = torch.einsum("nto,ntq->noq", d.double(), a.double()).reshape(n, -1)
            g32 = torch.einsum("nto,ntq->noq", d.float(), a.float()).reshape(n, -1)
            assert_close_to_oracle(out, g64 @ s64, g32 @ s64.float(), t * (k * d_in * d_out // m + 1),
                                   what=f"{dtype} N={n} T={t} {d_out}x{d_in}")


@backend_params()
def test_outer_equals_sketch_of_formed_gradient(backend, device):
    n, t, d_in, d_out, m, k = (3, 2, 5, 4, 16, 4) if interpreted(backend, device) else (9, 4, 31, 20, 64, 8)
    a = randn(n, t, d_in, device=device)
    d = randn(n, t, d_out, device=device)
    g = torch.einsum("nto,ntq->noq", d, a).reshape(n, -1)
    with use_backend(backend):
        via_g = sp.sparse_sign_sketch(g, m, k, 5, BIG)
        fused = sp.outer_sketch(a, d, m, k, 5, BIG)
    assert torch.allclose(fused, via_g, rtol=1e-4, atol=1e-4)
    # T = 1 may be given as 2-D inputs
    with use_backend(backend):
        two_d = sp.outer_sketch(a[:, 0], d[:, 0], m, k, 5, BIG)
        three_d = sp.outer_sketch(a[:, :1], d[:, :1], m, k, 5, BIG)
    assert torch.allclose(two_d, three_d)


@backend_params()
def test_outer_layers_share_one_space(backend, device):
    """Two layers with offsets 0 and d_out1*d_in1 sum to the sketch of the concatenated gradient."""
    n, m, k = 4, 32, 4
    a1, d1 = randn(n, 1, 6, device=device), randn(n, 1, 5, device=device)
    a2, d2 = randn(n, 1, 3, device=device), randn(n, 1, 7, device=device)
    g = torch.cat([torch.einsum("nto,ntq->noq", d1, a1).reshape(n, -1),
                   torch.einsum("nto,ntq->noq", d2, a2).reshape(n, -1)], dim=1)
    with use_backend(backend):
        both = sp.outer_sketch(a1, d1, m, k, 3, 0) + sp.outer_sketch(a2, d2, m, k, 3, 30)
        whole = sp.sparse_sign_sketch(g, m, k, 3, 0)
    assert torch.allclose(both, whole, rtol=1e-4, atol=1e-4)


def test_outer_bad_input():
    with pytest.raises(ValueError, match="agree on N and T"):
        sp.outer_sketch(torch.randn(3, 2, 4), torch.randn(3, 1, 5), 16)
    with pytest.raises(TypeError, match="same dtype"):
        sp.outer_sketch(torch.randn(3, 4), torch.randn(3, 5, dtype=torch.float16), 16)
    with pytest.raises(ValueError, match="m \\(sketch size\\)"):
        sp.outer_sketch(torch.randn(3, 4), torch.randn(3, 5), 2, k=4)


@backend_params()
def test_outer_empty(backend, device):
    out = _run(backend, torch.empty(0, 2, 3, device=device), torch.empty(0, 2, 4, device=device), 8, 2, 0, 0)
    assert out.shape == (0, 8)
    out = _run(backend, torch.empty(2, 0, 3, device=device), torch.empty(2, 0, 4, device=device), 8, 2, 0, 0)
    assert out.shape == (2, 8) and (out == 0).all()


@backend_params()
def test_outer_opcheck(backend, device):
    a, d = randn(3, 2, 5, device=device), randn(3, 2, 4, device=device)
    kw = {"test_utils": ("test_schema", "test_faketensor")} if interpreted(backend, device) else {}
    with use_backend(backend):
        torch.library.opcheck(torch.ops.sketchprune.outer_sketch.default, (a, d, 16, 4, 1, BIG), **kw)
