"""gather_slices: structured slicing of weights (pruning channels / heads).

Measured
--------
An 11008 x 4096 matrix (LLaMA-7B MLP size; bf16 on GPU, fp32 on CPU), keeping 80%:

* ``rows80``: 8806 of 11008 rows (dim 0);
* ``cols80``: 3277 of 4096 columns (dim 1);
* ``heads80``: 26 of 32 column blocks of 128 (attention heads, ``block=128``);
* ``ffn_group``: a whole LLaMA-7B MLP layer group in one call -- gate and up (11008 x 4096)
  keep 8806 rows, down (4096 x 11008) keeps the same 8806 columns, one shared index.

The kept indices are a random sorted subset (as a pruning mask gives).  Every available
sketchprune backend against ``torch.index_select`` (one call per tensor, with the element
index precomputed from the block index) and ``torch.gather`` (one call per tensor, with the
output-shaped index an expanded stride-0 view of the element index; its reads are not charged).

Counting
--------
bytes = 2 x the bytes kept (read the kept elements once, write them once); flops = 0, so
the floor time is bytes / copy bandwidth.
"""

from __future__ import annotations

import pytest
import torch

import sketchprune as sp
from sketchprune.ref.ops import block_index
from conftest import measure, n_input_sets

ROWS, COLS, HEAD = 11008, 4096, 128
KEEP = 0.8
CASES = ["rows80", "cols80", "heads80", "ffn_group"]
BASELINES = ["index_select", "gather"]


def _dtype(device):
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _keep(n, device, gen):
    k = int(round(KEEP * n))
    return torch.randperm(n, generator=gen)[:k].sort().values.to(device)


def _spec(case, device):
    """(list of (shape, dim), block, n_blocks_along_dim) for a case."""
    if case == "rows80":
        return [((ROWS, COLS), 0)], 1, ROWS
    if case == "cols80":
        return [((ROWS, COLS), 1)], 1, COLS
    if case == "heads80":
        return [((ROWS, COLS), 1)], HEAD, COLS // HEAD
    if case == "ffn_group":
        return [((ROWS, COLS), 0), ((ROWS, COLS), 0), ((COLS, ROWS), 1)], 1, ROWS
    raise ValueError(case)


def _setup(case, device):
    dtype = _dtype(device)
    gen = torch.Generator().manual_seed(7)
    shapes, block, n_blocks = _spec(case, device)
    idx = _keep(n_blocks, device, gen)
    es = torch.tensor([], dtype=dtype).element_size()
    src_bytes = sum(s[0] * s[1] for s, _ in shapes) * es
    kept = sum(s[0] * s[1] * idx.numel() * block // s[d] for s, d in shapes) * es
    sets = n_input_sets(src_bytes, device, max_sets=4)
    tensors = [[torch.randn(*s, device=device, dtype=dtype) for s, _ in shapes] for _ in range(sets)]
    dims = [d for _, d in shapes]
    name = (f"{case}: " + " + ".join(f"{s[0]}x{s[1]} dim{d}" for s, d in shapes)
            + f" keep {idx.numel()}/{n_blocks}" + (f" blocks of {block}" if block > 1 else "")
            + f" {str(dtype).replace('torch.', '')}")
    return tensors, idx, dims, block, {"flops": 0, "bytes": 2 * kept}, name


@pytest.mark.parametrize("case", CASES)
def test_gather_sketchprune(benchmark, roofline, device, backend, case):
    tensors, idx, dims, block, work, name = _setup(case, device)
    fns = [lambda ts=ts: sp.gather_slices(ts, idx, dims, block=block) for ts in tensors]
    with sp.use_backend(backend):
        measure(benchmark, fns, **work, roofline=roofline, device=device, op="gather_slices", case=name,
                impl=f"sketchprune[{backend}]", kind="sketchprune", backend=backend)


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("case", CASES)
def test_gather_baseline(benchmark, roofline, device, case, baseline):
    tensors, idx, dims, block, work, name = _setup(case, device)
    eidx = block_index(idx, block)
    if baseline == "index_select":
        def f(ts):
            return [torch.index_select(t, d, eidx) for t, d in zip(ts, dims)]
        note = "one index_select per tensor"
    else:
        full = []
        for t, d in zip(tensors[0], dims):
            shape = list(t.shape)
            shape[d] = eidx.numel()
            view = [1] * t.dim()
            view[d] = eidx.numel()
            full.append(eidx.view(view).expand(shape))  # a stride-0 view, as a user writes it

        def f(ts):
            return [torch.gather(t, d, i) for t, d, i in zip(ts, dims, full)]
        note = "one gather per tensor; output-shaped (expanded, stride-0) int64 index, its reads not charged"
    fns = [lambda ts=ts: f(ts) for ts in tensors]
    measure(benchmark, fns, **work, roofline=roofline, device=device, op="gather_slices", case=name,
            impl=baseline, kind="baseline", note=note)
