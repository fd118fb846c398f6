import pytest
import torch

from sketchprune.prune.reconstruct import refit_columns


def _data(T=400, d_in=12, d_out=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g)
    X = torch.randn(T, d_in, generator=g, dtype=torch.float64) @ mix.double()  # correlated inputs
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    return X, W


def test_keep_all_is_exact():
    X, W = _data()
    V, info = refit_columns(W.float(), torch.arange(12), X.T @ X / len(X))
    assert torch.equal(V, W.float()) and info["refit"] is False


def test_refit_equals_ridge_toward_dense_least_squares():
    X, W = _data()
    keep = torch.tensor([0, 2, 3, 7, 9, 11])
    S = X.T @ X / len(X)
    V, info = refit_columns(W, keep, S, default_alpha=1e-3)
    lam = 1e-3 * float(torch.trace(S[keep][:, keep])) / len(keep)
    # direct: minimise mean ||X W^T - X_K V^T||^2 + lam ||V - W_K||^2 by normal equations
    Xk = X[:, keep]
    A = Xk.T @ Xk / len(X) + lam * torch.eye(len(keep), dtype=torch.float64)
    B = Xk.T @ (X @ W.T) / len(X) + lam * W[:, keep].T
    assert torch.allclose(V, torch.linalg.solve(A, B).T, rtol=1e-9, atol=1e-10)
    assert info["fit_error"] < info["fit_error_none"]


def test_heldout_choice_never_worse_than_no_refit():
    X, W = _data(T=60)  # few tokens: the refit can over-fit
    Xh, _ = _data(T=2000, seed=1)
    keep = torch.tensor([1, 4, 5, 8])
    V, info = refit_columns(W, keep, X.T @ X / len(X), Xh.T @ Xh / len(Xh))
    assert info["eval_error"] <= info["eval_error_none"] + 1e-12
    assert 0 <= info["fit_error"] <= 1 + 1e-9


def _token_batches(n=6, b=2, t=12, seed=3, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (b, t), generator=g) for _ in range(n)]


def test_prune_model_with_reconstruction():
    import pytest

    pytest.importorskip("transformers")
    from prune_models import make_model

    from sketchprune.prune import prune_model

    model = make_model("llama", dtype=torch.float64)
    rep = prune_model(model, _token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, progress=False)
    assert set(rep["reconstruction"]) == set(range(4))
    for layer in rep["reconstruction"].values():
        for info in layer.values():
            assert info["eval_error"] <= info["eval_error_none"] + 1e-12  # never worse held out
            assert info["fit_error"] <= info["fit_error_none"] + 1e-12 or not info["refit"]
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=_token_batches(1)[0]).logits).all()


def test_reconstruction_at_sparsity_zero_leaves_the_model_exactly():
    import pytest

    pytest.importorskip("transformers")
    from prune_models import make_model

    from sketchprune.prune import prune_model

    model, ref = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    prune_model(model, _token_batches(), sparsity=0.0, attn_sparsity=0.0, criterion="sigma", reconstruct=True,
                progress=False)
    sd, sr = model.state_dict(), ref.state_dict()
    assert all(torch.equal(sd[k], sr[k]) for k in sr)


def _stream_moments(X, Y, chunks=5, dtype=torch.float64, mask=None):
    """FullMoments with targets, fed in chunks (dtype float32 goes through the kernels)."""
    from sketchprune.prune.calibration import FullMoments

    m = FullMoments(X.shape[1], "cpu", cross_dim=Y.shape[1], stage_rows=0)
    for idx in torch.arange(len(X)).chunk(chunks):
        m.update(X[idx].to(dtype), None if mask is None else mask[idx], y=Y[idx].to(dtype))
    return m


