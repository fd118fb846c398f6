"""Self-generated calibration: deterministic for a seed, greedy with top_k=1, and sampling from the
model's tempered top-k distribution."""

import pytest
import torch

pytest.importorskip("transformers")

from _tiny_lm import tiny_lm  # noqa: E402

from sketchprune.datasets.selfgen import self_generated  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m, _ = tiny_lm()
    return m.double()


def test_same_seed_same_tokens_other_seed_other_tokens(model):
    a = self_generated(model, 5, 12, seed=3, batch_size=2)
    b = self_generated(model, 5, 12, seed=3, batch_size=2)
    c = self_generated(model, 5, 12, seed=4, batch_size=2)
    assert a.shape == (5, 12) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(self_generated(model, 5, 12, seed=3, batch_size=2), a)


def test_first_tokens_avoid_excluded_ids(model):
    ex = list(range(0, 250))
    x = self_generated(model, 40, 2, seed=0, exclude_ids=ex)
    assert set(x[:, 0].tolist()) <= set(range(250, 257))


def test_top1_is_greedy_decoding_without_cache(model):
    x = self_generated(model, 3, 10, seed=1, top_k=1, batch_size=3)
    with torch.no_grad():
        for t in range(1, 10):
            nxt = model(input_ids=x[:, :t], use_cache=False).logits[:, -1].argmax(-1)
            assert torch.equal(nxt, x[:, t])


def test_samples_follow_the_tempered_top_k_distribution(model):
    first = 65
    n, temp, k = 4000, 0.7, 5
    x = self_generated(model, n, 2, seed=0, temperature=temp, top_k=k, batch_size=n,
                       exclude_ids=[i for i in range(257) if i != first])
    assert (x[:, 0] == first).all()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[first]])).logits[0, -1] / temp
    top = torch.topk(logits, k).indices
    p = torch.zeros(257, dtype=torch.float64)
    p[top] = torch.softmax(logits[top], 0)
    emp = torch.bincount(x[:, 1], minlength=257).double() / n
    assert set(x[:, 1].tolist()) <= set(top.tolist())
    assert 0.5 * (emp - p).abs().sum() < 0.05  # total variation; its sampling noise is ~0.02 here


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="temperature"):
        self_generated(model, 1, 4, temperature=0)
    with pytest.raises(ValueError, match=">= 1"):
        self_generated(model, 0, 4)
    with pytest.raises(ValueError, match="excluded"):
        self_generated(model, 1, 4, exclude_ids=range(257))
