"""Which implementation of each op runs, and why.

Backends: ``cuda`` (the CUDA C++ module), ``triton`` (kernels/ through torch.library.triton_op),
``cpu`` (the C++/OpenMP module) and ``torch`` (pure-torch reference, the last resort).

The choice for a call is, in order:
1. ``with sketchprune.use_backend(name):`` (innermost wins), else
2. the environment variable ``SKETCHPRUNE_BACKEND=cuda|triton|cpu|torch``, else
3. the fastest available implementation for the op on that device type, following
   ``PREFERENCE`` (ordered from the benchmark results in bench/results/).

An explicit choice that cannot run on the tensors' device is an error
(:class:`BackendUnavailableError`), never a silent fallback.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import os

import torch

from . import _native
from ._settings import EMPTY, ThreadStack

BACKENDS = ("cuda", "triton", "cpu", "torch")
OPS = ("cov_accumulate_", "cross_accumulate_", "sparse_sign_sketch", "outer_sketch", "gather_slices")

# Default order per (op, device type); the first available wins.  Chosen from measurements on an
# H100 (bench/results/, csrc/cuda/README.md, kernels/*.py docstrings): the Triton cov/cross tiles
# beat the CUDA mma.sync engine (d=4096 bf16: 0.34-0.37 ms vs 0.53 ms); the CUDA sketch's
# tensor-core path beats the Triton sketch (m<=128: 1.3-1.9x one read of g vs ~6x); the CUDA
# gather does a whole group in one launch.  On CPU the C++ module wins every op.
_CUDA_FIRST = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}
_TRITON_FIRST = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}
PREFERENCE: dict[str, dict[str, tuple[str, ...]]] = {
    "cov_accumulate_": _TRITON_FIRST,
    "cross_accumulate_": _TRITON_FIRST,
    "sparse_sign_sketch": _CUDA_FIRST,
    "outer_sketch": _CUDA_FIRST,
    "gather_slices": _CUDA_FIRST,
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here."""


_choices = ThreadStack("use_backend")


class use_backend(contextlib.ContextDecorator):
    """``with use_backend(name):`` forces ``name`` for ops called inside the block (None restores
    automatic choice).  The choice is read when an op runs, from a thread-local setting, which
    ``torch.compile`` cannot trace: inside a compiled function the block is a graph break (the
    block runs eagerly, so the choice holds; with ``fullgraph=True`` compiling fails).  Wrap the
    compiled call instead to keep one graph."""

    def __init__(self, name: str | None):
        if name is not None and name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
        self.name = name

    def __enter__(self) -> None:
        _choices.push(self.name)

    def __exit__(self, *exc) -> None:
        _choices.pop()


