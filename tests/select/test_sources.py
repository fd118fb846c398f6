import numpy as np
import pytest
import torch

import sketchprune as sp
from sketchprune.select.sources import intrinsic_dimension, sketch_matrix


def _G(N=50, r=300, seed=0):
    return torch.randn(N, r, generator=torch.Generator().manual_seed(seed))


def test_sparse_sign_source_equals_the_op_for_tensor_numpy_memmap(tmp_path):
    G = _G()
    direct = sp.sparse_sign_sketch(G, 32, 4, 7)
    mm = np.memmap(tmp_path / "g.dat", dtype=np.float32, mode="w+", shape=tuple(G.shape))
    mm[:] = G.numpy()
    mm.flush()
    for src in (G, G.numpy(), np.memmap(tmp_path / "g.dat", dtype=np.float32, mode="r", shape=tuple(G.shape))):
        out, rec = sketch_matrix(src, 32, 4, 7, device="cpu")
        assert torch.allclose(out, direct, rtol=1e-5, atol=1e-5)
        assert rec == {"sketch": "sparse-sign", "m": 32, "k": 4, "seed": 7, "N": 50, "r": 300}


def test_small_budget_same_result():
    G = _G(200, 500)
    free, _ = sketch_matrix(G, 16, 4, 1, device="cpu")
    small, _ = sketch_matrix(G, 16, 4, 1, device="cpu", budget=20 * (4 * 500 + 64))  # ~20 rows a block
    assert torch.allclose(small, free, rtol=1e-5, atol=1e-5)
    with pytest.raises(sp.BudgetError, match="sketch_matrix"):
        sketch_matrix(G, 16, 4, 1, device="cpu", budget=100)


def test_gaussian_reproducible_and_norm_preserving():
    G = _G(400, 5000, seed=2).double()
    a, rec = sketch_matrix(G, 256, seed=3, sketch="gaussian", device="cpu")
    b, _ = sketch_matrix(G, 256, seed=3, sketch="gaussian", device="cpu", budget=50 * (4 * 4096 + 1024) + 4 * 4096 * 256)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5) and rec["k"] is None
    ratio = a.double().pow(2).sum(1) / G.pow(2).sum(1)
    assert abs(float(ratio.mean()) - 1) < 0.05


def test_intrinsic_dimension_of_a_low_rank_plus_noise_sketch():
    g = torch.Generator().manual_seed(0)
    N, m, t = 2000, 64, 6
    X = torch.randn(N, t, generator=g) @ (torch.randn(t, m, generator=g) * 5) + 0.01 * torch.randn(N, m, generator=g)
    assert intrinsic_dimension(X) == t


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        sketch_matrix(torch.randn(5), 8)
    with pytest.raises(ValueError, match="sketch must be"):
        sketch_matrix(torch.randn(5, 5), 8, sketch="fourier")


@pytest.mark.parametrize("sketch", ["sparse-sign", "gaussian"])
def test_values_outside_float32_range_are_named(sketch):
    G = np.random.default_rng(0).standard_normal((6, 40))
    for big in (1e39, 1e300):
        H = G.copy()
        H[4, 7] = big
        with pytest.raises(ValueError, match=r"finite values outside float32's range in row 4 .*rescale the gradients"):
            sketch_matrix(H, 8, sketch=sketch, device="cpu")
        with pytest.raises(ValueError, match="outside float32's range in row 4"):
            sketch_matrix(torch.from_numpy(H), 8, sketch=sketch, device="cpu")
    for tiny in (1e-45, 1e-40, 1e-300):  # every value subnormal or zero in float32
        with pytest.raises(ValueError, match=r"too small for float32 .*rescale the gradients"):
            sketch_matrix(G * tiny, 8, sketch=sketch, device="cpu")
    # inside the range: fine, also far from 1; non-finite input rows stay for the selection to name
    out, _ = sketch_matrix(G * 1e-30, 8, sketch=sketch, device="cpu")
    ref, _ = sketch_matrix(G, 8, sketch=sketch, device="cpu")
    assert torch.allclose(out.double() * 1e30, ref.double(), rtol=1e-5, atol=1e-5)
    H = G.copy()
    H[2, 3] = np.nan
    out, _ = sketch_matrix(H, 8, sketch=sketch, device="cpu")
    assert not bool(torch.isfinite(out[2]).all()) and bool(torch.isfinite(out[[0, 1, 3, 4, 5]]).all())
    assert torch.equal(sketch_matrix(np.zeros((4, 5)), 8, sketch=sketch, device="cpu")[0], torch.zeros(4, 8))