def test_fit_linear_matches_float64_lstsq():
    """V = argmin ||X_K V^T - Y||^2 + lam' ||V - A||^2 (sum form, lam' = n * lam) by lstsq on the
    stacked system [X_K; sqrt(lam') I] V^T = [Y; sqrt(lam') A^T], on random correlated data."""
    from sketchprune.prune.reconstruct import fit_linear

    X, W = _data(T=300, d_in=12, d_out=5)
    g = torch.Generator().manual_seed(7)
    Y = X @ W.T + 0.3 * torch.randn(300, 5, generator=g, dtype=torch.float64)   # not exactly reachable
    keep = torch.tensor([0, 2, 3, 7, 9, 11])
    A = torch.randn(5, len(keep), generator=g, dtype=torch.float64)
    fit = _stream_moments(X, Y)
    V, info = fit_linear(A, keep, fit, None, default_alpha=0.05)
    Xk = X[:, keep]
    lam = 0.05 * float((Xk ** 2).sum()) / len(X) / len(keep)
    assert info["lambda"] == pytest.approx(lam, rel=1e-12)
    s = (len(X) * lam) ** 0.5
    ref = torch.linalg.lstsq(torch.cat([Xk, s * torch.eye(len(keep), dtype=torch.float64)]),
                             torch.cat([Y, s * A.T])).solution.T
    torch.testing.assert_close(V, ref, rtol=1e-9, atol=1e-11)
    # the reported relative errors are the real ones
    err = lambda M: float(((Xk @ M.T - Y) ** 2).sum() / (Y ** 2).sum())
    assert info["fit_error"] == pytest.approx(err(V), rel=1e-9)
    assert info["fit_error_none"] == pytest.approx(err(A), rel=1e-9)
    assert info["fit_error"] < info["fit_error_none"]


def test_streamed_cross_moments_kernel_path_and_mask():
    """float32 inputs go through cov_accumulate_/cross_accumulate_; masked rows are skipped."""
    X, W = _data(T=257, d_in=12, d_out=5)
    Y = X @ W.T
    mask = torch.rand(257, generator=torch.Generator().manual_seed(2)) > 0.3
    m = _stream_moments(X.float(), Y.float(), chunks=7, dtype=torch.float32, mask=mask)
    Xr, Yr = X.float().double()[mask], Y.float().double()[mask]
    n = int(mask.sum())
    assert m.count == n
    tol = dict(rtol=1e-5, atol=1e-5 * float(Xr.abs().max() * Yr.abs().max()))
    torch.testing.assert_close(m.second_moment(), Xr.T @ Xr / n, **tol)
    torch.testing.assert_close(m.cross(), Xr.T @ Yr / n, **tol)
    assert m.target_energy() == pytest.approx(float((Yr ** 2).sum()) / n, rel=1e-5)


def test_grid_walk_finds_the_exhaustive_choice():
    """On ridge problems with a single held-out optimum the walk from the grid's middle ends where
    evaluating every candidate does (and the held-out error is never above the no-refit one)."""
    from sketchprune.prune.reconstruct import ridge_toward

    grid = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    for seed, T in ((0, 40), (1, 80), (2, 400), (3, 4000)):
        X, W = _data(T=T, d_in=12, d_out=5, seed=seed)
        g = torch.Generator().manual_seed(seed + 10)
        Y = X @ W.T + 0.5 * torch.randn(T, 5, generator=g, dtype=torch.float64)
        Xh, _ = _data(T=2000, d_in=12, d_out=5, seed=seed + 20)
        Yh = Xh @ W.T + 0.5 * torch.randn(2000, 5, generator=g, dtype=torch.float64)
        keep = torch.tensor([0, 1, 4, 6, 7, 10])
        A = W[:, keep]

        def mom(X, Y):
            Xk = X[:, keep]
            return Xk.T @ Xk / len(X), Xk.T @ Y / len(X), float((Y ** 2).sum()) / len(X)
        S, C, e = mom(X, Y)
        V1, i1 = ridge_toward(A, S, C, e, mom(Xh, Yh), grid)
        V2, i2 = ridge_toward(A, S, C, e, mom(Xh, Yh), grid, exhaustive=True)
        assert i1["alpha"] == i2["alpha"] and torch.equal(V1, V2), (seed, i1, i2)
        assert i1["eval_error"] <= i1["eval_error_none"]


