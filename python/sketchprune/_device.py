"""One rule for comparing device specs: ``"cuda"`` (no index) names the current CUDA device, so it
equals ``"cuda:0"`` when that is current; a CPU index means nothing."""

from __future__ import annotations

import torch


def same_device(a, b) -> bool:
    """Whether two device specs name the same device ("cuda" is the current CUDA device)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda" and (a.index is None or b.index is None) and torch.cuda.is_available():
        cur = torch.cuda.current_device()
        return (cur if a.index is None else a.index) == (cur if b.index is None else b.index)
    return a.index == b.index or a.index is None or b.index is None or a.type == "cpu"
