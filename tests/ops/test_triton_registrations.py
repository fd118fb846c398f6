"""opcheck on the private Triton registrations (sketchprune::_<op>_triton).

Under the interpreter (CPU) only the schema and fake-tensor checks can run: the interpreter
touches data pointers while tracing, which the aot-dispatch check forbids.  On a GPU the full
opcheck runs."""

import pytest
import torch

import sketchprune as sp
from sketchprune import _backends
from _helpers import randn

DEV = "cuda" if torch.cuda.is_available() else "cpu"
_why = _backends.unavailable_reason("triton", DEV)
pytestmark = pytest.mark.skipif(_why is not None, reason=str(_why))
KW = {} if DEV == "cuda" else {"test_utils": ("test_schema", "test_faketensor")}


def _cases():
    x = randn(13, 9, device=DEV)
    y = randn(13, 5, device=DEV)
    a, d = randn(3, 2, 6, device=DEV), randn(3, 2, 4, device=DEV)
    w = randn(12, 8, device=DEV)
    idx = torch.tensor([2, 0], device=DEV)
    mask = (torch.rand(13) > 0.5).to(DEV)
    return {
        "_cov_accumulate_triton": (torch.zeros(9, 9, device=DEV), x, 0.5, mask),
        "_cross_accumulate_triton": (torch.zeros(9, 5, device=DEV), x, y, 1.0, None),
        "_sparse_sign_sketch_triton": (randn(4, 50, device=DEV), 16, 4, 7, 2**33),
        "_outer_sketch_triton": (a, d, 16, 4, 1, 5),
        "_gather_slices_triton": ([w, w], [idx, idx], [0, 1], [4, 2]),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_triton_registration_opcheck(name):
    args = _cases()[name]
    torch.library.opcheck(getattr(torch.ops.sketchprune, name).default, args, **KW)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_triton_ops_launch_on_the_tensors_gpu():
    """Triton launches on the current device: tensors on cuda:1 while cuda:0 is current must still
    be computed on cuda:1 (each op sets the tensors' device around its launch)."""
    pytest.importorskip("triton")
    dev = torch.device("cuda:1")
    torch.cuda.set_device(0)
    g = torch.randn(40, 300, device=dev)
    x, y = torch.randn(64, 24, device=dev), torch.randn(64, 8, device=dev)
    a, d = torch.randn(40, 3, 16, device=dev), torch.randn(40, 3, 8, device=dev)
    w = torch.randn(48, 32, device=dev)
    with sp.use_backend("triton"):
        s = sp.sparse_sign_sketch(g, 64, 4, 1)
        o = sp.outer_sketch(a, d, 64, 4, 1)
        sigma, c = torch.zeros(24, 24, device=dev), torch.zeros(24, 8, device=dev)
        sp.cov_accumulate_(sigma, x)
        sp.cross_accumulate_(c, x, y)
        (gw,) = sp.gather_slices([w], torch.tensor([0, 5, 7], device=dev), 0)
    torch.cuda.synchronize(dev)
    with sp.use_backend("torch"):
        torch.testing.assert_close(s, sp.sparse_sign_sketch(g, 64, 4, 1), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(o, sp.outer_sketch(a, d, 64, 4, 1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sigma, x.T @ x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(c, x.T @ y, rtol=1e-4, atol=1e-4)
    assert torch.equal(gw, w[[0, 5, 7]])
