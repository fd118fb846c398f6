"""Tiny random-weight Llama-family models (and the ``tokens`` fixture) for the pruning tests.

A plain module, not a conftest: tests import it by name (``tests/prune`` is on sys.path).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 64, 4, 8, 2, 16, 96, 128


def make_model(kind="llama", dtype=torch.float64, seed=0, attn="eager", **overrides):
    """A tiny random model: hidden 64, 4 layers, 8 query heads, 2 KV heads, head_dim 16, FFN 96.

    Weights are drawn with std 0.2 (not HF's 0.02) so that every unit visibly matters.
    """
    kw = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
              num_key_value_heads=KV_HEADS, intermediate_size=FFN, vocab_size=VOCAB,
              max_position_embeddings=64, initializer_range=0.2, tie_word_embeddings=False)
    kw.update(overrides)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**{"head_dim": HEAD_DIM, **kw})
        cls = transformers.LlamaForCausalLM
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**{"head_dim": HEAD_DIM, "sliding_window": None, **kw})
        cls = transformers.MistralForCausalLM
    elif kind == "qwen2":
        cfg = transformers.Qwen2Config(**kw)  # head_dim = hidden / heads = 8 here; q/k/v biases
        cls = transformers.Qwen2ForCausalLM
    else:
        raise ValueError(kind)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype).eval()
    with torch.no_grad():  # HF zero-initialises biases: make them count
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.2)
    return model


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (2, 12), generator=g)


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens).logits
