"""Allocation: uniform removal counts known before scoring, and global allocation across layers."""

import math

import pytest
import torch
from prune_models import FFN, HEADS, KV_HEADS, LAYERS, make_model

from sketchprune.prune import allocate, get_adapter, layer_costs, score_model, slice_model
from sketchprune.prune.allocation import LayerRemoval, layer_removal, removal_plan


@pytest.mark.parametrize("head_mode", ["query", "group"])
@pytest.mark.parametrize("sparsity,attn", [(0.1, None), (0.3, None), (0.5, 0.25), (0.35, 0.6)])
def test_removal_plan_is_what_allocate_removes(head_mode, sparsity, attn):
    model = make_model("llama", seed=1)
    sc = score_model(model, "random", seed=3)
    rp = removal_plan(model, sparsity, attn, head_mode)
    al = allocate(model, sc.ffn, sc.heads, sparsity=sparsity, attn_sparsity=attn, head_mode=head_mode)
    for i, plan in al.layers.items():
        r, c = rp[i], al.costs[i]
        assert isinstance(r, LayerRemoval) and r.head_mode == head_mode
        assert FFN - plan.ffn_keep.numel() == r.ffn
        assert HEADS - plan.q_heads_kept == r.query_heads(c)
        assert KV_HEADS - plan.kv_heads_kept == r.groups
        assert plan.params_before - plan.params_after == r.attention_params(c) + r.ffn * c.ffn_unit
        assert (r.q_per_group == 0) or (r.groups == 0)
    assert sorted(removal_plan(model, 0.2, layers=[3, 1])) == [1, 3]


def test_layer_removal_errors():
    c = layer_costs(get_adapter(make_model("llama")), make_model("llama").model.layers[0])
    with pytest.raises(ValueError, match="FFN to lose"):
        layer_removal(c, 0.2, 0.6)
    with pytest.raises(ValueError, match="head_mode"):
        layer_removal(c, 0.2, head_mode="heads")
    with pytest.raises(ValueError, match="sparsity"):
        layer_removal(c, 1.0)


def skewed_scores(model, seed=0):
    """Scores whose distribution differs per layer: layer i has i*15 near-zero FFN channels and
    layer 2's raw scale is 1000x."""
    g = torch.Generator().manual_seed(seed)
    ffn, heads = {}, {}
    for i in range(LAYERS):
        f = 1 + torch.rand(FFN, generator=g, dtype=torch.float64)
        f[torch.randperm(FFN, generator=g)[:15 * i]] *= 1e-3
        h = 1 + torch.rand(HEADS, generator=g, dtype=torch.float64)
        if i == 1:
            h[::2] *= 1e-3
        scale = 1000.0 if i == 2 else 1.0
        ffn[i], heads[i] = f * scale, h * scale
    return ffn, heads


