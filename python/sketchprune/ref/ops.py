"""Pure-torch implementations of every op.

They define the semantics (the tests' float64 oracle calls them with ``compute_dtype=float64``)
and are the ``torch`` backend (compute in float32, or float64 for float64 accumulators).
Work is chunked so the temporaries stay bounded (``chunk`` rows at a time).
"""

from __future__ import annotations

import torch

from .hash import sketch_matrix

DEFAULT_CHUNK = 8192


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x[mask.to(device=x.device, dtype=torch.bool)]


def _add_symmetric_(sigma: torch.Tensor, v: torch.Tensor) -> None:
    """sigma += v using the upper triangle of (sigma + v) only; result exactly symmetric."""
    upper = torch.triu(sigma + v)
    sigma.copy_(upper + torch.triu(upper, 1).T)


def cov_accumulate_ref(sigma, x, alpha=1.0, mask=None, compute_dtype=None, chunk=DEFAULT_CHUNK):
    """sigma += alpha * x^T x over rows with mask True (in place, exactly symmetric)."""
    cd = compute_dtype or sigma.dtype
    xs = _masked(x, mask)
    acc = torch.zeros(sigma.shape, dtype=cd, device=sigma.device)
    for t0 in range(0, xs.shape[0], chunk):
        xc = xs[t0 : t0 + chunk].to(cd)
        acc += xc.T @ xc
    _add_symmetric_(sigma, (acc * alpha).to(sigma.dtype))


def cross_accumulate_ref(c, x, y, alpha=1.0, mask=None, compute_dtype=None, chunk=DEFAULT_CHUNK):
    """c += alpha * x^T y over rows with mask True (in place)."""
    cd = compute_dtype or c.dtype
    xs, ys = _masked(x, mask), _masked(y, mask)
    acc = torch.zeros(c.shape, dtype=cd, device=c.device)
    for t0 in range(0, xs.shape[0], chunk):
        acc += xs[t0 : t0 + chunk].to(cd).T @ ys[t0 : t0 + chunk].to(cd)
    c.add_((acc * alpha).to(c.dtype))


def sparse_sign_sketch_ref(g, m, k=8, seed=0, offset=0, compute_dtype=torch.float32, chunk=4096):
    """g (N x r) @ S[offset : offset + r] -> N x m (float32 unless compute_dtype is float64)."""
    n, r = g.shape
    out = torch.zeros(n, m, dtype=compute_dtype, device=g.device)
    for r0 in range(0, r, chunk):
        rows = min(chunk, r - r0)
        s = sketch_matrix(seed, offset + r0, rows, m, k, dtype=compute_dtype, device=g.device)
        out += g[:, r0 : r0 + rows].to(compute_dtype) @ s
    return out if compute_dtype == torch.float64 else out.to(torch.float32)


def outer_sketch_ref(a, d, m, k=8, seed=0, offset=0, compute_dtype=torch.float32, max_bytes=256 * 2**20):
    """Sketch of each sample's Linear-weight gradient G_n = sum_t d[n,t]^T a[n,t] (row-major over (d_out, d_in))."""
    if a.dim() == 2:
        a, d = a[:, None], d[:, None]
    n, _, d_in = a.shape
    d_out = d.shape[-1]
    per_sample = max(d_out * d_in * torch.finfo(compute_dtype).bits // 8, 1)
    step = max(1, max_bytes // per_sample)
    outs = []
    for n0 in range(0, n, step):
        gr = torch.einsum("nto,ntq->noq", d[n0 : n0 + step].to(compute_dtype), a[n0 : n0 + step].to(compute_dtype))
        outs.append(sparse_sign_sketch_ref(gr.reshape(gr.shape[0], -1), m, k, seed, offset, compute_dtype))
    if not outs:
        return torch.zeros(0, m, dtype=torch.float64 if compute_dtype == torch.float64 else torch.float32, device=a.device)
    return torch.cat(outs)


def block_index(idx: torch.Tensor, block: int) -> torch.Tensor:
    """Expand block indices to element indices: [b0, b1] -> [b0*B, ..., b0*B+B-1, b1*B, ...]."""
    if block == 1:
        return idx
    return (idx[:, None] * block + torch.arange(block, device=idx.device)).reshape(-1)


def gather_slices_ref(tensors, indices, dims, blocks):
    """index_select of blocks of rows/columns, per tensor (lists of equal length)."""
    return [
        torch.index_select(t, dim, block_index(idx.to(device=t.device, dtype=torch.int64), b))
        for t, idx, dim, b in zip(tensors, indices, dims, blocks)
    ]
