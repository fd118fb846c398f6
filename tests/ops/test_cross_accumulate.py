import pytest
import torch

import sketchprune as sp
from _helpers import assert_close_to_oracle, backend_params, in_dtypes, interpreted, randn, use_backend

SIZES = [(1, 1, 1), (7, 3, 5), (33, 17, 40), (500, 65, 31), (1023, 130, 70)]
SMALL = [(1, 1, 1), (7, 3, 5), (33, 17, 40)]


@backend_params()
@pytest.mark.parametrize("c_dtype", [torch.float32, torch.float64])
def test_cross_matches_float64_oracle(backend, device, c_dtype):
    for x_dtype in in_dtypes(backend, device):
        for t, di, do in SMALL if interpreted(backend, device) else SIZES:
            for use_mask in (False, True):
                x = randn(t, di, dtype=x_dtype, device=device)
                y = randn(t, do, dtype=x_dtype, device=device)
                c0 = randn(di, do, dtype=c_dtype, device=device)
                mask = (torch.rand(t) > 0.4).to(device) if use_mask else None
                c = c0.clone()
                with use_backend(backend):
                    sp.cross_accumulate_(c, x, y, -1.5, mask)
                xd, yd = x.double(), y.double()
                xc, yc = x.to(c_dtype), y.to(c_dtype)
                if mask is not None:
                    xd, yd, xc, yc = xd[mask], yd[mask], xc[mask], yc[mask]
                oracle = c0.double() - 1.5 * xd.T @ yd
                same = c0 - 1.5 * (xc.T @ yc)
                assert_close_to_oracle(c, oracle, same, t, what=f"{x_dtype} {t}x{di}x{do} mask={use_mask}")


def test_cross_bad_input():
    with pytest.raises(TypeError, match="same dtype"):
        sp.cross_accumulate_(torch.zeros(3, 2), torch.randn(4, 3), torch.randn(4, 2, dtype=torch.float16))
    with pytest.raises(ValueError, match="same number of rows"):
        sp.cross_accumulate_(torch.zeros(3, 2), torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="must be \\(3, 2\\)"):
        sp.cross_accumulate_(torch.zeros(2, 3), torch.randn(4, 3), torch.randn(4, 2))


def test_cross_output_sharing_memory_with_input():
    buf, x = randn(10, 10), randn(4, 3)
    c, y = buf[:3, :2], buf[1:5, :2]
    ref = c.double() + x.double().T @ y.double()
    sp.cross_accumulate_(c, x, y)
    torch.testing.assert_close(buf[:3, :2].double(), ref, rtol=1e-5, atol=1e-5)


@backend_params()
def test_cross_opcheck(backend, device):
    c = torch.zeros(6, 5, device=device)
    x, y = randn(11, 6, device=device), randn(11, 5, device=device)
    kw = {"test_utils": ("test_schema", "test_faketensor")} if interpreted(backend, device) else {}
    with use_backend(backend):
        torch.library.opcheck(torch.ops.sketchprune.cross_accumulate_.default, (c, x, y, 2.0, None), **kw)


@backend_params()
def test_cross_one_row_output_with_a_short_row_stride(backend, device):
    """c of one row (d_in = 1) whose row stride is below d_out -- a transposed column, which torch
    calls contiguous -- is accepted by every backend (the CUDA binding once required ldc >= d_out
    even for one row)."""
    c = torch.zeros(5, 1, device=device).T
    assert c.shape == (1, 5) and c.stride() == (1, 1) and c.is_contiguous()
    x, y = randn(9, 1, device=device), randn(9, 5, device=device)
    with use_backend(backend):
        sp.cross_accumulate_(c, x, y, 2.0)
    torch.testing.assert_close(c.double().cpu(), 2.0 * x.double().cpu().T @ y.double().cpu(), rtol=1e-5, atol=1e-5)