@pytest.mark.parametrize("head_mode", ["query", "group"])
@pytest.mark.parametrize("sparsity,attn", [(0.2, None), (0.3, 0.1), (0.4, 0.5)])
def test_global_hits_the_target_within_a_unit(head_mode, sparsity, attn):
    model = make_model("llama")
    ffn, heads = skewed_scores(model)
    al = allocate(model, ffn, heads, sparsity, attn, head_mode, allocation="global")
    c = al.costs[0]
    total = sum(x.total for x in al.costs.values())
    attn_total = sum(x.attn_total for x in al.costs.values())
    removed = al.params_before - al.params_after
    assert abs(removed - sparsity * total) <= c.ffn_unit / 2 + 1e-9
    a_rm = sum((x.num_heads - p.q_heads_kept) * x.query_head + (x.num_kv_heads - p.kv_heads_kept) * x.kv_head
               for x, p in ((al.costs[i], al.layers[i]) for i in al.layers))
    step = c.num_kv_heads * c.query_head if head_mode == "query" else c.group_size * c.query_head + c.kv_head
    assert abs(a_rm - (sparsity if attn is None else attn) * attn_total) <= step / 2 + 1e-9
    floor = math.ceil(0.1 * FFN)
    for i, plan in al.layers.items():
        assert plan.ffn_keep.numel() >= floor
        if head_mode == "query":
            per = torch.bincount(torch.tensor(list(plan.heads.indices)) // (HEADS // KV_HEADS), minlength=KV_HEADS)
            assert (per == per[0]).all() and per[0] >= 1
        else:
            assert len(plan.heads.indices) >= 1
    before = sum(p.numel() for p in model.parameters())
    slice_model(model, ffn=al.ffn, heads=al.heads)
    assert before - sum(p.numel() for p in model.parameters()) == removed


def test_global_follows_the_normalised_scores():
    model = make_model("llama")
    ffn, heads = skewed_scores(model)
    al = allocate(model, ffn, heads, 0.3, allocation="global")
    # the channels removed are exactly the globally lowest mean-normalised scores
    norm = {i: ffn[i] / ffn[i].mean() for i in range(LAYERS)}
    removed = torch.cat([norm[i][[k for k in range(FFN) if k not in set(al.layers[i].ffn_keep.tolist())]]
                         for i in range(LAYERS)])
    kept = torch.cat([norm[i][al.layers[i].ffn_keep] for i in range(LAYERS)])
    assert removed.max() <= kept.min()
    assert removed.numel() > 90 and (removed < 1e-2).sum() == 90     # every near-zero channel went
    # the raw 1000x scale of layer 2 does not protect its 30 near-zero channels
    assert FFN - al.layers[2].ffn_keep.numel() >= 30
    # layer 1 has the weakest heads (half of them near zero)
    q = [al.layers[i].q_heads_kept for i in range(LAYERS)]
    assert q[1] == min(q) and q[1] < HEADS
    # normalisation: scaling one layer's scores changes nothing; without it, it does
    ffn2 = {**ffn, 0: ffn[0] * 1e6}
    heads2 = {**heads, 0: heads[0] * 1e6}
    same = allocate(model, ffn2, heads2, 0.3, allocation="global")
    assert all(torch.equal(same.layers[i].ffn_keep, al.layers[i].ffn_keep) for i in range(LAYERS))
    raw = allocate(model, ffn, heads, 0.3, allocation="global", normalise="none")
    assert raw.layers[2].ffn_keep.numel() > al.layers[2].ffn_keep.numel()   # raw 1000x scores protect layer 2
    # identical score distributions in every layer: global = uniform
    flat_f = {i: ffn[0] for i in range(LAYERS)}
    flat_h = {i: heads[0] for i in range(LAYERS)}
    g = allocate(model, flat_f, flat_h, 0.3, 0.2, allocation="global")
    u = allocate(model, flat_f, flat_h, 0.3, 0.2)
    for i in range(LAYERS):
        assert abs(g.layers[i].ffn_keep.numel() - u.layers[i].ffn_keep.numel()) <= 1
        assert g.layers[i].heads == u.layers[i].heads


def test_global_floor_and_errors():
    model = make_model("llama")
    ffn, heads = skewed_scores(model)
    weak = ffn[3].clone()
    weak[:80] *= 1e-6                                               # 80 near-zero channels in layer 3
    al = allocate(model, {**ffn, 3: weak}, heads, 0.35, 0.2, allocation="global", ffn_floor=0.4)
    assert all(p.ffn_keep.numel() >= math.ceil(0.4 * FFN) for p in al.layers.values())
    assert al.layers[3].ffn_keep.numel() == math.ceil(0.4 * FFN)   # the floor binds on the weakest layer
    with pytest.raises(ValueError, match="floor"):
        allocate(model, ffn, heads, 0.6, 0.2, allocation="global", ffn_floor=0.5)
    with pytest.raises(ValueError, match="allocation"):
        allocate(model, ffn, heads, 0.3, allocation="best")
    with pytest.raises(ValueError, match="normalise"):
        allocate(model, ffn, heads, 0.3, allocation="global", normalise="z")
    with pytest.raises(ValueError, match="ffn_floor"):
        allocate(model, ffn, heads, 0.3, allocation="global", ffn_floor=1.5)
    neg = {**ffn, 1: ffn[1] - 1.5}
    with pytest.raises(ValueError, match="negative"):
        allocate(model, neg, heads, 0.3, allocation="global")
    assert allocate(model, neg, heads, 0.3, allocation="global", normalise="none").achieved()["overall"] > 0.29
