"""alpha far from 1 in the accumulations: every backend scales by the exact float64 alpha (the
Triton kernels receive alpha as three fp32 parts, exact only within a range of magnitudes; beyond
it they ran into NaN from |alpha| ~ 3.4e299 in the interpreter, and on a GPU the fp32 parts
under/overflow much earlier: the launchers scale outside the kernel there)."""

import pytest
import torch

import sketchprune as sp
from _helpers import backend_params, use_backend

ALPHAS = [1e-300, -3e-25, 2.0 ** -80, 5e-20, 3.7, -1e30, 3e38, 1e39, 1e200, -3.4e299, 1e300]


@backend_params()
def test_cov_and_cross_scale_by_the_exact_alpha(backend, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, generator=g).to(device)
    y = torch.randn(9, 3, generator=g).to(device)
    mask = (torch.rand(9, generator=g) > 0.3).to(device)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    s0 = (a @ a.T).to(device)
    c0 = torch.randn(5, 3, generator=g, dtype=torch.float64).to(device)
    xm, ym = x.double()[mask], y.double()[mask]
    for alpha in ALPHAS:
        s, c = s0.clone(), c0.clone()
        with use_backend(backend):
            sp.cov_accumulate_(s, x, alpha, mask)
            sp.cross_accumulate_(c, x, y, alpha, mask)
        ref_s = s0 + alpha * (xm.T @ xm)
        ref_c = c0 + alpha * (xm.T @ ym)
        assert torch.isfinite(s).all() and torch.isfinite(c).all(), alpha
        assert torch.equal(s, s.T), alpha
        torch.testing.assert_close(s, ref_s, rtol=1e-6, atol=1e-6, msg=f"cov, alpha={alpha}")
        torch.testing.assert_close(c, ref_c, rtol=1e-6, atol=1e-6, msg=f"cross, alpha={alpha}")


def test_the_exact_range_of_the_fp32_parts():
    kernels = pytest.importorskip("sketchprune.kernels._util")
    lo, hi = kernels.ALPHA_EXACT
    for alpha in (lo, hi / 2, 0.37, 1e-20, 1e38):
        parts = kernels.split_f64(alpha)
        assert sum(parts) == alpha and all(p == float(torch.tensor(p, dtype=torch.float32)) for p in parts)
        assert all(p == 0.0 or abs(p) >= 2.0 ** -126 for p in parts)
        assert kernels.alpha_exact(alpha)
    assert not kernels.alpha_exact(1e39) and not kernels.alpha_exact(1e-30) and kernels.alpha_exact(0.0)


@backend_params()
def test_float32_accumulators_with_alpha_beyond_float32(backend, device):
    """alpha beyond float32's range on float32 accumulators, through the Triton launchers' fallback:
    what the float64 product rounds to, not an error (it raised: add_ refused an alpha beyond
    float32).  (The CPU and torch backends scale by alpha rounded to float32: inf here.)"""
    if backend != "triton":
        pytest.skip("the fallback under test is the Triton launchers'")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(9, 5, generator=g).to(device), torch.randn(9, 3, generator=g).to(device)
    for alpha in (1e39, -1e60, 1e-50):
        s, c = torch.eye(5, device=device), torch.zeros(5, 3, device=device)
        with use_backend(backend):
            sp.cov_accumulate_(s, x, alpha)
            sp.cross_accumulate_(c, x, y, alpha)
        ref_s = (torch.eye(5, dtype=torch.float64) + alpha * (x.double().T @ x.double()).cpu()).float()
        ref_c = (alpha * (x.double().T @ y.double()).cpu()).float()
        torch.testing.assert_close(s.cpu(), ref_s, rtol=1e-4, atol=1e-30, msg=f"cov {alpha}")   # fp32 products
        torch.testing.assert_close(c.cpu(), ref_c, rtol=1e-4, atol=1e-30, msg=f"cross {alpha}")
