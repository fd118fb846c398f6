"""Saving sliced models with save_pretrained and loading them back."""

import pytest
import torch
from prune_models import FFN, logits, make_model, tokens  # noqa: F401

from sketchprune.prune import KVGroups, QueryHeads, load_pruned, slice_model

transformers = pytest.importorskip("transformers")

UNIFORM_FFN = [list(range(0, FFN, 3))] * 4
UNIFORM_HEADS = [QueryHeads([0, 3, 4, 7])] * 4
MIXED_FFN = {0: list(range(0, FFN, 2)), 2: [1, 5, 9]}
MIXED_HEADS = {1: KVGroups([0]), 3: QueryHeads([2, 6])}
EAGER = dict(dtype=torch.float32, attn_implementation="eager")  # as the models under test


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_uniform_sizes_load_with_stock_from_pretrained(kind, tokens, tmp_path):
    model = slice_model(make_model(kind, **EAGER), ffn=UNIFORM_FFN, heads=UNIFORM_HEADS)
    cfg = model.config
    assert (cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (32, 4, 2)
    want = logits(model, tokens)
    model.save_pretrained(tmp_path)
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, **EAGER).eval()
    assert type(stock) is type(model)
    assert torch.equal(logits(stock, tokens), want)
    again = load_pruned(tmp_path, **EAGER).eval()
    assert torch.equal(logits(again, tokens), want)


@pytest.mark.parametrize("kind,tied", [("llama", False), ("llama", True), ("qwen2", False)])
def test_per_layer_sizes_round_trip_with_load_pruned(kind, tied, tokens, tmp_path):
    model = slice_model(make_model(kind, dtype=torch.float32, tie_word_embeddings=tied),
                        ffn=MIXED_FFN, heads=MIXED_HEADS)
    want = logits(model, tokens)
    model.save_pretrained(tmp_path)
    with pytest.raises(Exception, match="mismatched_sizes"):  # the stock class builds uniform layers
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded = load_pruned(tmp_path, **EAGER).eval()
    assert type(loaded).__name__ == type(model).__name__
    assert loaded.config.sketchprune_layers == model.config.sketchprune_layers
    for a, b in zip(loaded.model.layers, model.model.layers):
        assert a.self_attn.num_key_value_groups == b.self_attn.num_key_value_groups
        assert a.mlp.intermediate_size == b.mlp.intermediate_size
    sd_a, sd_b = loaded.state_dict(), model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert torch.equal(logits(loaded, tokens), want)
    if tied:
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    # a loaded model can be saved and loaded again, and sliced further
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(logits(load_pruned(tmp_path / "again", **EAGER).eval(), tokens), want)
    slice_model(loaded, ffn={2: [0, 2]})
    assert loaded.model.layers[2].mlp.intermediate_size == 2


def test_head_count_not_dividing_hidden_saves_and_loads(tokens, tmp_path):
    """8 -> 6 query heads with hidden 64: the stock fields cannot describe it (64 % 6 != 0), so
    they keep their values and load_pruned restores the sliced sizes."""
    model = slice_model(make_model("llama", **EAGER), heads=[QueryHeads([0, 1, 2, 4, 5, 6])] * 4)
    assert model.config.num_attention_heads == 8  # untouched
    want = logits(model, tokens)
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path, **EAGER).eval()
    assert loaded.model.layers[0].self_attn.q_proj.out_features == 6 * 16
    assert torch.equal(logits(loaded, tokens), want)
