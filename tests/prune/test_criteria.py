"""Step two of pruning: calibration statistics, criteria, allocation and the prune_model pipeline."""

import copy

import pytest
import torch
from prune_models import FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, VOCAB, logits, make_model

from sketchprune.prune import (CRITERIA, KVGroups, QueryHeads, allocate, collect_statistics, fold_mean_into_bias,
                               get_adapter, layer_costs, prune_model, score_model)
from sketchprune.prune.calibration import DEFAULT_WHAT

ALL_STATS = {"down_in": "diag", "o_in": "full", "mlp_in": "full", "attn_in": "diag"}
NAMES = ["random", "magnitude-l1", "magnitude-l2", "magnitude-depth2", "wanda-sp", "flap", "sigma"]


def batches(n=3, b=2, t=10, seed=3, pad=True):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        ids = torch.randint(0, VOCAB, (b, t), generator=g)
        am = torch.ones(b, t, dtype=torch.long)
        if pad and k % 2 == 0:
            am[0, t - 4:] = 0  # right padding on the first row
        out.append({"input_ids": ids, "attention_mask": am})
    return out


def capture(model, data):
    """Per layer and statistic: the float64 rows of the hooked inputs (padding removed)."""
    ad = get_adapter(model)
    rows = {i: {k: [] for k in ALL_STATS} for i in range(LAYERS)}
    hs = []
    for i, layer in enumerate(ad.layers(model)):
        f, a = ad.ffn(layer), ad.attention(layer)
        for name, mod in (("down_in", f.down), ("o_in", a.o), ("mlp_in", f.gate), ("attn_in", a.q)):
            hs.append(mod.register_forward_pre_hook(
                lambda m, args, i=i, name=name: rows[i][name].append(args[0].detach().to(torch.float64))))
    with torch.no_grad():
        for bt in data:
            for k in rows:
                for n in rows[k]:
                    rows[k][n].append(bt["attention_mask"].bool())
            model(input_ids=bt["input_ids"], attention_mask=bt["attention_mask"])
    for h in hs:
        h.remove()
    out = {}
    for i in rows:
        out[i] = {}
        for n, lst in rows[i].items():
            xs = [lst[j + 1][lst[j]] for j in range(0, len(lst), 2)]  # (mask, activations) pairs
            out[i][n] = torch.cat(xs)
    return out


def n_hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_statistics_equal_direct_float64(dtype):
    model = make_model("qwen2", dtype=dtype)
    data = batches()
    stats = collect_statistics(model, data, what=ALL_STATS, progress=False)
    ref = capture(model, data)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    n_tok = sum(int(b["attention_mask"].sum()) for b in data)
    assert stats.tokens == n_tok and stats.batches == len(data)
    for i in range(LAYERS):
        for name, kind in ALL_STATS.items():
            x = ref[i][name]
            s = stats[i].get(name)
            assert s.count == n_tok == x.shape[0]
            torch.testing.assert_close(s.mean(), x.mean(0), **tol)
            torch.testing.assert_close(s.diag(), (x * x).mean(0), **tol)
            torch.testing.assert_close(s.variance(), x.var(0, unbiased=False), **tol)
            if kind == "full":
                torch.testing.assert_close(s.second_moment(), x.T @ x / x.shape[0], **tol)
            else:
                with pytest.raises(RuntimeError):
                    s.second_moment()
    assert n_hooks(model) == 0


def test_statistics_tensor_batches_layers_and_cleanup_on_error():
    model = make_model("llama")
    ids = [torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(k)) for k in range(2)]
    stats = collect_statistics(model, ids, layers=[1, 3], progress=True)
    assert sorted(stats.layers) == [1, 3] and stats.tokens == 32
    assert stats.what == DEFAULT_WHAT and stats[1].mlp_in is None
    assert n_hooks(model) == 0

    def bad():
        yield ids[0]
        raise RuntimeError("boom")
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        collect_statistics(model, bad(), progress=False)
    assert n_hooks(model) == 0 and model.training


@pytest.fixture(scope="module")
def llama_stats():
    model = make_model("llama")
    return model, collect_statistics(model, batches(), what=ALL_STATS, progress=False)


@pytest.mark.parametrize("name", NAMES)
def test_every_criterion_finite_and_shaped(name, llama_stats):
    model, stats = llama_stats
    sc = score_model(model, name, stats, seed=0)
    assert sorted(sc.ffn) == sorted(sc.heads) == list(range(LAYERS))
    for i in range(LAYERS):
        assert sc.ffn[i].shape == (FFN,) and sc.heads[i].shape == (HEADS,)
        assert torch.isfinite(sc.ffn[i]).all() and torch.isfinite(sc.heads[i]).all()
        assert (sc.ffn[i] >= 0).all() and (sc.heads[i] >= 0).all()
    assert CRITERIA[name].doc  # formula documented