def requested_backend() -> str | None:
    chosen = _choices.top()
    if chosen is not EMPTY:
        return chosen
    env = os.environ.get("SKETCHPRUNE_BACKEND", "").strip().lower()
    if not env or env == "auto":
        return None
    if env not in BACKENDS:
        raise ValueError(
            f"SKETCHPRUNE_BACKEND={env!r} is not a backend; choose one of {', '.join(BACKENDS)} (or unset it)"
        )
    return env


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _version(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("+")[0].split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        out.append(int(digits) if digits else 0)
    return tuple(out)


@functools.lru_cache(maxsize=None)
def triton_interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernels here, or None.  Triton < 3.7's
    interpreter turns a loop bound computed in the kernel into a Python int with ``int()`` on a
    1-element array, which NumPy >= 2.4 refuses (fixed in Triton 3.7 by squeezing first)."""
    import numpy
    import triton

    if _version(triton.__version__) < (3, 7) and _version(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run these kernels with NumPy {numpy.__version__} "
                "(it converts loop bounds with int() on 1-element arrays, an error since NumPy 2.4; fixed in "
                "Triton 3.7): use triton >= 3.7 or numpy < 2.4 for the interpreter (compiled GPU kernels are "
                "not affected)")
    return None


# The CUDA module is built for sm_80 (with PTX) and sm_90a; its kernels use sm_80 instructions
# (cp.async, bf16 mma), so older GPUs have no kernel image for them.
CUDA_MIN_CAPABILITY = (8, 0)


@functools.lru_cache(maxsize=None)
def cuda_capability_problem(index: int) -> str | None:
    """Why the CUDA module's kernels cannot run on CUDA device ``index``, or None."""
    mod = _native.cuda_module()
    if mod is not None and mod.device_count() == 0:
        # the module links its CUDA runtime statically: a driver older than that runtime, which
        # torch's own (older) runtime still accepts, makes every call of the module fail
        ver = mod.build_info().get("cuda_version", "?")
        return (f"the CUDA module (built with CUDA {ver}) sees no CUDA device while torch sees "
                f"{torch.cuda.device_count()}: the NVIDIA driver is probably older than CUDA {ver} needs; "
                "rebuild sketchprune with this machine's CUDA toolkit (SKETCHPRUNE_CUDA=ON pip install .) "
                "or update the driver")
    cap = tuple(torch.cuda.get_device_capability(index))
    if cap < CUDA_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(index)
        return (f"the CUDA module's kernels need compute capability >= {CUDA_MIN_CAPABILITY[0]}."
                f"{CUDA_MIN_CAPABILITY[1]} and cuda:{index} ({name}) has {cap[0]}.{cap[1]}")
    return None


def unavailable_reason(backend: str, device_type: str, device: torch.device | None = None) -> str | None:
    """None when ``backend`` can run on ``device_type`` (and, when given, on that ``device``: the
    CUDA module checks its compute capability), else the reason it cannot."""
    if backend == "torch":
        return None
    if backend == "cpu":
        if device_type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors only (got {device_type} tensors)"
        if _native.cpu_module() is None:
            return f"the C++ CPU module was not built ({_native.load_error('_C_cpu')})"
        return None
    if backend == "cuda":
        if device_type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors only (got {device_type} tensors)"
        if _native.cuda_module() is None:
            return f"the CUDA module was not built ({_native.load_error('_C_cuda')})"
        if device is not None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            return cuda_capability_problem(index)
        return None
    if backend == "triton":
        if not triton_importable():
            return "triton is not installed (pip install 'sketchprune[triton]')"
        if device_type == "cpu" and not triton_interpreted():
            return "triton runs on CPU tensors only under the interpreter (set TRITON_INTERPRET=1 before importing triton)"
        if device_type == "cpu" and triton_interpreter_problem() is not None:
            return triton_interpreter_problem()
        if device_type not in ("cpu", "cuda"):
            return f"triton kernels are not available for {device_type} tensors"
        from .ops import _triton_reg

        if not _triton_reg.registered():
            return f"the triton kernels failed to load ({_triton_reg.load_error()})"
        return None
    raise ValueError(f"unknown backend {backend!r}")


def available(device_type: str) -> list[str]:
    return [b for b in BACKENDS if unavailable_reason(b, device_type) is None]


def select(op: str, device: torch.device, warn: bool = True) -> str:
    """The backend that runs ``op`` on ``device`` for this call."""
    want = requested_backend()
    if want is not None:
        why = unavailable_reason(want, device.type, device)
        if why is not None:
            raise BackendUnavailableError(f"sketchprune::{op}: backend {want!r} was requested but {why}")
        return want
    order = PREFERENCE[op].get(device.type, ("torch",))
    for b in order:
        if unavailable_reason(b, device.type, device) is None:
            if warn and b == "torch" and len(order) > 1:
                _warn_fallback(op, device.type, order[0], unavailable_reason(order[0], device.type, device))
            return b
    return "torch"


@functools.lru_cache(maxsize=None)
def _warn_fallback(op: str, device_type: str, best: str, why: str | None) -> None:
    import warnings

    warnings.warn(
        f"sketchprune::{op} on {device_type}: no compiled backend is available "
        f"({why}); running the slow pure-torch reference. "
        "See `python -m sketchprune.info`.",
        RuntimeWarning,
        stacklevel=3,
    )
