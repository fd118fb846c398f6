"""Reading numeric arguments the way users pass them (Python, NumPy or 0-d tensor numbers)."""

from __future__ import annotations

import math
import operator

import torch


def as_int(v) -> int | None:
    """``v`` as an int (Python / NumPy integers, integer 0-d tensors), else None; bools are not counts."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.dtype == torch.bool):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def as_real(v) -> float | None:
    """``v`` as a finite float (Python / NumPy numbers, 0-d tensors), else None; bools are not numbers."""
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and (v.numel() != 1 or v.dtype == torch.bool)):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
