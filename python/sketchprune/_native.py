"""Loading of the compiled modules and the integer view of tensors they take.

The native modules (``sketchprune._C_cpu``, ``sketchprune._C_cuda``) never see torch
objects: this file turns tensors into (pointer, sizes, strides in elements, dtype code)
and finds the current CUDA stream.  See docs/native_abi.md.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch

DTYPE_CODES = {
    torch.float32: 0,
    torch.float16: 1,
    torch.bfloat16: 2,
    torch.float64: 3,
}

_modules: dict[str, Any] = {}
_errors: dict[str, str] = {}


def _load(name: str):
    if name in _modules:
        return _modules[name]
    if name in _errors:
        return None
    try:
        mod = importlib.import_module(f"sketchprune.{name}")
    except ImportError as exc:  # not built, or built for another Python
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _modules[name] = mod
    return mod


def cpu_module():
    """The C++ CPU module, or None when it was not built."""
    return _load("_C_cpu")


def cuda_module():
    """The CUDA module, or None when it was not built."""
    return _load("_C_cuda")


def load_error(name: str) -> str | None:
    """Why ``name`` could not be imported (None when it loaded or was never tried)."""
    _load(name)
    return _errors.get(name)


def dtype_code(t: torch.Tensor) -> int:
    try:
        return DTYPE_CODES[t.dtype]
    except KeyError:
        raise TypeError(f"sketchprune: unsupported dtype {t.dtype}") from None


def ptr(t: torch.Tensor | None) -> int:
    """Data pointer of ``t`` (0 for None or an empty tensor)."""
    if t is None or t.numel() == 0:
        return 0
    return t.data_ptr()


def stream_args(device: torch.device) -> tuple[int, int]:
    """(device index, raw current stream) for a CUDA launch."""
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return idx, torch.cuda.current_stream(idx).cuda_stream


@contextlib.contextmanager
def device_guard(device: torch.device):
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield
