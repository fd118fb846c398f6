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
