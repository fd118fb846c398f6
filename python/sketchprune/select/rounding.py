"""Rounding relaxed coreset weights s in C(n) to exactly n distinct indices."""

from __future__ import annotations

import torch


def round_weights(s: torch.Tensor, n: int, rounding: str = "sample", generator: torch.Generator | None = None) -> torch.Tensor:
    """Exactly n distinct indices (sorted, int64) from weights s (0 <= s_i <= 1/n, sum 1).

    ``"top"`` keeps the n largest weights.  ``"sample"`` draws n without replacement with
    inclusion probabilities pi_i = n * s_i by systematic sampling over a random order: one
    uniform offset U, units whose cumulative-probability interval contains one of U, U+1, ...,
    U+n-1 are selected.  Since every pi_i <= 1, no interval holds two points, so the n indices are
    distinct and P(i selected) = pi_i exactly.
    """
    N = s.shape[0]
    if not 1 <= n <= N:
        raise ValueError(f"n must be in [1, {N}], got {n}")
    if rounding == "top":
        return torch.topk(s, n).indices.sort().values
    if rounding != "sample":
        raise ValueError(f"rounding must be 'sample' or 'top', got {rounding!r}")
    dev = s.device
    pi = (s.double().cpu() * n).clamp_(0.0, 1.0)
    total = float(pi.sum())
    if total <= 0:
        raise ValueError("weights sum to zero")
    pi *= n / total
    perm = torch.randperm(N, generator=generator)
    cs = torch.cumsum(pi[perm], 0)
    cs[-1] = float(n)  # exact total despite rounding
    u = torch.rand((), generator=generator, dtype=torch.float64)
    points = u + torch.arange(n, dtype=torch.float64)
    pos = torch.searchsorted(cs, points, right=True).clamp_(max=N - 1)
    chosen = torch.unique(perm[pos])
    if chosen.numel() < n:  # only possible through float round-off at a boundary: top up by weight
        rest = torch.ones(N, dtype=torch.bool)
        rest[chosen] = False
        extra = torch.nonzero(rest).squeeze(1)
        extra = extra[torch.topk(pi[extra], n - chosen.numel()).indices]
        chosen = torch.cat([chosen, extra])
    return chosen.sort().values.to(dev)
