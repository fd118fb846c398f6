"""Class-label checks shared by the selection API, the baselines and the gradient sources."""

from __future__ import annotations

import torch


def check_labels(labels, n: int | None = None, num_classes: int | None = None, who: str = "labels") -> torch.Tensor:
    """``labels`` as a 1-D int64 tensor of class ids >= 0 (and < ``num_classes``, of length ``n``
    when given); a TypeError for non-integer dtypes, a ValueError naming what is wrong otherwise."""
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{who} must be integer class ids, got dtype {y.dtype}")
    if y.dim() != 1 or (n is not None and y.shape[0] != n):
        want = "one class id per sample" + ("" if n is None else f" ({n})")
        raise ValueError(f"{who} must be 1-D, {want}; got shape {tuple(y.shape)}")
    if y.numel():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0:
            raise ValueError(f"{who} must be class ids >= 0, got {lo}")
        if num_classes is not None and hi >= num_classes:
            raise ValueError(f"{who} must be in [0, num_classes={num_classes}), got [{lo}, {hi}]")
    return y.long()


def check_num_classes(num_classes) -> int | None:
    """``num_classes`` as a positive Python int (None stays None)."""
    from .._numbers import as_int

    if num_classes is None:
        return None
    c = as_int(num_classes)
    if c is None or c < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return c


def check_n(n, N: int | None = None, who: str = "n") -> int:
    """``n`` as a Python int (Python / NumPy integers, integer 0-d tensors; bools are refused: True is
    not a count), checked against 1 <= n <= N when N is given."""
    from .._numbers import as_int

    k = as_int(n)
    if k is None:
        raise TypeError(f"{who} must be an integer, got {n!r}")
    if N is not None and not 1 <= k <= N:
        raise ValueError(f"{who} must be in [1, N={N}], got {k}")
    return k


def check_finite_rows(x: torch.Tensor, what: str = "the sketch", chunk: int = 65536) -> None:
    """NaN or Inf in a 2-D float matrix (the gradients of those samples): a ValueError naming the
    rows.  Streamed in row chunks (one bool flag per entry of a chunk at a time)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        return  # other types and shapes: the callers' own checks
    N = int(x.shape[0])
    bad = [torch.nonzero(~torch.isfinite(x[i:i + chunk]).all(1)).reshape(-1) + i for i in range(0, N, chunk)]
    bad = torch.cat(bad) if bad else torch.zeros(0, dtype=torch.long)
    if bad.numel():
        shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if bad.numel() > 10 else "")
        raise ValueError(f"{what} has NaN or Inf values in {bad.numel()} of {N} rows ({shown}): "
                         f"those samples' gradients are not finite; drop them (e.g. sketch[mask]) and map the "
                         f"selected indices back")