def test_full_moments_float64_totals_of_float32_partials():
    """float32 inputs with float64 statistics: kernel products in float32, drained into float64
    totals -- equal to the float64 moments to float32 accuracy, whatever the number of updates
    (many small updates, a drain boundary crossed several times, masked rows)."""
    from sketchprune.prune import calibration
    from sketchprune.prune.calibration import FullMoments

    g = torch.Generator().manual_seed(3)
    X = torch.randn(3000, 24, generator=g, dtype=torch.float64) @ torch.randn(24, 24, generator=g, dtype=torch.float64)
    Y = torch.randn(3000, 6, generator=g, dtype=torch.float64)
    mask = torch.rand(3000, generator=g) > 0.2
    old = calibration._DRAIN_ROWS
    calibration._DRAIN_ROWS = 700
    try:
        m = FullMoments(24, "cpu", cross_dim=6, stage_rows=0)
        for idx in torch.arange(3000).chunk(13):
            m.update(X[idx].float(), mask[idx], y=Y[idx].float())
        assert m._acc.dtype == torch.float32
        S, C = m.second_moment(), m.cross()
        # the first read ends the accumulation: the float32 workspace is freed, later reads
        # return the same tensors, and a further update is refused without changing them
        assert m._acc is None and m.second_moment() is S and m.cross() is C
        S0 = S.clone()
        with pytest.raises(RuntimeError, match="already read"):
            m.update(X[:5].float(), mask[:5], y=Y[:5].float())
        assert torch.equal(m.second_moment(), S0)
    finally:
        calibration._DRAIN_ROWS = old
    Xm, Ym = X.float().double()[mask], Y.float().double()[mask]
    torch.testing.assert_close(S, Xm.T @ Xm / len(Xm), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(C, Xm.T @ Ym / len(Xm), rtol=1e-5, atol=1e-5)
    assert S.dtype == torch.float64 and C.dtype == torch.float64


def test_refit_columns_rejects_repeated_or_out_of_range_columns():
    from sketchprune.prune.reconstruct import refit_columns

    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 6, generator=g, dtype=torch.float64)
    X = torch.randn(50, 6, generator=g, dtype=torch.float64)
    S = X.T @ X / 50
    for keep in ([0, 2, 2], [0, 6], [-1, 3]):
        with pytest.raises(ValueError, match="distinct column indices"):
            refit_columns(W, torch.tensor(keep), S, S)
    V, info = refit_columns(W, torch.tensor([4, 0, 2]), S, S)    # any order of distinct columns
    assert V.shape == (3, 3) and info["fit_error"] <= info["fit_error_none"] + 1e-12


def test_ridge_toward_accepts_inference_mode_moments():
    from sketchprune.prune.reconstruct import ridge_toward

    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    A = torch.randn(2, 5, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(5, 2, generator=g, dtype=torch.float64)
    ref = ridge_toward(A, X.T @ X / 40, X.T @ Y / 40, float(Y.square().sum() / 40))[0]
    with torch.inference_mode():
        S, C = X.T @ X / 40, X.T @ Y / 40
    S0 = S.clone()
    V = ridge_toward(A, S, C, float(Y.square().sum() / 40))[0]
    assert torch.equal(V, ref) and torch.equal(S, S0)


def test_rel_error_of_an_exact_fit_is_not_negative():
    """energy - 2 z.c + z.Sz of an exact fit is rounding noise of either sign; a relative squared
    error is reported as >= 0 (reports showed -7e-10)."""
    from sketchprune.prune.reconstruct import rel_error

    vals = []
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        X = torch.randn(64, 6, generator=g, dtype=torch.float64)
        W = torch.randn(3, 6, generator=g, dtype=torch.float64)
        Y = X @ W.T
        e = rel_error(W, X.T @ X, X.T @ Y, float(Y.square().sum()))
        assert 0.0 <= e < 1e-12
        vals.append(e)
    assert max(vals) > 0.0   # the noise is kept when positive (no rounding to zero)
