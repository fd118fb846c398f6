import pytest
import torch

from sketchprune.select import baselines as B


def _X(N=120, m=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, m, generator=g) * torch.linspace(0.2, 3.0, m)


def _valid(idx, N, n):
    assert idx.dtype == torch.int64 and idx.numel() == n
    assert torch.unique(idx).numel() == n and int(idx.min()) >= 0 and int(idx.max()) < N
    assert torch.equal(idx, idx.sort().values)


@pytest.mark.parametrize("n", [1, 7, 40, 120])
def test_geometry_methods_return_exactly_n_distinct(n):
    X = _X()
    N = X.shape[0]
    for idx in (B.uniform(N, n), B.herding(X, n), B.kcenter(X, n), B.leverage(X, n), B.leverage(X, n, rank=3),
                B.leverage(X, n, deterministic=True), B.ridge_leverage(X, n), B.adaptive(X, n)):
        _valid(idx, N, n)


def test_herding_tracks_the_mean_better_than_uniform():
    X = _X(400, 6, seed=1)
    mu = X.double().mean(0)
    h = (X.double()[B.herding(X, 20)].mean(0) - mu).norm()
    u = torch.stack([(X.double()[B.uniform(400, 20, s)].mean(0) - mu).norm() for s in range(20)]).mean()
    assert h < 0.5 * u


def test_kcenter_covers_better_than_uniform():
    X = _X(300, 4, seed=2)

    def radius(idx):
        return torch.cdist(X, X[idx]).min(1).values.max()

    assert radius(B.kcenter(X, 15)) < min(radius(B.uniform(300, 15, s)) for s in range(10))


def test_adaptive_spans_a_low_rank_matrix_in_rank_steps():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(50, 3, generator=g) @ torch.randn(3, 8, generator=g)  # rank 3
    idx = B.adaptive(X, 3)
    assert torch.linalg.matrix_rank(X[idx].double()) == 3


def test_score_methods():
    g = torch.Generator().manual_seed(4)
    probs = torch.softmax(torch.randn(30, 5, generator=g) * 2, 1)
    labels = torch.randint(0, 5, (30,), generator=g)
    for idx in (B.entropy(probs, 6), B.margin(probs, 6), B.least_confidence(probs, 6), B.el2n(probs, labels, 6),
                B.grand(torch.rand(30, generator=g), 6)):
        _valid(idx, 30, 6)
    # the least-confident sample is kept by least_confidence
    assert int(probs.max(1).values.argmin()) in B.least_confidence(probs, 1).tolist()
    with pytest.raises(ValueError, match="coreset size"):
        B.entropy(probs, 31)
