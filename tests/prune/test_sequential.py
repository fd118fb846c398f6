"""Sequential (layer-by-layer) pruning: streams, refits toward the dense outputs, plans, failures."""

import copy

import pytest
import torch

from prune_models import LAYERS, VOCAB, logits, make_model

from sketchprune import BudgetError
from sketchprune.prune import get_adapter, prune_model, supported_architectures
from sketchprune.prune.streams import NonFiniteActivations, capture_layer_inputs, run_layer

KINDS = ["llama", "mistral", "qwen2"] + [k for k in ("gemma2", "opt") if k in supported_architectures()]


def token_batches(n=6, b=2, t=12, seed=3, pad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, VOCAB, (b, t), generator=g)
        if pad:
            mask = torch.ones(b, t, dtype=torch.long)
            mask[0, : 1 + i % 3] = 0       # left padding of different lengths
            out.append({"input_ids": ids, "attention_mask": mask})
        else:
            out.append(ids)
    return out


def _ids(batch):
    return batch["input_ids"] if isinstance(batch, dict) else batch


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pad", [False, True])
def test_streams_reproduce_the_models_hidden_states(kind, pad):
    """Layer inputs captured once, then run layer by layer, equal the model's own hidden states."""
    # float32: with padding, Hugging Face's float64 eager masks overflow to NaN in the model itself
    model = make_model(kind, dtype=torch.float32)
    layers = get_adapter(model).layers(model)
    data = token_batches(n=3, pad=pad)
    inp = capture_layer_inputs(model, layers, data, 1, LAYERS - 1)
    for b, batch in enumerate(data):
        kw = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
        with torch.no_grad():
            ref = model(**kw, output_hidden_states=True).hidden_states
        h = inp.hidden[b]
        torch.testing.assert_close(h, ref[1], rtol=0, atol=0)
        for j in range(1, LAYERS - 1):
            with torch.no_grad():
                h = run_layer(layers[j], h, inp.calls[j][b], torch.device("cpu"), inp.masks[b], f"layer {j}")
            torch.testing.assert_close(h, ref[j + 1], rtol=0, atol=0)
        if pad:
            assert inp.tokens[b] == int(batch["attention_mask"].sum())


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("recovery", [False, True])
def test_sparsity_zero_leaves_the_model_exactly(kind, recovery):
    model, ref = make_model(kind, dtype=torch.float32), make_model(kind, dtype=torch.float32)
    rep = prune_model(model, token_batches(), sparsity=0.0, attn_sparsity=0.0, criterion="sigma",
                      reconstruct=True, recovery=recovery, progress=False)
    assert rep["sequential"] and rep["params_after"] == rep["params_before"]
    sd, sr = model.state_dict(), ref.state_dict()
    assert sd.keys() == sr.keys() and all(torch.equal(sd[k], sr[k]) for k in sr)
    x = token_batches(1, seed=9)[0]
    assert torch.equal(logits(model, x), logits(ref, x))


def _capture_linear(model, layer_idx, which, inputs: bool, batches):
    """Inputs (or outputs minus bias) of one Linear of one layer over ``batches``, as (rows, d)."""
    ad = get_adapter(model)
    layer = ad.layers(model)[layer_idx]
    lin = ad.ffn(layer).down if which == "down" else ad.attention(layer).o
    got = []
    if inputs:
        h = lin.register_forward_pre_hook(lambda m, a: got.append(a[0].detach().reshape(-1, a[0].shape[-1])))
    else:
        h = lin.register_forward_hook(lambda m, a, o: got.append(
            (o if m.bias is None else o - m.bias).detach().reshape(-1, o.shape[-1])))
    try:
        with torch.no_grad():
            for b in batches:
                model(input_ids=_ids(b))
    finally:
        h.remove()
    return torch.cat(got).double(), lin.weight.detach().double()


