"""Physical slicing of Llama-family models: exactness, equivalence to zeroing, GQA rules, sizes."""

import copy
import inspect

import pytest
import torch
from prune_models import (FFN, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, OTHER_KINDS, VOCAB, logits, make_model,  # noqa: F401
                         tokens)

from sketchprune.prune import KVGroups, QueryHeads, get_adapter, slice_model, supported_architectures

KINDS = ["llama", "mistral", "qwen2"]

# a mixed plan: different sizes per layer, both head modes, an untouched layer
FFN_KEEP = {0: list(range(0, FFN, 2)), 1: [3, 7, 50, 95], 3: list(range(10, 70))}
# layer 2: KV group 0 keeps no query head, so it goes with its K/V heads
HEAD_KEEP = {0: QueryHeads([1, 2, 5, 6]), 1: KVGroups([1]), 2: QueryHeads([4, 6])}


def zeroed_reference(model, ffn_keep, head_keep):
    """The dense model with the removed units' down_proj columns / o_proj column blocks zeroed."""
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    with torch.no_grad():
        for i, keep in ffn_keep.items():
            drop = torch.ones(layers[i].mlp.down_proj.in_features, dtype=torch.bool)
            drop[keep] = False
            layers[i].mlp.down_proj.weight[:, drop] = 0
        for i, sel in head_keep.items():
            a = layers[i].self_attn
            nq = a.q_proj.out_features // a.head_dim
            g = nq // (a.k_proj.out_features // a.head_dim)
            kept = set(sel.indices) if isinstance(sel, QueryHeads) else {k * g + j for k in sel.indices
                                                                          for j in range(g)}
            for h in range(nq):
                if h not in kept:
                    a.o_proj.weight[:, h * a.head_dim:(h + 1) * a.head_dim] = 0
    return ref


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", KINDS + list(OTHER_KINDS))
def test_keep_everything_is_bit_exact(kind, tokens):
    model = make_model(kind, dtype=torch.float32)
    before = logits(model, tokens)
    units = get_adapter(model).layer_units(model)
    slice_model(model, ffn=[list(range(u.ffn_units)) for u in units],
                heads=[KVGroups(range(u.heads.num_kv_heads)) if i % 2 else QueryHeads(range(u.heads.num_heads))
                       for i, u in enumerate(units)])
    assert torch.equal(logits(model, tokens), before)


@pytest.mark.parametrize("kind", KINDS)
def test_ffn_slicing_equals_zeroed_down_columns(kind, tokens):
    model = make_model(kind)
    ref = zeroed_reference(model, FFN_KEEP, {})
    sliced = slice_model(model, ffn=FFN_KEEP)
    for i, keep in FFN_KEEP.items():
        assert sliced.model.layers[i].mlp.down_proj.in_features == len(keep)
        assert sliced.model.layers[i].mlp.intermediate_size == len(keep)
    want = logits(ref, tokens)
    torch.testing.assert_close(logits(sliced, tokens), want, rtol=1e-10, atol=1e-10)
    assert (want - logits(make_model(kind), tokens)).abs().max() > 1e-3  # the units mattered


@pytest.mark.parametrize("kind", KINDS)
def test_head_slicing_equals_zeroed_o_blocks(kind, tokens):
    model = make_model(kind)
    ref = zeroed_reference(model, {}, HEAD_KEEP)
    sliced = slice_model(model, heads=HEAD_KEEP)
    want = logits(ref, tokens)
    torch.testing.assert_close(logits(sliced, tokens), want, rtol=1e-10, atol=1e-10)
    assert (want - logits(make_model(kind), tokens)).abs().max() > 1e-3


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mixed_plan_with_biases_and_attention_backends(attn, tokens):
    """Llama with q/k/v/o and MLP biases, FFN and heads together, eager and SDPA attention."""
    model = make_model("llama", attn=attn, attention_bias=True, mlp_bias=True)
    ref = zeroed_reference(model, FFN_KEEP, HEAD_KEEP)
    sliced = slice_model(model, ffn=FFN_KEEP, heads=HEAD_KEEP)
    torch.testing.assert_close(logits(sliced, tokens), logits(ref, tokens), rtol=1e-10, atol=1e-10)


def test_incremental_decoding_with_cache_matches_full_forward(tokens):
    """Per-layer head counts work with the KV cache (DynamicCache)."""
    model = slice_model(make_model("llama"), ffn=FFN_KEEP, heads=HEAD_KEEP)
    full = logits(model, tokens)
    # transformers 5.x names the argument `cache` (`past_key_values` deprecated); 4.x only has the latter
    arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        out = model(input_ids=tokens[:, :8], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        for t in range(8, tokens.shape[1]):
            out = model(input_ids=tokens[:, t:t + 1], use_cache=True, **{arg: cache})
            cache = out.past_key_values
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-9, atol=1e-9)


