"""The ``variance`` formulation: objective, greedy design, Frank-Wolfe certificate, skmm_select wiring."""

import pytest
import torch

from sketchprune.select import select, skmm_select, variance_proxy
from sketchprune.select.variance import (greedy_variance, solve_variance, variance_objective,
                                         variance_problem)


def _sketch(N=80, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, m, generator=g, dtype=torch.float64) * torch.linspace(3, 0.2, m, dtype=torch.float64)
    x[: N // 8] += 4 * torch.randn(1, m, generator=g, dtype=torch.float64)  # a small far cluster
    return x


def _objective64(sk, s, eps):
    """Float64 reference of tr(Sigma (G^T diag(s) G + eps' I)^{-1}) in the original coordinates."""
    G = sk.double()
    sigma = G.T @ G / G.shape[0]
    e = eps * float(torch.trace(sigma)) / G.shape[1]
    M = G.T @ (G * s[:, None]) + e * torch.eye(G.shape[1], dtype=torch.float64)
    return float(torch.trace(sigma @ torch.linalg.inv(M)))


def test_problem_rotates_into_the_eigenbasis_and_objective_matches_reference():
    sk = _sketch()
    X, lam = variance_problem(sk)
    assert torch.allclose(X.T @ X / X.shape[0], torch.diag(lam), atol=1e-9 * float(lam[0]))
    s = torch.rand(sk.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s /= s.sum()
    for eps in (1e-3, 0.1, 1.0):
        assert variance_objective(X, lam, s, eps) == pytest.approx(_objective64(sk, s, eps), rel=1e-9)


def _brute_greedy(X, lam, n, eps):
    N, S = X.shape[0], []
    for _ in range(n):
        best = None
        for i in range(N):
            if i in S:
                continue
            s = torch.zeros(N, dtype=torch.float64)
            s[S + [i]] = 1.0 / n
            f = variance_objective(X, lam, s, eps)
            if best is None or f < best[0]:
                best = (f, i)
        S.append(best[1])
    return sorted(S)


@pytest.mark.parametrize("batch", [1, 3, None])
def test_greedy_matches_brute_force_greedy(batch):
    X, lam = variance_problem(_sketch(N=40, m=6, seed=2))
    for n in (1, 5, 9):
        idx, f = greedy_variance(X, lam, n, 0.05, batch=batch)
        assert idx.tolist() == _brute_greedy(X, lam, n, 0.05)
        s = torch.zeros(X.shape[0], dtype=torch.float64)
        s[idx] = 1.0 / n
        assert f == pytest.approx(variance_objective(X, lam, s, 0.05), rel=1e-6)


def test_greedy_batched_equals_plain_on_a_larger_problem():
    X, lam = variance_problem(_sketch(N=600, m=16, seed=3))
    a, fa = greedy_variance(X, lam, 120, 0.01, batch=1)
    b, fb = greedy_variance(X, lam, 120, 0.01, batch=16)
    assert fb == pytest.approx(fa, rel=1e-4)  # near-ties swapped by float32 refreshes
    assert len(set(a.tolist()) & set(b.tolist())) >= 0.95 * 120


def _greedy64(X, lam, n, eps):
    """Plain float64 greedy (Sherman-Morrison), independent of the library's rounds and refreshes."""
    from sketchprune.select.variance import _ridge

    e, Xs = _ridge(lam, eps), X / n ** 0.5
    Minv, out = torch.eye(X.shape[1], dtype=torch.float64) / e, []
    chosen = torch.zeros(X.shape[0], dtype=torch.bool)
    for _ in range(n):
        B = Xs @ Minv
        g = ((B.square() * lam).sum(1) / (1 + (B * Xs).sum(1))).masked_fill(chosen, -float("inf"))
        i = int(g.argmax())
        u = Minv @ Xs[i]
        Minv = Minv - torch.outer(u, u) / (1 + float(Xs[i] @ u))
        chosen[i] = True
        out.append(i)
    return sorted(out)


@pytest.mark.parametrize("eps", [1e-3, 1e-2])
def test_greedy_exact_with_a_small_ridge(eps):
    """Small eps: h and q are small differences of terms of order |x|^2 / eps' (float32 refreshes
    picked a set 40% worse at eps = 1e-3 on this problem); the picks must be the float64 greedy's."""
    g = torch.Generator().manual_seed(4)
    sk = (torch.randn(600, 32, generator=g) * torch.logspace(0, -3, 32)) * torch.rand(600, 1, generator=g)
    X, lam = variance_problem(sk)
    idx, f = greedy_variance(X, lam, 80, eps)
    ref = _greedy64(X, lam, 80, eps)
    s = torch.zeros(X.shape[0], dtype=torch.float64)
    s[ref] = 1.0 / 80
    assert f == pytest.approx(variance_objective(X, lam, s, eps), rel=1e-6)
    assert len(set(idx.tolist()) & set(ref)) >= 78


def test_frank_wolfe_certifies_its_gap():
    X, lam = variance_problem(_sketch(N=200, m=8))
    n = 40
    sol = solve_variance(X, lam, n, eps=0.05, tol=1e-3, max_iter=3000)
    assert sol.converged and sol.gap <= 1e-3 * sol.objective
    s = sol.weights
    assert float(s.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(s.min()) >= 0 and float(s.max()) <= 1.0 / n + 1e-12
    assert sol.objective == pytest.approx(variance_objective(X, lam, s, 0.05), rel=1e-9)
    assert sol.objective < sol.objective_uniform
    # the certificate: no point of C(n) is better than f - gap (random vertices and the greedy set)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        v = torch.zeros(200, dtype=torch.float64)
        v[torch.randperm(200, generator=g)[:n]] = 1.0 / n
        assert variance_objective(X, lam, v, 0.05) >= sol.objective - sol.gap
    idx, fg = greedy_variance(X, lam, n, 0.05)
    assert fg >= sol.objective - sol.gap


def test_eps_must_be_positive():
    X, lam = variance_problem(_sketch())
    with pytest.raises(ValueError, match="eps"):
        greedy_variance(X, lam, 5, 0.0)
    with pytest.raises(ValueError, match="eps"):
        solve_variance(X, lam, 5, eps=-1.0)


@pytest.mark.parametrize("rounding", ["greedy", "top", "sample"])
def test_skmm_select_variance_formulation(rounding):
    sk = _sketch(N=120, m=8).float()
    n = 20
    sel = skmm_select(sk, n, formulation="variance", rounding=rounding, eps=0.05, seed=3)
    assert sel.indices.numel() == n and torch.unique(sel.indices).numel() == n
    info = sel.info
    assert info["formulation"] == "variance" and info["rounding"] == rounding and info["eps"] == 0.05
    assert info["variance_proxy"] == pytest.approx(variance_proxy(sk, sel.indices))
    assert info["converged"] in (True, False)
    # the coreset covers the sketched directions better than a typical uniform draw
    g = torch.Generator().manual_seed(0)
    uni = sorted(variance_proxy(sk, torch.randperm(120, generator=g)[:n]) for _ in range(21))[10]
    if rounding != "sample":
        assert info["variance_proxy"] < uni
    # reproducible
    again = skmm_select(sk, n, formulation="variance", rounding=rounding, eps=0.05, seed=3)
    assert torch.equal(again.indices, sel.indices)


def test_greedy_rounding_only_for_variance_and_through_select():
    sk = _sketch(N=60).float()
    with pytest.raises(ValueError, match="greedy"):
        skmm_select(sk, 10, rounding="greedy", formulation="hinge")
    sel = select(10, "skmm", sk, formulation="variance", rounding="greedy")
    assert sel.indices.numel() == 10 and sel.info["formulation"] == "variance"


def test_edge_sizes_and_rank_deficient_sketch():
    sk = _sketch(N=30, m=5)
    sk = torch.cat([sk, sk[:, :2] * 2.0], 1)  # 7 columns, rank 5
    X, lam = variance_problem(sk)
    assert X.shape == (30, 5) and lam.numel() == 5
    idx, _ = greedy_variance(X, lam, 30, 0.1)
    assert idx.tolist() == list(range(30))
    sol = solve_variance(X, lam, 30, eps=0.1)
    assert sol.converged and torch.allclose(sol.weights, torch.full((30,), 1 / 30, dtype=torch.float64))
    one = skmm_select(sk.float(), 1)
    assert one.indices.numel() == 1


def test_greedy_reads_its_stop_test_back_every_stride_picks(monkeypatch):
    """Off the CPU the in-round stop test is read back once per `stride` picks (a host round trip
    drains the GPU queue); picks made past a round's end are dropped, so every stride gives the
    same set -- here with rounds that end early, the usual case."""
    import sketchprune.select.variance as V

    g = torch.Generator().manual_seed(3)
    S = torch.randn(1500, 96, generator=g) * torch.linspace(3, 0.1, 96) * (1 + 3 * torch.rand(1500, 1, generator=g))
    X, lam = variance_problem(S)
    calls = []
    real = V._first_below

    def spy(gains, start, outside):
        out = real(gains, start, outside)
        calls.append((len(gains) - start, out))
        return out
    monkeypatch.setattr(V, "_first_below", spy)
    ref, f_ref = greedy_variance(X, lam, 300, 0.1, stop_test_stride=1)
    one = list(calls)
    assert any(stop is not None for _, stop in one)            # rounds do end early here
    for stride in (3, 64):
        calls.clear()
        idx, f = greedy_variance(X, lam, 300, 0.1, stop_test_stride=stride)
        assert torch.equal(idx, ref) and f == pytest.approx(f_ref, rel=1e-12)
        assert len(calls) < len(one) / 2 and max(k for k, _ in calls) <= stride