def test_intrinsic_dimension_detached_and_non_finite_rows_named():
    X = _G(30, 6)
    assert intrinsic_dimension(X.clone().requires_grad_(True)) == intrinsic_dimension(X)
    X[4, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf values in 1 of 30 rows \(4\)"):
        intrinsic_dimension(X)


def test_a_sketch_that_cancels_to_zero_is_not_an_underflow():
    """[1, 1] with opposite signs in S sketches to exactly 0: ordinary values, no error (it was
    reported as values too small for float32)."""
    from sketchprune.select.sources import sketch_matrix

    zero = 0
    for seed in range(6):
        sk, _ = sketch_matrix(torch.tensor([[1.0, 1.0]]), 1, 1, seed=seed, device="cpu")
        zero += int(sk.abs().max() == 0)
    assert zero > 0   # some seed cancels
    with pytest.raises(ValueError, match="too small for float32"):
        sketch_matrix(torch.full((2, 3), 1e-45, dtype=torch.float64), 4, 1, device="cpu")


@pytest.mark.parametrize("sketch", ["sparse-sign", "gaussian"])
def test_big_endian_arrays_and_memmaps_are_read_block_by_block(tmp_path, sketch, monkeypatch):
    """A big-endian array (valid in .npy files) sketches like the native one -- also a memmap,
    converted one block at a time (never a converted copy of the whole matrix), and in the error
    paths that re-read G in its own dtype."""
    import sketchprune.select.sources as src
    from sketchprune.ops.sketch import sparse_sign_sketch_workspace
    G = np.random.default_rng(0).standard_normal((64, 300))
    ref, _ = sketch_matrix(G.astype(np.float32), 16, 4, 3, sketch=sketch, device="cpu")
    # about 8 rows a block (the planner's own terms: the kernel's workspace or the Gaussian S block)
    if sketch == "sparse-sign":
        budget = sparse_sign_sketch_workspace(64, 300, 16, 4, torch.float32, "cpu", any_rows=True) + 8 * 4 * (300 + 16)
    else:
        budget = 4 * src.GAUSS_BLOCK * 16 + 8 * 4 * (src.GAUSS_BLOCK + 16)
    for dt in (">f4", ">f8", ">f2"):
        np.save(tmp_path / "g.npy", G.astype(dt))
        mm = np.load(tmp_path / "g.npy", mmap_mode="r")
        assert mm.dtype.str == dt
        seen = []
        real = src.native
        monkeypatch.setattr(src, "native", lambda a: seen.append(a.size) or real(a))
        out, _ = sketch_matrix(mm, 16, 4, 3, sketch=sketch, device="cpu", budget=budget)
        monkeypatch.undo()
        tol = 2e-2 if dt == ">f2" else 1e-5
        assert torch.allclose(out, ref, rtol=tol, atol=tol * float(ref.abs().max())), dt
        assert sum(seen) == G.size and max(seen) <= 8 * 300
    H = G.astype(">f8")
    H[5, 7] = 1e300
    with pytest.raises(ValueError, match="outside float32's range in row 5"):
        sketch_matrix(H, 8, sketch=sketch, device="cpu")
    # integers in either byte order, too
    I = np.random.default_rng(1).integers(-50, 50, (20, 30))
    a, _ = sketch_matrix(I.astype(">i4"), 8, device="cpu", sketch=sketch)
    b, _ = sketch_matrix(I.astype(np.float64), 8, device="cpu", sketch=sketch)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)


def test_unsupported_dtypes_are_named():
    """Long double (numpy's float128 on x86) has no torch dtype, and complex gradients no real
    sketch: a ValueError naming the dtype, not torch's TypeError from the middle of the stream."""
    G = np.random.default_rng(0).standard_normal((6, 10))
    with pytest.raises(ValueError, match=rf"G has unsupported dtype {np.dtype(np.longdouble)}: extended precision"):
        sketch_matrix(G.astype(np.longdouble), 4, device="cpu")
    for bad in (G.astype(np.complex128), torch.from_numpy(G).to(torch.complex64)):
        with pytest.raises(ValueError, match="unsupported dtype .*complex"):
            sketch_matrix(bad, 4, device="cpu")
    with pytest.raises(ValueError, match="dense tensor"):
        sketch_matrix(torch.from_numpy(G).to_sparse(), 4, device="cpu")
