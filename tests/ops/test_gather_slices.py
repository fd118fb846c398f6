import pytest
import torch

import sketchprune as sp
from sketchprune.ref.ops import block_index
from _helpers import backend_params, interpreted, use_backend

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.int64, torch.float64]


def _expect(t, idx, dim, b):
    return torch.index_select(t, dim, block_index(idx, b))


def _rand(shape, dtype, device):
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype=dtype, device=device)
    return torch.randint(-100, 100, shape, dtype=dtype).to(device)


@backend_params()
def test_gather_ffn_and_heads_bit_exact(backend, device):
    dtypes = [torch.float32, torch.float16] if interpreted(backend, device) else DTYPES
    for dtype in dtypes:
        hidden, inter, hd, nq, nkv = 24, 40, 8, 6, 2
        gate, up = _rand((inter, hidden), dtype, device), _rand((inter, hidden), dtype, device)
        down = _rand((hidden, inter), dtype, device)
        keep = torch.randperm(inter)[: 29].sort().values.to(device)
        with use_backend(backend):
            outs = sp.gather_slices([gate, up, down], keep, [0, 0, 1])
        for o, t, dim in zip(outs, [gate, up, down], [0, 0, 1]):
            assert torch.equal(o, _expect(t, keep, dim, 1))
        # heads under GQA: q/o by query heads, k/v by kv heads, blocks of head_dim
        q, k, v = (_rand((nq * hd, hidden), dtype, device), _rand((nkv * hd, hidden), dtype, device),
                   _rand((nkv * hd, hidden), dtype, device))
        o_proj, q_bias = _rand((hidden, nq * hd), dtype, device), _rand((nq * hd,), dtype, device)
        qh = torch.tensor([0, 1, 2], device=device)
        kvh = torch.tensor([0], device=device)
        with use_backend(backend):
            outs = sp.gather_slices([q, k, v, o_proj, q_bias], [qh, kvh, kvh, qh, qh], [0, 0, 0, 1, 0], block=hd)
        for o, t, i, dim in zip(outs, [q, k, v, o_proj, q_bias], [qh, kvh, kvh, qh, qh], [0, 0, 0, 1, 0]):
            assert torch.equal(o, _expect(t, i, dim, hd))


@backend_params()
def test_gather_odd_shapes_and_many_tensors(backend, device):
    ts, idxs, dims, blocks = [], [], [], []
    n_tensors = 5 if interpreted(backend, device) else 21  # > 16: split into several launches
    for i in range(n_tensors):
        b = [1, 3, 7][i % 3]
        shape = [2 + i % 4, b * (3 + i % 5), 1 + i % 3][: 1 + i % 3]
        dim = (i * 7) % len(shape)
        shape[dim] = b * (3 + i % 5)
        t = torch.randn(shape).to(device)
        n_blocks = shape[dim] // b
        idx = torch.randint(0, n_blocks, (1 + i % n_blocks,)).to(device)  # repeats allowed
        ts.append(t), idxs.append(idx), dims.append(dim - len(shape) if i % 2 else dim), blocks.append(b)
    with use_backend(backend):
        outs = sp.gather_slices(ts, idxs, dims, blocks)
    for o, t, i, d, b in zip(outs, ts, idxs, dims, blocks):
        assert torch.equal(o, _expect(t, i, d % t.dim(), b))


@backend_params()
def test_gather_empty_index_and_noncontiguous(backend, device):
    w = torch.randn(10, 6, device=device)
    with use_backend(backend):
        out, = sp.gather_slices([w], torch.empty(0, dtype=torch.int64, device=device), 0)
        assert out.shape == (0, 6)
        wt = w.T  # non-contiguous source: copied first
        out, = sp.gather_slices([wt], torch.tensor([9, 0], device=device), 1)
    assert torch.equal(out, wt[:, [9, 0]])


def test_gather_errors():
    w = torch.randn(6, 4)
    with pytest.raises(IndexError, match="indices\\[0\\] has values in"):
        sp.gather_slices([w], torch.tensor([0, 6]), 0)
    with pytest.raises(IndexError, match="values in"):
        sp.gather_slices([w], torch.tensor([-1]), 0)
    with pytest.raises(ValueError, match="not a multiple of block"):
        sp.gather_slices([w], torch.tensor([0]), 0, block=4)
    with pytest.raises(IndexError, match="out of range"):
        sp.gather_slices([w], torch.tensor([0]), 2)
    with pytest.raises(TypeError, match="int64"):
        sp.gather_slices([w], torch.tensor([0], dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="entries for 2 tensors"):
        sp.gather_slices([w, w], torch.tensor([0]), [0, 1, 0])
    with pytest.raises(TypeError, match="list of tensors"):
        sp.gather_slices(w, torch.tensor([0]), 0)
    assert sp.gather_slices([], torch.tensor([0]), 0) == []


@backend_params()
def test_gather_opcheck(backend, device):
    w, b = torch.randn(12, 5, device=device), torch.randn(12, device=device)
    idx = torch.tensor([3, 1], device=device)
    kw = {"test_utils": ("test_schema", "test_faketensor")} if interpreted(backend, device) else {}
    with use_backend(backend):
        torch.library.opcheck(torch.ops.sketchprune.gather_slices.default, ([w, b, w], [idx, idx, idx], [0, 0, 1], [3, 3, 1]), **kw)


def test_gather_is_differentiable():
    """The gradient of each kept block goes back to its source block (summed over repeats); opcheck
    with inputs that require grad covers the autograd registration."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 12, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.tensor([0, 2, 2, 5])
    assert torch.autograd.gradcheck(lambda w, b: tuple(sp.gather_slices([w, b, w], [idx, idx, torch.tensor([3, 1])],
                                                                        dims=[0, 0, 1], block=[1, 1, 3])), (w, b))
    torch.library.opcheck(torch.ops.sketchprune.gather_slices.default,
                          ([w, b], [idx, idx], [0, 0], [1, 1]))