def test_gqa_invariants_after_slicing():
    model = slice_model(make_model("llama"), heads=HEAD_KEEP)
    adapter = get_adapter(model)
    expect = {0: (4, 2), 1: (4, 1), 2: (2, 1), 3: (HEADS, KV_HEADS)}  # (query heads, KV heads)
    for i, layer in enumerate(adapter.layers(model)):
        h = adapter.head_structure(layer)
        assert (h.num_heads, h.num_kv_heads) == expect[i]
        assert h.head_dim == HEAD_DIM and h.num_heads % h.num_kv_heads == 0
        a = layer.self_attn
        assert a.num_key_value_groups == h.group_size
        if i in HEAD_KEEP:  # informational attributes, set on sliced layers
            assert (a.num_heads, a.num_key_value_heads) == expect[i]
        assert a.k_proj.out_features == a.v_proj.out_features == h.num_kv_heads * HEAD_DIM
        assert a.o_proj.in_features == a.q_proj.out_features == h.num_heads * HEAD_DIM


def test_sliced_weights_are_the_kept_blocks():
    model = make_model("qwen2")
    orig = copy.deepcopy(model.model.layers[0].self_attn)
    hd = orig.head_dim
    slice_model(model, heads={0: QueryHeads([5, 7])})  # both in KV group 1 (group size 4)
    a = model.model.layers[0].self_attn
    rows = torch.cat([torch.arange(5 * hd, 6 * hd), torch.arange(7 * hd, 8 * hd)])
    kv = torch.arange(hd, 2 * hd)
    for name, idx in (("q_proj", rows), ("k_proj", kv), ("v_proj", kv)):
        new, old = getattr(a, name), getattr(orig, name)
        assert torch.equal(new.weight, old.weight[idx]) and torch.equal(new.bias, old.bias[idx])
    assert torch.equal(a.o_proj.weight, orig.o_proj.weight[:, rows])
    assert a.q_proj.weight.dtype == torch.float64 and a.q_proj.weight.requires_grad


@pytest.mark.parametrize("sel, err, msg", [
    (QueryHeads([0, 1, 4]), ValueError, "unequal numbers of query heads"),
    (QueryHeads([1, 0]), ValueError, "sorted and unique"),
    (QueryHeads([0, 0]), ValueError, "sorted and unique"),
    (QueryHeads([0, 8]), IndexError, "only 8"),
    (KVGroups([2]), IndexError, "only 2"),
    (KVGroups([]), ValueError, "keeps nothing"),
    (QueryHeads([]), ValueError, "keeps nothing"),
    ([0, 1], TypeError, "KVGroups"),
    (QueryHeads([0.5]), TypeError, "int"),
])
def test_invalid_head_requests_raise(sel, err, msg):
    model = make_model("llama")
    with pytest.raises(err, match=msg):
        slice_model(model, heads={1: sel})


@pytest.mark.parametrize("ffn, err, msg", [
    ({0: [2, 1]}, ValueError, "sorted and unique"),
    ({0: [-1, 3]}, IndexError, "only 96"),
    ({0: [0, 96]}, IndexError, "only 96"),
    ({4: [0]}, IndexError, "4 layers"),
    ([[0]] * 3, ValueError, "3 entries for 4 layers"),
    ({0: torch.tensor([0.0, 1.0])}, TypeError, "integer"),
])
def test_invalid_ffn_requests_raise(ffn, err, msg):
    with pytest.raises(err, match=msg):
        slice_model(make_model("llama"), ffn=ffn)


def test_nothing_changes_when_a_later_layer_is_invalid(tokens):
    model = make_model("llama")
    before = logits(model, tokens)
    with pytest.raises(ValueError):
        slice_model(model, ffn={0: [1, 2]}, heads={3: QueryHeads([0, 1, 4])})
    assert model.model.layers[0].mlp.down_proj.in_features == FFN
    assert not hasattr(model.config, "sketchprune_layers")
    assert torch.equal(logits(model, tokens), before)


def test_empty_ffn_layer_is_allowed(tokens):
    model = make_model("llama")
    ref = zeroed_reference(model, {2: []}, {})
    slice_model(model, ffn={2: []})
    assert model.model.layers[2].mlp.gate_proj.out_features == 0
    torch.testing.assert_close(logits(model, tokens), logits(ref, tokens), rtol=1e-10, atol=1e-10)


