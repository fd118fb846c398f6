"""Tiny random-weight models (and the ``tokens`` fixture) for the pruning tests.

Llama family (``llama``, ``mistral``, ``qwen2``), Gemma 2 / Gemma 3 text (``gemma2``,
``gemma3_text``), OPT (``opt``) and BERT (``bert``: ``BertModel``, the all-MiniLM-L6-v2
architecture; ``bert-mlm``: ``BertForMaskedLM``).

A plain module, not a conftest: tests import it by name (``tests/prune`` is on sys.path).
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 64, 4, 8, 2, 16, 96, 128


#: the families beyond the Llama one; their norm weights are randomised as well
OTHER_KINDS = ("gemma2", "gemma3_text", "opt", "bert", "bert-mlm")
#: head_dim of the Gemma models: 32, not hidden / heads = 8
GEMMA_HEAD_DIM = 32
#: a sliding window shorter than the test sequences, so the local layers differ from global ones
WINDOW = 4


def _other_model(kind, overrides):
    """Config and class of the non-Llama families: hidden 64, 4 layers, 8 query heads, FFN 96."""
    common = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  vocab_size=VOCAB, max_position_embeddings=64)
    if kind in ("gemma2", "gemma3_text"):
        kw = dict(common, intermediate_size=FFN, head_dim=GEMMA_HEAD_DIM, initializer_range=0.2,
                  sliding_window=WINDOW, query_pre_attn_scalar=GEMMA_HEAD_DIM, tie_word_embeddings=False,
                  layer_types=["sliding_attention", "full_attention"] * (LAYERS // 2),
                  # Gemma 2: GQA with 2 KV heads; Gemma 3: a single KV head (as in Gemma 3 1B)
                  num_key_value_heads=KV_HEADS if kind == "gemma2" else 1)
        kw.update(overrides)
        if kind == "gemma2":
            return transformers.Gemma2Config(**kw), transformers.Gemma2ForCausalLM
        return transformers.Gemma3TextConfig(**kw), transformers.Gemma3ForCausalLM
    if kind == "opt":
        kw = dict(common, ffn_dim=FFN, word_embed_proj_dim=HIDDEN, init_std=0.2, enable_bias=True,
                  dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)
        kw.update(overrides)
        return transformers.OPTConfig(**kw), transformers.OPTForCausalLM
    if kind in ("bert", "bert-mlm"):
        kw = dict(common, intermediate_size=FFN, initializer_range=0.2, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
        kw.update(overrides)
        cls = transformers.BertModel if kind == "bert" else transformers.BertForMaskedLM
        return transformers.BertConfig(**kw), cls
    raise ValueError(kind)


def make_model(kind="llama", dtype=torch.float64, seed=0, attn="eager", **overrides):
    """A tiny random model: hidden 64, 4 layers, 8 query heads, 2 KV heads, head_dim 16, FFN 96
    (Llama family; see :func:`_other_model` for the others).

    Weights are drawn with std 0.2 (not HF's 0.02) so that every unit visibly matters.
    """
    if kind in OTHER_KINDS:
        cfg, cls = _other_model(kind, overrides)
        cfg._attn_implementation = attn
        torch.manual_seed(seed)
        model = cls(cfg).to(dtype).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0, 0.2)
                elif "norm" in name.lower():  # LayerNorm / RMSNorm / per-head q/k norm weights
                    p.add_(torch.randn_like(p), alpha=0.2)
        return model
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


def logits(model, tokens, **kwargs):
    """The model's logits, or the last hidden state of a bare encoder (``BertModel``)."""
    with torch.no_grad():
        out = model(input_ids=tokens, **kwargs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
