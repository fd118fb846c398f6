"""opcheck on the private Triton registrations (sketchprune::_<op>_triton).

Under the interpreter (CPU) only the schema and fake-tensor checks can run: the interpreter
touches data pointers while tracing, which the aot-dispatch check forbids.  On a GPU the full
opcheck runs."""

import pytest
import torch

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
