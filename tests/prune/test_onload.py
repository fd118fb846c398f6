"""Sequential on-loading: a model kept in one place, its decoder layers pruned on another device one
at a time (``prune_model(..., device=...)``)."""

import copy

import pytest
import torch

from prune_models import VOCAB, make_model

from sketchprune.prune import get_adapter, prune_model
from sketchprune.prune import sequential


def _batches(n=6, b=2, t=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (b, t), generator=g) for _ in range(n)]


def _spy_moves(model, calls):
    for j, layer in enumerate(get_adapter(model).layers(model)):
        real = layer.to

        def to(*args, j=j, real=real, **kwargs):
            calls.append((j, str(torch.device(args[0] if args else kwargs["device"]))))
            return real(*args, **kwargs)
        layer.to = to


@pytest.mark.parametrize("recon", ["layer", "cross-block"])
def test_onloading_moves_each_layer_for_its_turn_and_back(monkeypatch, recon):
    """The control flow, on the CPU (where the moves are no-ops): every layer goes to the pruning
    device before its turn and home after it -- the previous one too for a cross-block pair --,
    also when a layer fails, and the result is the plain run's."""
    init = sequential._Pruner.__init__

    def forced(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.onload = True          # pretend the pruning device differs from the model's
    model = make_model("llama", dtype=torch.float32)
    ref = copy.deepcopy(model)
    kw = dict(sparsity=0.3, criterion="sigma", reconstruct=True, recon=recon, recon_epochs=1, progress=False)
    prune_model(ref, _batches(), **kw)
    calls = []
    _spy_moves(model, calls)
    monkeypatch.setattr(sequential._Pruner, "__init__", forced)
    prune_model(model, _batches(), **kw)
    n = len(get_adapter(model).layers(model))
    turns = [(j, "cpu") for j in range(n) for _ in range(2)]
    if recon == "layer":
        assert calls == turns
    else:   # from layer 1 on, the previous layer is loaded again for the pair's training
        assert calls[:2] == turns[:2] and len(calls) == 2 * n + 2 * (n - 1)
        assert [c for c in calls if c[0] == n - 1] == [(n - 1, "cpu")] * 2
    for (k, a), (_, b) in zip(sorted(ref.state_dict().items()), sorted(model.state_dict().items())):
        assert torch.equal(a, b), k
    # a failure inside a layer's turn still sends the layer home
    bad = make_model("llama", dtype=torch.float32)
    calls.clear()
    _spy_moves(bad, calls)

    def boom(self, j):
        raise RuntimeError("boom")
    monkeypatch.setattr(sequential._Pruner, "prune_layer", boom)
    with pytest.raises(RuntimeError, match="boom"):
        prune_model(bad, _batches(), **kw)
    assert calls == [(0, "cpu"), (0, "cpu")]


def test_onloading_needs_the_sequential_path():
    model = make_model("llama", dtype=torch.float32)
    with pytest.raises(ValueError, match="on-loading"):
        prune_model(model, _batches(), sparsity=0.3, criterion="sigma", sequential=False, device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_onloading_to_cuda_matches_pruning_in_place():
    """A model in host memory pruned on the GPU layer by layer: the same units as pruning it on the
    GPU in place, weights equal to rounding, every parameter back in host memory, and the GPU never
    held more than one layer's share."""
    # float64, so that the host-side rotary tables of the on-loaded run (computed on the CPU)
    # cannot flip a near-tie of the greedy against the in-place run's (computed on the GPU)
    host = make_model("llama", dtype=torch.float64)
    kw = dict(sparsity=0.3, criterion="greedy", reconstruct=True, progress=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()                     # whatever earlier tests left
    on_gpu = copy.deepcopy(host).cuda()
    rep_gpu = prune_model(on_gpu, _batches(), **kw)
    peak_in_place = torch.cuda.max_memory_allocated() - base  # the whole model resident
    on_gpu_state = {k: v.cpu() for k, v in on_gpu.state_dict().items()}
    del on_gpu
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    rep = prune_model(host, _batches(), device="cuda", **kw)
    peak_onload = torch.cuda.max_memory_allocated() - base   # one layer at a time
    assert all(p.device.type == "cpu" for p in host.parameters())
    assert [r["kept_channels"] for r in rep["layers"]] == [r["kept_channels"] for r in rep_gpu["layers"]]
    for k, a in sorted(host.state_dict().items()):
        torch.testing.assert_close(a, on_gpu_state[k], rtol=1e-9, atol=1e-11, msg=k)
    assert peak_onload < peak_in_place


def test_prune_api_onload_options():
    from sketchprune.prune.api import PruneInputError, prune

    model = make_model("llama", dtype=torch.float32)
    with pytest.raises(PruneInputError, match="give device"):
        prune(model, _batches(), sparsity=0.3, onload=True, measure=False, progress=False)
    pruned, rep = prune(model, _batches(), sparsity=0.3, device="cpu", onload=True, measure=False, progress=False)
    assert rep["onload"] is True and rep["device"] == "cpu"
    assert all(p.device.type == "cpu" for p in pruned.parameters())


def test_same_device_rule():
    from sketchprune.prune.sequential import same_device as _same_device

    assert _same_device("cpu", torch.device("cpu"))
    assert not _same_device("meta", "cpu")
    assert not _same_device("cuda:1", "cuda:0") and _same_device("cuda:0", "cuda:0")


def test_prune_api_onload_refuses_the_one_shot_path_early(monkeypatch):
    from sketchprune.prune import api
    from sketchprune.prune.api import PruneInputError, prune

    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    for kw in ({"criterion": "magnitude-l2", "reconstruct": False}, {"sequential": False},
               {"allocation": "global"}):
        with pytest.raises(PruneInputError, match="sequential path"):
            prune("some-model-dir", _batches(), sparsity=0.3, device="cpu", onload=True, measure=False,
                  progress=False, **kw)