def test_unsupported_architecture_names_supported_ones():
    cfg = pytest.importorskip("transformers").GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50)
    from transformers import GPT2LMHeadModel
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'.*"
                       "bert, gemma2, gemma3_text, llama, mistral, opt, qwen2"):
        slice_model(GPT2LMHeadModel(cfg), ffn={0: [0]})
    assert supported_architectures() == ["bert", "gemma2", "gemma3_text", "llama", "mistral", "opt", "qwen2"]


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_count(kind):
    model = make_model(kind)
    dense = n_params(model)
    hd = model.model.layers[0].self_attn.head_dim
    bias_qkv = kind == "qwen2"
    slice_model(model, ffn=FFN_KEEP, heads=HEAD_KEEP)
    removed = 0
    for keep in FFN_KEEP.values():
        removed += (FFN - len(keep)) * 3 * HIDDEN  # a gate row, an up row, a down column each
    for nq, nkv in [(4, 2), (4, 1), (2, 1)]:  # query / KV heads left in layers 0, 1, 2
        dq, dkv = HEADS - nq, KV_HEADS - nkv
        removed += dq * hd * 2 * HIDDEN + dkv * hd * 2 * HIDDEN  # q rows + o cols; k rows + v rows
        if bias_qkv:
            removed += dq * hd + 2 * dkv * hd
    assert n_params(model) == dense - removed
    assert model.config.sketchprune_layers[1] == {"intermediate_size": 4, "num_attention_heads": 4,
                                                  "num_key_value_heads": 1}


def test_slicing_keeps_device_dtype_and_works_in_bf16(tokens):
    model = make_model("llama", dtype=torch.bfloat16)
    slice_model(model, ffn=FFN_KEEP, heads=HEAD_KEEP)
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and p.device.type == "cpu"
    assert logits(model, tokens).shape == (2, tokens.shape[1], VOCAB)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_zeroed_reference(cache, tokens):
    """Greedy generation runs on per-layer sizes and picks the same tokens as the zeroed dense model."""
    model = make_model("llama")
    ref = zeroed_reference(model, FFN_KEEP, HEAD_KEEP)
    sliced = slice_model(model, ffn=FFN_KEEP, heads=HEAD_KEEP)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation=cache)
    with torch.no_grad():
        assert torch.equal(sliced.generate(tokens, **kw), ref.generate(tokens, **kw))


def test_head_dim_is_read_from_the_model_not_hidden_over_heads(tokens):
    """head_dim 32 with hidden 64 and 8 heads: q is 256 wide, so hidden / heads (8) would be wrong."""
    model = make_model("llama", head_dim=32)
    units = get_adapter(model).layer_units(model)
    assert all(u.heads == units[0].heads for u in units)
    assert (units[0].heads.num_heads, units[0].heads.num_kv_heads, units[0].heads.head_dim) == (8, 2, 32)
    ref = zeroed_reference(model, {}, HEAD_KEEP)
    slice_model(model, heads=HEAD_KEEP)
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 32 and model.config.head_dim == 32
    torch.testing.assert_close(logits(model, tokens), logits(ref, tokens), rtol=1e-10, atol=1e-10)


def test_one_gather_call_per_layer_and_unit_kind(monkeypatch):
    import sketchprune.prune.slicing as slicing
    calls = []
    real = slicing.gather_slices

    def counting(tensors, indices, dims, block=1):
        calls.append((len(tensors), block))
        return real(tensors, indices, dims, block)

    monkeypatch.setattr(slicing, "gather_slices", counting)
    slice_model(make_model("qwen2"), ffn=FFN_KEEP, heads=HEAD_KEEP)
    assert sorted(calls) == sorted([(3, 1)] * 3 + [(7, 8)] * 3)  # qwen2: q/k/v/o + q/k/v biases, head_dim 8


def test_indices_as_tensors_ranges_and_numpy_ints(tokens):
    np = pytest.importorskip("numpy")
    a, b = make_model("llama"), make_model("llama")
    slice_model(a, ffn={np.int64(0): torch.tensor([1, 4, 9]), 1: range(0, 96, 4)},
                heads={2: QueryHeads(torch.tensor([0, 4])), 3: KVGroups(np.array([1]))})
    slice_model(b, ffn={0: [1, 4, 9], 1: list(range(0, 96, 4))}, heads={2: QueryHeads([0, 4]), 3: KVGroups([1])})
    assert torch.equal(logits(a, tokens), logits(b, tokens))
