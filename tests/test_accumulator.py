import pytest
import torch

import sketchprune as sp
from _helpers import randn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_moments_match_float64(dtype):
    d, dy = 33, 5
    acc = sp.CovarianceAccumulator(d, dtype=dtype, cross_dim=dy, stage_rows=64)
    xs, ys, ms = [], [], []
    for t in [1, 7, 100, 3, 50, 200, 9]:
        x, y = randn(2, t, d, dtype=torch.bfloat16), randn(2, t, dy, dtype=torch.bfloat16)
        m = torch.rand(2, t) > 0.2
        acc.update(x, y, m)
        xs.append(x.reshape(-1, d)[m.reshape(-1)]), ys.append(y.reshape(-1, dy)[m.reshape(-1)])
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    n = x.shape[0]
    assert acc.count == n
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert torch.allclose(acc.covariance().double(), x.T @ x / n, **tol)
    c = acc.covariance(centered=True)
    assert torch.equal(c, c.T)
    mu = x.mean(0)
    assert torch.allclose(c.double(), x.T @ x / n - torch.outer(mu, mu), **tol)
    assert torch.allclose(acc.mean().double(), mu, **tol)
    assert torch.allclose(acc.cross().double(), x.T @ y / n, **tol)
    assert torch.allclose(acc.diag().double(), (x * x).mean(0), **tol)


def test_staging_equals_direct():
    d = 20
    chunks = [randn(5, d) for _ in range(30)]
    staged = sp.CovarianceAccumulator(d, stage_rows=64)
    direct = sp.CovarianceAccumulator(d, stage_rows=1)
    for x in chunks:
        staged.update(x)
        direct.update(x)
    assert torch.allclose(staged.covariance(), direct.covariance(), rtol=1e-6, atol=1e-6)


def test_drain_into_moves_the_raw_sums():
    d, dy = 12, 3
    acc = sp.CovarianceAccumulator(d, cross_dim=dy, stage_rows=32)
    tot_s = torch.zeros(d, d, dtype=torch.float64)
    tot_c = torch.zeros(d, dy, dtype=torch.float64)
    xs, ys = [], []
    for i in range(6):
        x, y = randn(7, d), randn(7, dy)
        acc.update(x, y)
        xs.append(x), ys.append(y)
        if i in (2, 4):
            acc.drain_into(tot_s, tot_c)
            assert torch.count_nonzero(acc.sigma) == 0
    acc.drain_into(tot_s, tot_c)
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    assert acc.count == x.shape[0]
    assert torch.allclose(tot_s, x.T @ x, rtol=1e-5, atol=1e-5)
    assert torch.allclose(tot_c, x.T @ y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="cross"):
        acc.drain_into(tot_s)
    with pytest.raises(ValueError, match="sigma"):
        acc.drain_into(torch.zeros(3, 3), tot_c)


def test_merge():
    a, b, both = (sp.CovarianceAccumulator(8) for _ in range(3))
    for i in range(4):
        x = randn(10, 8)
        (a if i % 2 else b).update(x)
        both.update(x)
    a.merge_(b)
    assert a.count == both.count
    assert torch.allclose(a.covariance(), both.covariance(), rtol=1e-6, atol=1e-6)


def test_errors():
    acc = sp.CovarianceAccumulator(4)
    with pytest.raises(RuntimeError, match="no rows"):
        acc.covariance()
    with pytest.raises(ValueError, match="shape"):
        acc.update(torch.randn(3, 5))
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        acc.update(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="y must be given"):
        acc.update(torch.randn(3, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="mask"):
        acc.update(torch.randn(3, 4), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="cross"):
        acc.update(torch.randn(3, 4))
        acc.cross()
    with pytest.raises(TypeError):
        sp.CovarianceAccumulator(4, dtype=torch.float16)


def test_accumulator_device_spelling_and_masked_non_finite_rows():
    acc = sp.CovarianceAccumulator(4, device="cpu:0")      # the same device as tensors' "cpu"
    x = torch.randn(6, 4)
    x[2] = float("nan")
    x[4] = float("inf")
    mask = torch.ones(6, dtype=torch.bool)
    mask[[2, 4]] = False
    acc.update(x, mask=mask)
    keep = x[mask].double()
    assert torch.allclose(acc.mean().double(), keep.mean(0), atol=1e-6)   # NaN in skipped rows stays out
    assert torch.isfinite(acc.covariance(centered=True)).all()


def test_float32_centred_covariance_warns_when_the_mean_swamps_the_spread():
    g = torch.Generator().manual_seed(0)
    x = 1e4 + torch.randn(20000, 3, generator=g)
    a32 = sp.CovarianceAccumulator(3)
    a32.update(x)
    with pytest.warns(UserWarning, match="use dtype=torch.float64"):
        a32.covariance(centered=True)
    a64 = sp.CovarianceAccumulator(3, dtype=torch.float64)
    a64.update(x)
    assert torch.allclose(torch.diagonal(a64.covariance(centered=True)), x.double().var(0, correction=0), rtol=1e-4)
