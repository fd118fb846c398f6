import pytest
import torch

import sketchprune as sp
from _helpers import assert_close_to_oracle, backend_params, in_dtypes, interpreted, randn, use_backend

SIZES = [(1, 1), (7, 3), (33, 17), (300, 65), (1023, 130)]
SMALL = [(1, 1), (7, 3), (33, 17), (70, 33)]


def _oracle(sigma0, x, alpha, mask):
    xs = x.double() if mask is None else x.double()[mask.cpu() if x.device.type == "cpu" else mask]
    return sigma0.double() + alpha * xs.T @ xs


@backend_params()
@pytest.mark.parametrize("sigma_dtype", [torch.float32, torch.float64])
def test_cov_matches_float64_oracle(backend, device, sigma_dtype):
    sizes = SMALL if interpreted(backend, device) else SIZES
    for x_dtype in in_dtypes(backend, device):
        for t, d in sizes:
            for use_mask in (False, True):
                x = randn(t, d, dtype=x_dtype, device=device)
                a = randn(d, d, dtype=torch.float64)
                sigma0 = (a @ a.T).to(device=device, dtype=sigma_dtype)  # symmetric, non-zero start
                mask = (torch.rand(t) > 0.3).to(device) if use_mask else None
                alpha = 0.37
                sigma = sigma0.clone()
                with use_backend(backend):
                    sp.cov_accumulate_(sigma, x, alpha, mask)
                assert torch.equal(sigma, sigma.T), "sigma must stay exactly symmetric"
                oracle = _oracle(sigma0, x, alpha, mask)
                xs = x.to(sigma_dtype) if mask is None else x.to(sigma_dtype)[mask]
                same = sigma0 + alpha * (xs.T @ xs)
                assert_close_to_oracle(sigma, oracle, same, t, what=f"{x_dtype} T={t} d={d} mask={use_mask}")


@backend_params()
def test_cov_row_strided_and_noncontiguous(backend, device):
    base = randn(40, 24, device=device)
    x = base[::2, :12]  # row stride 48, last dim unit-stride
    xt = randn(12, 20, device=device).T  # last dim not unit-stride: copied
    xb = randn(1, 12, device=device).expand(9, 12)  # broadcast rows (stride 0): materialised
    for xin in (x, xt, xb):
        sigma = torch.zeros(12, 12, device=device)
        with use_backend(backend):
            sp.cov_accumulate_(sigma, xin)
        ref = xin.double().T @ xin.double()
        assert torch.allclose(sigma.double(), ref, rtol=1e-4, atol=1e-4)
    # a non-contiguous accumulator (a transposed view) is updated in place
    big = torch.zeros(12, 12, device=device)
    view = big.T
    with use_backend(backend):
        sp.cov_accumulate_(view, x)
    assert torch.allclose(big.double(), (x.double().T @ x.double()).T, rtol=1e-4, atol=1e-4)


@backend_params()
def test_cov_empty_and_nan(backend, device):
    sigma = torch.eye(4, device=device)
    with use_backend(backend):
        sp.cov_accumulate_(sigma, torch.empty(0, 4, device=device))
    assert torch.equal(sigma, torch.eye(4, device=device))
    x = randn(5, 4, device=device)
    x[2, 1] = float("nan")
    with use_backend(backend):
        sp.cov_accumulate_(sigma, x)
    s = sigma.cpu()
    assert torch.isnan(s[1]).all() and torch.isnan(s[:, 1]).all()  # like torch's x.T @ x
    assert torch.isfinite(s[0, 0]) and torch.isfinite(s[2, 3])