def test_random_is_seeded():
    model = make_model("llama")
    a, b, c = (score_model(model, "random", seed=s) for s in (0, 0, 1))
    assert torch.equal(a.ffn[2], b.ffn[2]) and not torch.equal(a.ffn[2], c.ffn[2])


def test_sigma_equals_direct_energy(llama_stats):
    model, stats = llama_stats
    ref = capture(model, batches())
    sc = score_model(model, "sigma", stats)
    ad = get_adapter(model)
    for i, layer in enumerate(ad.layers(model)):
        h = ref[i]["down_in"]
        D = ad.ffn(layer).down.weight.detach()
        direct = torch.stack([(h[:, k:k + 1] * D[:, k]).square().sum(1).mean() for k in range(FFN)])  # E||D_k h_k||^2
        torch.testing.assert_close(sc.ffn[i], direct)
        torch.testing.assert_close(sc.ffn[i], (h * h).mean(0) * D.square().sum(0))
        z = ref[i]["o_in"]
        O = ad.attention(layer).o.weight.detach()
        sl = [slice(k * HEAD_DIM, (k + 1) * HEAD_DIM) for k in range(HEADS)]
        direct = torch.stack([(z[:, s] @ O[:, s].T).square().sum(1).mean() for s in sl])  # E||O_h z_h||^2
        torch.testing.assert_close(sc.heads[i], direct)


def uselessify(model, ffn_dead, head_dead):
    """Zero down_proj columns / o_proj head blocks in every layer."""
    ad = get_adapter(model)
    with torch.no_grad():
        for layer in ad.layers(model):
            ad.ffn(layer).down.weight[:, ffn_dead] = 0
            for h in head_dead:
                ad.attention(layer).o.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0


def exact_sparsity(model, n_ffn, n_q_heads=0, n_groups=0):
    c = layer_costs(get_adapter(model), get_adapter(model).layers(model)[0])
    removed = n_ffn * c.ffn_unit + n_q_heads * c.query_head + n_groups * (c.group_size * c.query_head + c.kv_head)
    return removed / c.total, removed


FFN_DEAD = [3, 17, 40, 41, 77, 95]


@pytest.mark.parametrize("name", ["sigma", "wanda-sp", "magnitude-depth2"])
@pytest.mark.parametrize("head_mode,head_dead", [("query", [1, 6]), ("group", [4, 5, 6, 7])])
def test_useless_units_are_exactly_removed(name, head_mode, head_dead):
    model = make_model("llama")
    uselessify(model, FFN_DEAD, head_dead)
    stats = None if name == "magnitude-depth2" else collect_statistics(model, batches(), progress=False)
    sc = score_model(model, name, stats)
    nq = len(head_dead) if head_mode == "query" else 0
    ng = len(head_dead) // (HEADS // KV_HEADS) if head_mode == "group" else 0
    s, _ = exact_sparsity(model, len(FFN_DEAD), nq, ng)
    c = layer_costs(get_adapter(model), get_adapter(model).layers(model)[0])
    attn_s = (nq * c.query_head + ng * (c.group_size * c.query_head + c.kv_head)) / c.attn_total
    al = allocate(model, sc.ffn, sc.heads, sparsity=s, attn_sparsity=attn_s, head_mode=head_mode)
    for i, plan in al.layers.items():
        assert set(range(FFN)) - set(plan.ffn_keep.tolist()) == set(FFN_DEAD)
        if head_mode == "query":
            assert isinstance(plan.heads, QueryHeads)
            assert set(range(HEADS)) - set(plan.heads.indices) == set(head_dead)
        else:
            assert isinstance(plan.heads, KVGroups) and list(plan.heads.indices) == [0]
    assert al.achieved()["overall"] == pytest.approx(s)


