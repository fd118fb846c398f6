"""Registers the Triton kernels (sketchprune.kernels) as private torch.library triton_ops.

``sketchprune::_<op>_triton`` -- registered with ``torch.library.triton_op`` so that
``torch.compile`` can see into them, each with an explicit fake (the Triton interpreter
touches data pointers while tracing, so the default fake cannot be used on CPU).  The public
ops call these when the registry picks the ``triton`` backend.  Registration happens once, the
first time the registry considers the triton backend (so ``import sketchprune`` does not import
triton and torch's compiler stack, ~1 s, on machines where the CPU backend answers every call), and
only when triton is importable; a failure is recorded and reported by ``python -m sketchprune.info``
and by the registry when the backend is asked for.
"""

import contextlib
import math
import threading
from typing import List, Optional

import torch

from .._backends import triton_importable
from ._common import new_output

_state = {"tried": False, "error": None}
_lock = threading.Lock()


def ensure() -> None:
    if _state["tried"]:
        return
    with _lock:  # two threads' first calls must not register twice
        if _state["tried"]:
            return
        if not triton_importable():
            _state["error"] = "triton is not installed"
        else:
            try:
                _register()
            except Exception as exc:  # recorded, surfaced when the backend is requested
                _state["error"] = f"{type(exc).__name__}: {exc}"
        _state["tried"] = True


def registered() -> bool:
    ensure()
    return _state["error"] is None


def load_error():
    ensure()
    return _state["error"]


def _on(t: torch.Tensor):
    """The tensor's GPU as the current device for the launch: Triton launches on the current
    device and its current stream, whatever device the pointers are on (tensors on cuda:1 while
    cuda:0 is current would be an illegal memory access)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _register() -> None:
    from torch.library import register_fake, triton_op

    from ..kernels import cov_accumulate as k_cov
    from ..kernels import cross_accumulate as k_cross
    from ..kernels import gather_slices as k_gather
    from ..kernels import outer_sketch as k_outer
    from ..kernels import sparse_sign_sketch as k_sketch

    @triton_op("sketchprune::_cov_accumulate_triton", mutates_args={"sigma"})
    def _cov(sigma: torch.Tensor, x: torch.Tensor, alpha: float, mask: Optional[torch.Tensor]) -> None:
        with _on(sigma):
            k_cov.launch_cov_accumulate(sigma, x, alpha, mask)

    @register_fake("sketchprune::_cov_accumulate_triton")
    def _cov_fake(sigma, x, alpha, mask):
        return None

    @triton_op("sketchprune::_cross_accumulate_triton", mutates_args={"c"})
    def _cross(c: torch.Tensor, x: torch.Tensor, y: torch.Tensor, alpha: float, mask: Optional[torch.Tensor]) -> None:
        with _on(c):
            k_cross.launch_cross_accumulate(c, x, y, alpha, mask)

    @register_fake("sketchprune::_cross_accumulate_triton")
    def _cross_fake(c, x, y, alpha, mask):
        return None

    @triton_op("sketchprune::_sparse_sign_sketch_triton", mutates_args={})
    def _sketch(g: torch.Tensor, m: int, k: int, seed: int, offset: int) -> torch.Tensor:
        out = new_output((g.shape[0], m), torch.float32, g.device)
        with _on(g):
            k_sketch.launch_sparse_sign_sketch(out, g, m, k, seed, offset, False)
        return out

    @register_fake("sketchprune::_sparse_sign_sketch_triton")
    def _sketch_fake(g, m, k, seed, offset):
        return g.new_empty((g.shape[0], m), dtype=torch.float32)

    @triton_op("sketchprune::_outer_sketch_triton", mutates_args={})
    def _outer(a: torch.Tensor, d: torch.Tensor, m: int, k: int, seed: int, offset: int) -> torch.Tensor:
        out = new_output((a.shape[0], m), torch.float32, a.device)
        with _on(a):
            k_outer.launch_outer_sketch(out, a, d, m, k, seed, offset, False)
        return out

    @register_fake("sketchprune::_outer_sketch_triton")
    def _outer_fake(a, d, m, k, seed, offset):
        return a.new_empty((a.shape[0], m), dtype=torch.float32)

    def _shape(t, idx, dim, b):
        shape = list(t.shape)
        shape[dim] = idx.shape[0] * b
        return shape

    @triton_op("sketchprune::_gather_slices_triton", mutates_args={})
    def _gather(tensors: List[torch.Tensor], indices: List[torch.Tensor], dims: List[int],
                blocks: List[int]) -> List[torch.Tensor]:
        dsts, views = [], []
        for t, idx, dim, b in zip(tensors, indices, dims, blocks):
            dsts.append(new_output(_shape(t, idx, dim, b), t.dtype, t.device))
            views.append((math.prod(t.shape[:dim]), t.shape[dim] // b, math.prod(t.shape[dim + 1:])))
        with _on(tensors[0]) if tensors else contextlib.nullcontext():
            k_gather.launch_gather_slices(list(tensors), dsts, list(indices), list(blocks), views)
        return dsts

    @register_fake("sketchprune::_gather_slices_triton")
    def _gather_fake(tensors, indices, dims, blocks):
        return [t.new_empty(_shape(t, i, d, b)) for t, i, d, b in zip(tensors, indices, dims, blocks)]