@pytest.mark.parametrize("layer_idx,which", [(LAYERS - 1, "down"), (2, "o")])
def test_reported_errors_are_the_real_errors_against_the_dense_model(layer_idx, which):
    """The refit's in-sample error from the streamed moments equals || V x_pruned - W x_dense ||^2 /
    || W x_dense ||^2 measured directly with the pruned and the dense model on the fitting batches:
    the two streams are token-aligned and the moments are right."""
    dense = make_model("llama", dtype=torch.float64)
    model = copy.deepcopy(dense)
    data = token_batches(n=6)
    rep = prune_model(model, data, sparsity=0.3, criterion="sigma", reconstruct=True, refit_target="dense",
                      progress=False)
    info = rep["reconstruction"][layer_idx][which]
    fit_batches = data[: rep["calibration_batches"]]
    X, V = _capture_linear(model, layer_idx, which, True, fit_batches)
    Y, _ = _capture_linear(dense, layer_idx, which, False, fit_batches)
    err = float(((X @ V.T - Y) ** 2).sum() / (Y ** 2).sum())
    assert err == pytest.approx(info["fit_error"], rel=1e-8)
    lay = rep["layers"][layer_idx]
    assert lay["recon_rel_error"][which] == info["fit_error"]
    assert lay["heldout_rel_error"][which] == info["eval_error"]
    assert lay["lambda"][which] == info["lambda"]


@pytest.mark.parametrize("recovery", [False, True])
def test_refit_never_worse_than_no_refit(recovery):
    model = make_model("qwen2", dtype=torch.float32)
    rep = prune_model(model, token_batches(pad=True), sparsity=0.3, criterion="wanda-sp", reconstruct=True,
                      recovery=recovery, progress=False)
    n = 0
    for lay in rep["layers"]:
        for section in ("refit", "recovery"):
            for name, info in lay.get(section, {}).items():
                n += 1
                assert info["fit_error"] <= info["fit_error_none"] + 1e-9        # ridge toward the anchor
                assert info["eval_error"] <= info["eval_error_none"] + 1e-12     # chosen held out
                assert (info["lambda"] is None) == (not info["refit"])
    assert n >= 2 * LAYERS + (3 * LAYERS if recovery else 0) - 4    # layer 0's attention needs no recovery
    if recovery:
        assert "qkv" not in rep["layers"][0].get("recovery", {})       # identical streams: nothing to recover
        assert "qkv" in rep["layers"][1]["recovery"]
    # the refit reduces the in-sample error somewhere (random weights: every unit matters)
    assert any(l["recon_rel_error"]["down"] < l["no_refit_rel_error"]["down"] for l in rep["layers"])
    assert torch.isfinite(logits(model, token_batches(1)[0])).all()


def test_budget_too_small_fails_before_any_work():
    model, ref = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    calls = []
    h = model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(BudgetError, match=r"sequential pruning .*streams .*needs at least"):
        prune_model(model, token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, budget="16KiB",
                    progress=False)
    h.remove()
    assert not calls
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    # the same plan within a sufficient budget works
    prune_model(model, token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, budget="256MiB",
                progress=False)


def test_non_finite_activations_name_the_layer():
    model = make_model("llama", dtype=torch.float32)

    def poison(module, args, out):
        out = out.clone()
        out[0, 3, 5] = float("nan")
        return out
    get_adapter(model).layers(model)[2].register_forward_hook(poison)
    with pytest.raises(NonFiniteActivations, match="decoder layer 2"):
        prune_model(model, token_batches(), sparsity=0.2, criterion="sigma", progress=False)


def _plan(rep):
    return [(l["kept_channels"], l["kept_heads"], l["kept_kv_heads"]) for l in rep["layers"]]


def _kept(model):
    ad = get_adapter(model)
    return [(ad.ffn(l).down.weight.clone(), ad.attention(l).o.weight.clone()) for l in ad.layers(model)]


