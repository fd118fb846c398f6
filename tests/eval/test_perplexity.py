"""Perplexity against a direct computation on a tiny random Llama."""

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from sketchprune.eval import perplexity


def _tiny():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def test_matches_direct():
    model = _tiny()
    ids = torch.randint(0, 97, (5, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1))
    ref = math.exp(nll.item())
    for chunk in (1, 2, 5):
        assert perplexity(model, ids, progress=False, chunk_size=chunk) == pytest.approx(ref, rel=1e-5)
    # a list of batches of different sizes is token-weighted the same way
    assert perplexity(model, [ids[:2], ids[2:]], progress=False) == pytest.approx(ref, rel=1e-5)
    ppl, mean, n = perplexity(model, ids, progress=False, return_nll=True)
    assert n == 5 * 11 and mean == pytest.approx(nll.item(), rel=1e-5)
    assert model.training is False


def test_attention_mask_skips_padding():
    model = _tiny()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        a = F.cross_entropy(model(ids[:1]).logits[0, :-1], ids[0, 1:], reduction="sum")
        b = F.cross_entropy(model(ids[1:, :6]).logits[0, :-1], ids[1, 1:6], reduction="sum")
    ref = math.exp((a + b).item() / (9 + 5))
    got = perplexity(model, [{"input_ids": ids, "attention_mask": mask}], progress=False)
    assert got == pytest.approx(ref, rel=1e-4)


def test_empty_raises():
    with pytest.raises(ValueError):
        perplexity(_tiny(), [], progress=False)


def test_bad_chunk_size_and_a_single_dict_batch():
    model = _tiny()
    ids = torch.randint(0, 97, (3, 8), generator=torch.Generator().manual_seed(3))
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            perplexity(model, ids, progress=False, chunk_size=bad)
    assert perplexity(model, {"input_ids": ids}, progress=False) == pytest.approx(perplexity(model, ids, progress=False))


def test_evaluate_top1_and_counts_match_direct():
    from sketchprune.eval import evaluate

    model = _tiny()
    ids = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(ids).logits[:, :-1].double()
    tgt = ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, 97), tgt.reshape(-1))
    top1 = (logits.argmax(-1) == tgt).double().mean().item()
    res = evaluate(model, ids, chunk_size=3)
    assert res["ppl"] == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert res["top1"] == pytest.approx(top1, abs=1e-12)
    assert (res["tokens"], res["predicted_tokens"], res["sequences"], res["seq_len"]) == (64, 60, 4, 16)


def test_top1_with_padding_counts_only_real_predictions():
    from sketchprune.eval import evaluate

    model = _tiny()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        a = model(ids[:1]).logits[0, :-1].argmax(-1) == ids[0, 1:]
        b = model(ids[1:, :6]).logits[0, :-1].argmax(-1) == ids[1, 1:6]
    res = evaluate(model, [{"input_ids": ids, "attention_mask": mask}])
    assert res["predicted_tokens"] == 9 + 5 and res["tokens"] == 16
    assert res["top1"] == pytest.approx((a.sum() + b.sum()).item() / 14)


def test_top1_is_one_on_the_models_own_greedy_continuation():
    from sketchprune.eval import evaluate

    model = _tiny()
    ids = torch.tensor([[5]])
    with torch.no_grad():
        for _ in range(11):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], 1)
    assert evaluate(model, ids)["top1"] == 1.0
    ids[0, 6] = (ids[0, 6] + 1) % 97  # one wrong target; the context after it changes too
    res = evaluate(model, ids)
    assert res["top1"] < 1.0 and res["predicted_tokens"] == 11