def test_cov_large_row_offset_pointer():
    # a view starting deep into a large-ish buffer: pointers, not offsets, are passed
    buf = randn(1 << 16, 8)
    x = buf[(1 << 16) - 5:]
    sigma = torch.zeros(8, 8)
    sp.cov_accumulate_(sigma, x)
    assert torch.allclose(sigma.double(), x.double().T @ x.double(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, err",
    [
        (lambda: (torch.zeros(3, 3, dtype=torch.float16), torch.zeros(2, 3)), TypeError),
        (lambda: (torch.zeros(3, 3), torch.zeros(2, 3, dtype=torch.float64)), TypeError),
        (lambda: (torch.zeros(3, 3), torch.zeros(2, 4)), ValueError),
        (lambda: (torch.zeros(3), torch.zeros(2, 3)), ValueError),
        (lambda: (torch.zeros(3, 3), torch.zeros(2, 3, 1)), ValueError),
    ],
)
def test_cov_bad_input(make, err):
    sigma, x = make()
    with pytest.raises(err, match="sketchprune::cov_accumulate_"):
        sp.cov_accumulate_(sigma, x)


def test_cov_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        sp.cov_accumulate_(torch.zeros(3, 3), torch.randn(4, 3), mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        sp.cov_accumulate_(torch.zeros(3, 3), torch.randn(4, 3), mask=torch.ones(4))


@backend_params()
@pytest.mark.parametrize("which", ["cov", "cross"])
@pytest.mark.parametrize("view", ["rows", "cols", "as_strided"])
def test_output_with_elements_on_one_location_is_refused(backend, device, which, view):
    """An expanded (or self-overlapping as_strided) output would take each update several times:
    a ValueError naming the argument, on every backend, nothing written."""
    d, dy = 6, 4
    shape = (d, d) if which == "cov" else (d, dy)
    base = torch.zeros(64, device=device)
    out = {"rows": lambda: base[:shape[1]].expand(shape), "cols": lambda: base[:shape[0], None].expand(shape),
           "as_strided": lambda: base.as_strided(shape, (2, 3))}[view]()   # (i, j) and (i + 3, j - 2) meet
    x, y = randn(5, d, device=device), randn(5, dy, device=device)
    name = "sigma" if which == "cov" else "c"
    with use_backend(backend), pytest.raises(ValueError, match=f"{name} .* on one memory location.*clone"):
        sp.cov_accumulate_(out, x) if which == "cov" else sp.cross_accumulate_(out, x, y)
    assert not base.any()


def test_owns_elements_check_is_exact_for_2d_strides():
    """The closed-form overlap test against enumerating every element's offset."""
    from sketchprune.ops._common import check_owns_elements

    g = torch.Generator().manual_seed(0)
    for _ in range(2000):
        n0, n1, s0, s1 = (int(v) for v in torch.randint(0, 9, (4,), generator=g))
        n0, n1 = n0 % 6 + 1, n1 % 6 + 1
        offsets = [i * s0 + j * s1 for i in range(n0) for j in range(n1)]
        t = torch.empty(128).as_strided((n0, n1), (s0, s1))
        if len(set(offsets)) < len(offsets):
            with pytest.raises(ValueError, match="one memory location"):
                check_owns_elements("op", "t", t)
        else:
            check_owns_elements("op", "t", t)


@pytest.mark.parametrize("x_view", [lambda b: b[:3, :4], lambda b: b[3:7, 3:7], lambda b: b[:5, 4:8],
                                    lambda b: b[4:7, 4:8]])
def test_cov_output_sharing_memory_with_input(x_view):
    """x aliasing sigma (wholly, one element, interleaved columns, or disjoint in one buffer): the
    result is the update computed from x's values before the call."""
    buf = randn(8, 8)
    sigma, x = buf[:4, :4], x_view(buf)
    sigma.copy_((sigma + sigma.T) / 2)        # the op keeps a symmetric sigma symmetric
    ref = sigma.double() + x.double().T @ x.double()
    sp.cov_accumulate_(sigma, x)
    torch.testing.assert_close(buf[:4, :4].double(), ref, rtol=1e-5, atol=1e-5)


@backend_params()
def test_cov_opcheck(backend, device):
    sigma = torch.zeros(9, 9, device=device)
    x = randn(13, 9, device=device)
    mask = (torch.rand(13) > 0.5).to(device)
    kw = {"test_utils": ("test_schema", "test_faketensor")} if interpreted(backend, device) else {}
    with use_backend(backend):
        torch.library.opcheck(torch.ops.sketchprune.cov_accumulate_.default, (sigma, x, 0.5, mask), **kw)


@backend_params()
def test_cov_misaligned_input(backend, device):
    """A view starting one element into its buffer (not 16-byte aligned) is read correctly."""
    for dtype in in_dtypes(backend, device):
        t, d = 37, 24
        buf = randn(t * d + 1, dtype=dtype, device=device)
        x = buf[1:].view(t, d)
        sigma = torch.zeros(d, d, device=device)
        with use_backend(backend):
            sp.cov_accumulate_(sigma, x)
        ref = x.double().T @ x.double()
        same = x.float().T @ x.float()
        assert_close_to_oracle(sigma, ref, same, t, what=f"misaligned {dtype}")


def test_cov_refuses_a_sigma_autograd_tracks():
    s = torch.zeros(4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="sigma requires grad"):
        sp.cov_accumulate_(s, torch.randn(5, 4))
    assert (s == 0).all()
    with torch.no_grad():
        sp.cov_accumulate_(s, torch.ones(5, 4))
    assert (s == 5).all()


@backend_params()
def test_in_place_updates_are_seen_by_autograd(backend, device):
    """Every backend bumps the updated matrix's version counter, as torch's in-place ops do, so a
    backward that saved it before the update is refused instead of reading the new values (the
    native kernels write through raw pointers and did not), and an inference tensor is updated only
    inside inference mode."""
    for upd in (lambda s: sp.cov_accumulate_(s, randn(5, 4, device=device)),
                lambda s: sp.cross_accumulate_(s, randn(5, 4, device=device), randn(5, 4, device=device))):
        s = torch.zeros(4, 4, device=device)
        w = torch.ones(4, 4, device=device, requires_grad=True)
        y = (w * s).sum()               # saves s for backward
        v = s._version
        with use_backend(backend):
            upd(s)
        assert s._version > v
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.backward()
        with torch.inference_mode():
            s_inf = torch.zeros(4, 4, device=device)
            with use_backend(backend):
                upd(s_inf)                  # inside inference mode: fine
        assert bool(s_inf.abs().sum() > 0)
        with use_backend(backend), pytest.raises(RuntimeError, match="inference tensor"):
            upd(s_inf)