@pytest.mark.parametrize("criterion", ["random", "sigma"])
def test_same_seed_same_plan(criterion):
    runs = []
    for seed in (0, 0, 1):
        model = make_model("mistral", dtype=torch.float32)
        rep = prune_model(model, token_batches(), sparsity=0.3, criterion=criterion, seed=seed, reconstruct=True,
                          progress=False)
        runs.append((_plan(rep), _kept(model)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for x, y in zip(runs[0][1], runs[1][1]) for a, b in zip(x, y))
    if criterion == "random":
        assert any(not torch.equal(x[0], y[0]) for x, y in zip(runs[0][1], runs[2][1]))


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_model_has_the_planned_shapes_and_runs(kind):
    model = make_model(kind, dtype=torch.float32)
    rep = prune_model(model, token_batches(pad=True), sparsity=0.3, criterion="sigma", reconstruct=True,
                      recovery=True, progress=False)
    ad = get_adapter(model)
    assert len(rep["layers"]) == LAYERS and abs(rep["sparsity_achieved"]["overall"] - 0.3) < 0.03
    for layer, lay in zip(ad.layers(model), rep["layers"]):
        ffn, attn, hs = ad.ffn(layer), ad.attention(layer), ad.head_structure(layer)
        assert ffn.up.out_features == ffn.down.in_features == lay["kept_channels"] < lay["ffn_total"]
        assert hs.num_heads == lay["kept_heads"] and hs.num_kv_heads == lay["kept_kv_heads"]
        assert attn.o.in_features == hs.num_heads * hs.head_dim
        assert 0 < lay["stream_rel_error"] < 10
    assert rep["params_after"] == sum(p.numel() for p in model.parameters()) < rep["params_before"]
    out = logits(model, token_batches(1, seed=5)[0])
    assert torch.isfinite(out).all()


def test_data_free_criterion_sequential_equals_one_shot():
    a, b = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    ra = prune_model(a, token_batches(), sparsity=0.3, criterion="magnitude-l2", sequential=True, progress=False)
    rb = prune_model(b, token_batches(), sparsity=0.3, criterion="magnitude-l2", sequential=False, progress=False)
    assert ra["sequential"] and not rb["sequential"] and _plan(ra) == [
        (l["ffn_kept"], l["q_heads_kept"], l["kv_heads_kept"]) for l in rb["layers"]]
    x = token_batches(1)[0]
    assert torch.equal(logits(a, x), logits(b, x))
    assert ra["calibration_tokens"] == 0


def test_flap_folds_the_pruned_streams_mean():
    """Layer 0's attention sees the same inputs in both paths, so its folded o bias agrees with the
    one-shot one; later layers are compensated with the pruned stream's means, so they differ (and
    layer 0's FFN is scored and compensated on its input after the attention was pruned)."""
    a, b = make_model("llama", dtype=torch.float64), make_model("llama", dtype=torch.float64)
    prune_model(a, token_batches(), sparsity=0.3, criterion="flap", progress=False)
    prune_model(b, token_batches(), sparsity=0.3, criterion="flap", sequential=False, progress=False)
    ad = get_adapter(a)
    la, lb = ad.layers(a), ad.layers(b)
    torch.testing.assert_close(ad.attention(la[0]).o.bias, ad.attention(lb[0]).o.bias)
    assert not torch.allclose(ad.attention(la[-1]).o.bias, ad.attention(lb[-1]).o.bias)
    assert ad.ffn(la[0]).down.bias is not None and ad.ffn(la[-1]).down.bias is not None


def test_layer_subset_leaves_other_layers_alone():
    model, ref = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    rep = prune_model(model, token_batches(), sparsity=0.3, criterion="sigma", layers=[1, 2], reconstruct=True,
                      progress=False)
    assert [l["layer"] for l in rep["layers"]] == [1, 2]
    ad = get_adapter(model)
    for i in (0, 3):
        sa, sb = ad.layers(model)[i].state_dict(), ad.layers(ref)[i].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    for i in (1, 2):
        assert ad.ffn(ad.layers(model)[i]).down.in_features < ad.ffn(ad.layers(ref)[i]).down.in_features


def test_bad_requests_are_refused():
    model = make_model("llama", dtype=torch.float32)
    with pytest.raises(ValueError, match="at least 2 calibration batches"):
        prune_model(model, token_batches(1), criterion="sigma", reconstruct=True, progress=False)
    with pytest.raises(ValueError, match="recovery=True needs the sequential path"):
        prune_model(model, token_batches(), criterion="sigma", recovery=True, sequential=False, progress=False)
    with pytest.raises(ValueError, match="flap_bias='none'"):
        prune_model(model, token_batches(), criterion="flap", reconstruct=True, progress=False)
    with pytest.raises(ValueError, match="needs calibration batches"):
        prune_model(model, None, criterion="sigma", sequential=True, progress=False)


@pytest.mark.parametrize("criterion", ["random", "magnitude-l2", "wanda-sp", "flap", "sigma", "taylor", "fisher",
                                       "greedy", "head-similarity"])
def test_every_criterion_prunes_sequentially_with_reconstruction(criterion):
    from sketchprune.prune import CRITERIA

    if criterion not in CRITERIA:
        pytest.skip(f"criterion {criterion!r} not registered")
    model = make_model("llama", dtype=torch.float32)
    rep = prune_model(model, token_batches(n=4), sparsity=0.3, criterion=criterion, reconstruct=True,
                      flap_bias="none", progress=False)
    assert rep["sequential"] and abs(rep["sparsity_achieved"]["overall"] - 0.3) < 0.02
    assert all("down" in l["recon_rel_error"] for l in rep["layers"])
    assert torch.isfinite(logits(model, token_batches(1)[0])).all()


def test_relative_token_weighting():
    """Weighting tokens by 1/||dense target|| changes the fits (not the plan's validity); the
    weighted held-out choice is still never worse than not refitting."""
    a, b = make_model("llama", dtype=torch.float32), make_model("llama", dtype=torch.float32)
    ra = prune_model(a, token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, progress=False)
    rb = prune_model(b, token_batches(), sparsity=0.3, criterion="sigma", reconstruct=True, progress=False,
                     token_weighting="relative")
    assert _plan(ra)[0] == _plan(rb)[0]                           # layer 0's heads/channels: same inputs
    assert ra["layers"][0]["recon_rel_error"] != rb["layers"][0]["recon_rel_error"]
    for lay in rb["layers"]:
        for info in lay["refit"].values():
            assert info["eval_error"] <= info["eval_error_none"] + 1e-12
    assert torch.isfinite(logits(b, token_batches(1)[0])).all()
    with pytest.raises(ValueError, match="token_weighting"):
        prune_model(b, token_batches(), criterion="sigma", reconstruct=True, token_weighting="max", progress=False)


def test_local_refit_target_is_the_one_shot_refit_on_the_pruned_inputs():
    """refit_target='local' fits W x (the layer's own unpruned output on the pruned-stream inputs):
    at layer 0 the inputs are the dense ones, so its o refit equals the one-shot refit there."""
    a, b = make_model("llama", dtype=torch.float64), make_model("llama", dtype=torch.float64)
    data = token_batches()
    ra = prune_model(a, data, sparsity=0.3, criterion="sigma", reconstruct=True, refit_target="local",
                     progress=False)
    rb = prune_model(b, data, sparsity=0.3, criterion="sigma", reconstruct=True, sequential=False, progress=False)
    ia, ib = ra["reconstruction"][0]["o"], rb["reconstruction"][0]["o"]
    assert ia["alpha"] == ib["alpha"] and ia["fit_error"] == pytest.approx(ib["fit_error"], rel=1e-9)
    ad = get_adapter(a)
    torch.testing.assert_close(ad.attention(ad.layers(a)[0]).o.weight, ad.attention(ad.layers(b)[0]).o.weight)
    with pytest.raises(ValueError, match="refit_target"):
        prune_model(a, data, criterion="sigma", reconstruct=True, refit_target="x", progress=False)


def test_local_refits_skip_the_dense_stream_and_decide_the_same():
    """With local-target refits nothing needs the dense stream: it is not run (fewer layer
    forwards), and asking for it (``stream_error=True``) only adds the report field."""
    data = token_batches(n=4)
    calls = {}
    results = {}
    for tracked in (False, True):
        model = make_model("llama", dtype=torch.float64)
        layer = get_adapter(model).layers(model)[1]
        calls[tracked] = 0

        def count(m, a, calls=calls, tracked=tracked):
            calls[tracked] += 1
        h = layer.register_forward_pre_hook(count)
        rep = prune_model(model, data, sparsity=0.3, criterion="sigma", reconstruct=True, progress=False,
                          stream_error=tracked)
        h.remove()
        results[tracked] = (rep, model)
    (r0, m0), (r1, m1) = results[False], results[True]
    assert all("stream_rel_error" not in lay for lay in r0["layers"])
    assert all(lay["stream_rel_error"] > 0 for lay in r1["layers"])
    assert calls[True] == calls[False] + len(data)      # one dense pass over every batch, no more
    assert [lay["kept_channels"] for lay in r0["layers"]] == [lay["kept_channels"] for lay in r1["layers"]]
    for p0, p1 in zip(m0.parameters(), m1.parameters()):
        torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    assert any(lay.get("refit") for lay in r0["layers"])


def test_check_finite_is_exact_when_the_quick_sum_overflows():
    """The quick test sums in the activations' own dtype; a sum that overflows (large but finite
    values) falls through to the exact elementwise test, so only real NaN / Inf are reported."""
    from sketchprune.prune.streams import NonFiniteActivations, check_finite

    for dt in (torch.bfloat16, torch.float16, torch.float32):
        big = torch.full((2, 8, 16), torch.finfo(dt).max / 4, dtype=dt)
        assert not torch.isfinite(big.sum())
        check_finite(big, None, "x")                                  # finite values: no error
        check_finite(big, torch.ones(2, 8, dtype=torch.bool), "x")
        for bad in (float("nan"), float("inf")):
            x = big.clone()
            x[1, 3, 5] = bad
            with pytest.raises(NonFiniteActivations, match="1 non-finite activation values"):
                check_finite(x, None, "x")
