import warnings

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


def _kcenter_reference(X, n, seed, rows=None):
    """float64 farthest-point traversal (direct distances) from the seed's first pick, over ``rows``
    (default all), returning the picks in order."""
    first = int(torch.randint(X.shape[0], (1,), generator=B._gen(seed)))
    Xd = X.double()
    rows = torch.arange(X.shape[0]) if rows is None else rows
    dist = torch.full((X.shape[0],), -1.0, dtype=torch.float64)
    dist[rows] = (Xd[rows] - Xd[first]).square().sum(1)
    ref = [first]
    for _ in range(n - 1):
        dist[ref] = -1.0
        i = int(dist.argmax())
        ref.append(i)
        dist[rows] = torch.minimum(dist[rows], (Xd[rows] - Xd[i]).square().sum(1))
    return ref


def test_kcenter_matches_farthest_point_reference():
    # float64 farthest-point traversal from the same first pick (the seed's draw)
    X = _X(200, 5, seed=5) + 40.0  # an offset: the expansion ||x||^2 - 2 x.c + ||c||^2 must not lose it
    assert B.kcenter(X, 25, seed=3).tolist() == sorted(_kcenter_reference(X, 25, 3))


def test_kcenter_is_scale_invariant_and_keeps_an_outlier_from_hiding_the_rest():
    X = _X(50, 6, seed=11)
    ref = B.kcenter(X, 8, seed=3)
    assert ref.tolist() == sorted(_kcenter_reference(X, 8, 3))
    for scale in (1e-30, 1e-25, 1e-10, 1e20, 1e30):  # float32: squares over/underflow unscaled
        assert torch.equal(B.kcenter(X * scale, 8, seed=3), ref), scale
    for scale in (1e-300, 1e300):  # float64 too
        assert torch.equal(B.kcenter(X.double() * scale, 8, seed=3), ref), scale
    Y = X.clone()
    Y[7] = 1e20  # an outlier: picked, and the others still by their own distances
    assert B.kcenter(Y, 8, seed=3).tolist() == sorted(_kcenter_reference(Y, 8, 3))
    Z = X.double() + 1e6  # a large common offset
    assert torch.equal(B.kcenter(Z, 8, seed=3), ref)
    Xs = X.double() * 2.0**70
    B.kcenter(Xs, 8, seed=3)
    assert torch.equal(Xs, X.double() * 2.0**70)  # the input is not scaled in place


def test_kcenter_non_finite_rows_are_far_and_never_centers():
    X = _X(60, 4, seed=12)
    X[3, 1], X[17, 0] = float("nan"), float("-inf")
    first = int(torch.randint(60, (1,), generator=B._gen(5)))
    assert first not in (3, 17)
    finite = torch.tensor([i for i in range(60) if i not in (3, 17)])
    got = B.kcenter(X, 12, seed=5).tolist()
    # the two non-finite rows (infinitely far), then farthest-point among the finite rows
    assert got == sorted(_kcenter_reference(X, 10, 5, finite) + [3, 17])


def test_geometry_methods_read_the_sketch_detached():
    X = _X(60, 5, seed=13)
    Xg = X.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Converting a tensor with requires_grad=True to a scalar"
        for fn in (B.herding, B.kcenter, B.leverage, B.ridge_leverage, B.adaptive):
            assert torch.equal(fn(Xg, 7), fn(X, 7)), fn.__name__


def test_sizes_must_be_integers_not_bools():
    X = _X(20, 3)
    for call in (lambda: B.uniform(20, True), lambda: B.kcenter(X, True), lambda: B.herding(X, 2.0)):
        with pytest.raises(TypeError, match="coreset size n must be an integer"):
            call()


def test_kcenter_with_duplicate_or_non_finite_rows_still_returns_n_distinct():
    X = _X(10, 3, seed=6).repeat(4, 1)  # 10 distinct points, each 4 times
    _valid(B.kcenter(X, 30), 40, 30)
    X = _X(50, 4, seed=9)
    X[3, 1], X[17, 0] = float("nan"), float("inf")
    _valid(B.kcenter(X, 20), 50, 20)
    _valid(B.kcenter(torch.full((8, 2), 3e19), 5), 8, 5)  # squared norms overflow float32


def _adaptive_reference(X, n, seed):
    # the textbook loop: residual norms recomputed from R at every pick
    R = X.double().clone()
    gen, out = B._gen(seed), []
    for _ in range(n):
        w = R.square().sum(1)
        w[out] = 0.0
        i = int(torch.multinomial(w / w.sum(), 1, generator=gen))
        out.append(i)
        v = R[i].clone()
        R -= torch.outer(R @ v / (v @ v), v)
    return sorted(out)


def test_adaptive_matches_the_textbook_loop_while_the_span_lasts():
    X = _X(300, 12, seed=7)
    for seed in range(3):
        assert B.adaptive(X, 10, seed=seed).tolist() == _adaptive_reference(X, 10, seed)


def test_adaptive_past_the_rank_fills_uniformly():
    g = torch.Generator().manual_seed(8)
    X = torch.randn(400, 4, generator=g) @ torch.randn(4, 9, generator=g)  # rank 4
    counts = torch.zeros(400)
    for seed in range(40):
        idx = B.adaptive(X, 60, seed=seed)
        _valid(idx, 400, 60)
        counts[idx] += 1
    # the 56 rows past the span are uniform over the rest: every row is picked now and then
    # (P(a given row never in 40 draws of ~14%) ~ 2e-3; over 400 rows ~ 1 expected miss)
    assert int((counts == 0).sum()) <= 8


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


def test_kcenter_values_near_the_float64_limit_stay_distinct():
    """Centring before scaling overflowed (1e308 - (-1e308) = inf): NaN distances, a repeated pick."""
    from sketchprune.select.baselines import kcenter

    X = torch.tensor([[-1e308], [-1e308], [1e308], [0.0]], dtype=torch.float64)
    idx = kcenter(X, 4, seed=0)
    assert sorted(set(idx.tolist())) == [0, 1, 2, 3]
    assert kcenter(X, 3, seed=1).unique().numel() == 3