@pytest.mark.parametrize("head_mode", ["query", "group"])
@pytest.mark.parametrize("sparsity,attn", [(0.1, None), (0.3, None), (0.5, 0.25), (0.35, 0.6)])
def test_allocation_gqa_and_sparsity(head_mode, sparsity, attn):
    model = make_model("llama", seed=1)
    sc = score_model(model, "random", seed=4)
    al = allocate(model, sc.ffn, sc.heads, sparsity=sparsity, attn_sparsity=attn, head_mode=head_mode)
    g = HEADS // KV_HEADS
    for i, plan in al.layers.items():
        c = al.costs[i]
        if head_mode == "query":
            per = torch.bincount(torch.tensor(list(plan.heads.indices)) // g, minlength=KV_HEADS)
            assert (per == per[0]).all() and per[0] >= 1      # same number per group, every group kept
        else:
            assert isinstance(plan.heads, KVGroups) and len(plan.heads.indices) >= 1
        # within one FFN channel of the layer's target (the attention part is rounded, FFN fills in)
        assert abs((c.total - plan.params_after) - sparsity * c.total) <= c.ffn_unit / 2 + 1e-9
        # heads removed are the valid count closest to the attention target
        a_rm = (c.num_heads - plan.q_heads_kept) * c.query_head + (c.num_kv_heads - plan.kv_heads_kept) * c.kv_head
        step = c.num_kv_heads * c.query_head if head_mode == "query" else g * c.query_head + c.kv_head
        assert abs(a_rm - (attn if attn is not None else sparsity) * c.attn_total) <= step / 2 + 1e-9
    ach = al.achieved()
    assert abs(ach["overall"] - sparsity) <= al.costs[0].ffn_unit / (2 * al.costs[0].total) + 1e-12
    # the keep-sets are valid for slicing and the counts match
    before = sum(p.numel() for p in model.parameters())
    from sketchprune.prune import slice_model
    slice_model(model, ffn=al.ffn, heads=al.heads)
    assert before - sum(p.numel() for p in model.parameters()) == al.params_before - al.params_after


def test_allocation_rejects_infeasible_targets():
    model = make_model("llama")
    sc = score_model(model, "random")
    with pytest.raises(ValueError, match="FFN to lose"):
        allocate(model, sc.ffn, sc.heads, sparsity=0.2, attn_sparsity=0.6)   # attention alone is over
    with pytest.raises(ValueError, match="FFN to lose"):
        allocate(model, sc.ffn, sc.heads, sparsity=0.6, attn_sparsity=0.0)   # the FFN cannot make it up


def test_allocation_query_mode_steps_of_kv_heads():
    """9 query / 3 KV heads (SmolLM2's layout): query-head counts move in steps of 3."""
    model = make_model("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8)
    sc = score_model(model, "magnitude-l2")
    for s in (0.1, 0.2, 0.35, 0.5):
        al = allocate(model, sc.ffn, sc.heads, sparsity=s)
        for plan in al.layers.values():
            assert plan.q_heads_kept % 3 == 0 and plan.kv_heads_kept == 3


@pytest.mark.parametrize("kind,name", [("llama", n) for n in NAMES] + [("qwen2", "sigma"), ("mistral", "flap"),
                                                                      ("qwen2", "flap")])
def test_prune_model_end_to_end(kind, name):
    model = make_model(kind, dtype=torch.float32)
    data = batches(n=2)
    mode = "group" if name in ("magnitude-l1", "flap") else "query"
    rep = prune_model(model, data, sparsity=0.3, criterion=name, head_mode=mode, progress=False)
    assert rep["criterion"] == name and len(rep["layers"]) == LAYERS
    assert rep["params_after"] < rep["params_before"]
    assert abs(rep["sparsity_achieved"]["overall"] - 0.3) < 0.02
    units = get_adapter(model).layer_units(model)
    for u, l in zip(units, rep["layers"]):
        assert u.ffn_units == l["ffn_kept"] and u.heads.num_heads == l["q_heads_kept"]
        assert u.heads.num_kv_heads == l["kv_heads_kept"]
    out = logits(model, data[0]["input_ids"])
    assert out.shape == (2, 10, VOCAB) and torch.isfinite(out).all()
    assert n_hooks(model) == 0
    if name == "flap":
        assert len(rep["biases_folded"]) == 2 * LAYERS
    if name in ("random", "magnitude-l1", "magnitude-l2", "magnitude-depth2"):
        assert rep["calibration_tokens"] == 0


def test_fold_mean_into_bias_is_exact_for_mean_inputs():
    torch.manual_seed(0)
    for has_bias in (False, True):
        lin = torch.nn.Linear(12, 5, bias=has_bias).double()
        x = torch.randn(7, 12, dtype=torch.float64)
        mu = torch.randn(12, dtype=torch.float64)
        removed = torch.tensor([1, 4, 9])
        xm = x.clone()
        xm[:, removed] = mu[removed]           # removed channels replaced by their mean
        expect = lin(xm)
        assert fold_mean_into_bias(lin, removed, mu)
        xz = x.clone()
        xz[:, removed] = 0                      # == slicing the columns away
        with torch.no_grad():
            got = xz @ lin.weight.T + lin.bias
        torch.testing.assert_close(got, expect)


def test_flap_compensation_matches_mean_replacement():
    """flap with bias folding: the pruned FFN output equals the dense one with the removed
    channels' intermediate activations replaced by their calibration mean (checked on layer 0's
    MLP given its captured input)."""
    model = make_model("llama")
    data = batches(n=2)
    dense = copy.deepcopy(model)
    ref_in = capture(dense, data)[0]["mlp_in"]
    prune_model(model, data, sparsity=0.3, criterion="flap", attn_sparsity=0.0, progress=False)
    mlp0, dmlp0 = model.model.layers[0].mlp, dense.model.layers[0].mlp
    with torch.no_grad():
        h = dmlp0.act_fn(dmlp0.gate_proj(ref_in)) * dmlp0.up_proj(ref_in)
        mean = h.mean(0)
        kept_gate = mlp0.gate_proj.weight
        keep = [int(torch.nonzero((dmlp0.gate_proj.weight == row).all(1))[0]) for row in kept_gate]
        removed = [k for k in range(FFN) if k not in keep]
        assert len(removed) > 0
        h[:, removed] = mean[removed]
        torch.testing.assert_close(mlp0(ref_in), dmlp0.down_proj(h))


def test_prune_model_errors():
    model = make_model("llama")
    with pytest.raises(ValueError, match="unknown criterion"):
        prune_model(model, batches(), criterion="nope", progress=False)
    with pytest.raises(ValueError, match="needs calibration"):
        prune_model(model, None, criterion="sigma", progress=False)
    with pytest.raises(ValueError, match="head_mode"):
        prune_model(model, None, criterion="random", head_mode="x", progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        prune_model(model, None, criterion="random", sparsity=1.2, progress=False)
    assert get_adapter(model).layer_units(model)[0].ffn_units == FFN  # untouched
    assert HIDDEN == 64


def test_flap_existing_biases_fold_without_warning_and_round_trip(tmp_path):
    import warnings

    from sketchprune.prune import load_pruned
    model = make_model("llama", dtype=torch.float32, attention_bias=True, mlp_bias=True)
    data = batches(n=2)
    o_bias0 = model.model.layers[0].self_attn.o_proj.bias.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = prune_model(model, data, sparsity=0.3, attn_sparsity=0.4, criterion="flap", flap_bias="existing",
                          progress=False)  # 4 heads: hidden_size must stay a multiple for save_pretrained
    assert len(rep["biases_folded"]) == 2 * LAYERS and not any("created" in f for f in rep["biases_folded"])
    assert not torch.equal(model.model.layers[0].self_attn.o_proj.bias, o_bias0)
    want = logits(model, data[0]["input_ids"])
    model.save_pretrained(tmp_path)
    again = load_pruned(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    torch.testing.assert_close(logits(again, data[0]["input_ids"]), want)


@pytest.mark.parametrize("kind,sequential", [("llama", False), ("llama", True), ("qwen2", False)])
def test_flap_created_biases_save_and_load(kind, sequential, tmp_path):
    """FLAP on an architecture without down / o biases creates them: the config records them per
    layer, the stock loader is not offered, and load_pruned / load_saved give the same logits."""
    import warnings

    from sketchprune.prune import load_pruned
    from sketchprune.prune.export import load_saved, save_pruned_dir, stock_loadable
    model = make_model(kind, dtype=torch.float32)
    data = batches(n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = prune_model(model, data, sparsity=0.3, criterion="flap", head_mode="group", sequential=sequential,
                          progress=False)
    assert any(f.endswith("(created)") for f in rep["biases_folded"])
    layers = model.config.sketchprune_layers
    assert all(l["added_biases"] == ["down", "o"] for l in layers), layers
    assert not stock_loadable(model)
    x = data[1]["input_ids"]
    want = logits(model, x)
    info = save_pruned_dir(model, tmp_path / "out", verify_input=x)
    assert info["load_with"] == "sketchprune.load_pruned" and info["verify"]["max_abs_logit_diff"] <= 1e-4
    for loader in (load_pruned, load_saved):
        again = loader(tmp_path / "out", dtype=torch.float32, attn_implementation="eager").eval()
        assert all(l.mlp.down_proj.bias is not None and l.self_attn.o_proj.bias is not None
                   for l in again.model.layers)
        torch.testing.assert_close(logits(again, x), want)


def test_native_biases_are_not_recorded_as_added():
    model = make_model("llama", dtype=torch.float32, attention_bias=True, mlp_bias=True)
    prune_model(model, batches(n=1), sparsity=0.3, criterion="flap", flap_bias="existing", head_mode="group",
                progress=False)
    assert not any("added_biases" in l for l in model.config.sketchprune_layers)
    qwen = make_model("qwen2", dtype=torch.float32)  # q/k/v biases are the architecture's own
    prune_model(qwen, batches(n=1), sparsity=0.3, criterion="sigma", progress=False)
    assert not any("added_biases" in l for l in qwen.config.sketchprune_layers)


def test_flap_bias_none_and_existing_on_biasless_model():
    for mode in ("none", "existing"):
        model = make_model("llama", dtype=torch.float32)
        rep = prune_model(model, batches(n=1), sparsity=0.25, criterion="flap", flap_bias=mode, progress=False)
        assert rep["biases_folded"] == []
        assert all(l.mlp.down_proj.bias is None and l.self_attn.o_proj.bias is None for l in model.model.layers)


def test_prune_model_sigma_saves_and_loads(tmp_path):
    from sketchprune.prune import load_pruned
    model = make_model("qwen2", dtype=torch.float32)
    data = batches(n=2)
    prune_model(model, data, sparsity=0.3, criterion="sigma", progress=False)
    want = logits(model, data[1]["input_ids"])
    model.save_pretrained(tmp_path)
    again = load_pruned(tmp_path, dtype=torch.float32, attn_implementation="eager").eval()
    torch.testing.assert_close(logits(again, data[1]["input_ids"]), want)


def test_prune_model_subset_of_layers_and_precomputed_stats():
    model = make_model("llama", dtype=torch.float32)
    data = batches(n=2)
    stats = collect_statistics(model, data, layers=[0, 2], progress=False)
    rep = prune_model(model, stats=stats, layers=[0, 2], sparsity=0.3, criterion="sigma", progress=False)
    assert [l["layer"] for l in rep["layers"]] == [0, 2] and rep["calibration_tokens"] == stats.tokens
    units = get_adapter(model).layer_units(model)
    assert units[1].ffn_units == units[3].ffn_units == FFN and units[1].heads.num_heads == HEADS
    assert units[0].ffn_units < FFN and units[2].heads.num_heads < HEADS
    assert torch.isfinite(logits(model, data[0]["input_ids"])).all()


# ---------------------------------------------------------------------------- gradient criteria
def reference_gradients(model, data):
    """Sum over batches of dL_b/dW (float64 next-token cross-entropy, explicit) and of its square
    times W^2, for every parameter, by plain autograd."""
    params = dict(model.named_parameters())
    gsum = {n: torch.zeros_like(p) for n, p in params.items()}
    fsum = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for bt in data:
        ids, am = bt["input_ids"], bt["attention_mask"].bool()
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=bt["attention_mask"]).logits[:, :-1], -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0]
        valid = am[:, 1:] & am[:, :-1]
        loss = nll[valid].sum() / valid.sum()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for (n, p), g in zip(params.items(), grads):
            if g is not None:
                gsum[n] += g
                fsum[n] += (p.detach() * g).square()
    return gsum, fsum


def test_gradient_statistics_equal_autograd():
    from sketchprune.prune.gradient_scores import gradient_statistics
    model = make_model("qwen2")                      # q/k/v biases
    data = batches()
    gsum, fsum = reference_gradients(make_model("qwen2"), data)
    # state to restore
    model.model.norm.weight.requires_grad_(False)
    up1 = model.model.layers[1].mlp.up_proj.weight
    up1.grad = sentinel = torch.full_like(up1, 7.0)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    gs = gradient_statistics(model, data, layers=[1, 3], progress=False)
    assert sorted(gs) == [1, 3] and model.training
    assert up1.grad is sentinel and not model.model.norm.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "model.norm.weight")
    assert all(p.grad is None for p in model.parameters() if p is not up1)
    assert all(not getattr(p, "_post_accumulate_grad_hooks", None) for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    hs = get_adapter(model).head_structure(model.model.layers[0])
    hd, B = hs.head_dim, len(data)
    for i in (1, 3):
        pre = f"model.layers.{i}."
        G = {k[len(pre):]: v for k, v in gsum.items() if k.startswith(pre)}
        Fs = {k[len(pre):]: v for k, v in fsum.items() if k.startswith(pre)}
        Wt = {k[len(pre):]: v.detach() for k, v in dict(model.named_parameters()).items() if k.startswith(pre)}
        tay = {k: (Wt[k] * G[k]).abs() for k in G}

        def unit(t, parts):
            return torch.stack([sum(t[name][sl].sum() for name, sl in parts(u)) for u in range(n)])
        n = FFN
        ffn_parts = lambda u: [("mlp.gate_proj.weight", (u, slice(None))), ("mlp.up_proj.weight", (u, slice(None))),
                               ("mlp.down_proj.weight", (slice(None), u))]
        n = HEADS
        blk = lambda u: slice(u * hd, (u + 1) * hd)
        head_parts = lambda u: [("self_attn.q_proj.weight", blk(u)), ("self_attn.q_proj.bias", blk(u)),
                                ("self_attn.o_proj.weight", (slice(None), blk(u)))]
        kv_parts = lambda u: [(f"self_attn.{m}_proj.{w}", blk(u)) for m in "kv" for w in ("weight", "bias")]
        for kind, parts, count in (("ffn", ffn_parts, FFN), ("head", head_parts, HEADS), ("kv", kv_parts, KV_HEADS)):
            n = count
            torch.testing.assert_close(gs[i][f"{kind}_taylor"], unit(tay, parts))
            torch.testing.assert_close(gs[i][f"{kind}_fisher"], 0.5 * unit(Fs, parts) / B)
        assert int(gs[i]["batches"]) == B
    # criteria on top
    g = HEADS // KV_HEADS
    for name, term in (("taylor", "taylor"), ("fisher", "fisher")):
        q = score_model(model, name, grads=gs)
        assert sorted(q.ffn) == [1, 3]
        assert torch.equal(q.ffn[3], gs[3][f"ffn_{term}"]) and torch.equal(q.heads[3], gs[3][f"head_{term}"])
        grp = score_model(model, name, grads=gs, head_mode="group")
        torch.testing.assert_close(grp.heads[1].reshape(KV_HEADS, g).sum(1),
                                   gs[1][f"head_{term}"].reshape(KV_HEADS, g).sum(1) + gs[1][f"kv_{term}"])
    with pytest.raises(ValueError, match="needs gradients"):
        score_model(model, "taylor")


def test_gradient_statistics_fisher_only_and_errors():
    from sketchprune.prune.gradient_scores import gradient_statistics
    model = make_model("llama")
    data = batches(n=2)
    both = gradient_statistics(model, data, layers=[0], progress=False)
    only = gradient_statistics(model, data, layers=[0], progress=False, what=("fisher",))
    assert set(only[0]) == {"ffn_fisher", "head_fisher", "kv_fisher", "batches"}
    torch.testing.assert_close(only[0]["ffn_fisher"], both[0]["ffn_fisher"])
    with pytest.raises(ValueError, match="subset"):
        gradient_statistics(model, data, what=("hessian",))
    with pytest.raises(ValueError, match="no calibration batches"):
        gradient_statistics(model, [], progress=False)
    with pytest.raises(IndexError):
        gradient_statistics(model, data, layers=[LAYERS])
    empty = {"input_ids": data[0]["input_ids"], "attention_mask": torch.zeros_like(data[0]["input_ids"])}
    with pytest.raises(ValueError, match="no \\(input, next token\\)"):
        gradient_statistics(model, [empty], progress=False)
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", ["taylor", "fisher", "greedy", "head-similarity"])
def test_new_criteria_finite_shaped_deterministic(name):
    from sketchprune.prune.gradient_scores import gradient_statistics
    model = make_model("mistral")
    data = batches(n=2)
    stats = collect_statistics(model, data, what={"down_in": "full", "o_in": "full"}, progress=False)
    grads = gradient_statistics(model, data, progress=False) if CRITERIA[name].needs_gradients else None
    a = score_model(model, name, stats, grads=grads)
    b = score_model(model, name, stats, grads=grads)
    for i in range(LAYERS):
        assert a.ffn[i].shape == (FFN,) and a.heads[i].shape == (HEADS,)
        assert a.ffn[i].dtype == a.heads[i].dtype == torch.float64
        assert torch.isfinite(a.ffn[i]).all() and (a.ffn[i] >= 0).all() and (a.heads[i] >= 0).all()
        assert torch.equal(a.ffn[i], b.ffn[i]) and torch.equal(a.heads[i], b.heads[i])
    assert CRITERIA[name].doc
