import math

import pytest
import torch

from sketchprune.select import (lmo_capped_simplex, moment_problem, project_capped_simplex, round_weights,
                                skmm_select, solve_moment_matching, variance_proxy)


def _in_capped_simplex(s, n, atol=1e-9):
    return bool((s >= -atol).all() and (s <= 1.0 / n + atol).all() and abs(float(s.sum()) - 1.0) < 1e-9)


@pytest.mark.parametrize("N,n", [(7, 1), (50, 10), (1000, 37), (20, 20)])
def test_projection_is_the_euclidean_projection(N, n):
    g = torch.Generator().manual_seed(N + n)
    v = torch.randn(N, dtype=torch.float64, generator=g) * 0.3
    p = project_capped_simplex(v, n)
    assert _in_capped_simplex(p, n)
    # variational inequality: <v - p, x - p> <= 0 for every x in C(n) (checked on vertices and mixtures)
    for _ in range(200):
        x = torch.zeros(N, dtype=torch.float64)
        x[torch.randperm(N, generator=g)[:n]] = 1.0 / n
        lam = float(torch.rand((), generator=g))
        x = lam * x + (1 - lam) * p
        assert float((v - p) @ (x - p)) <= 1e-10


def test_lmo_is_a_vertex_minimising_the_linear_function():
    grad = torch.randn(30, dtype=torch.float64)
    x = lmo_capped_simplex(grad, 6)
    assert _in_capped_simplex(x, 6) and int((x > 0).sum()) == 6
    assert float(grad @ x) == pytest.approx(float(torch.sort(grad).values[:6].sum()) / 6)


def _clustered_sketch(N=400, m=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([200, 120, 60, 20])[: N]
    centers = torch.randn(4, m, generator=g) * 3
    rows = [centers[i] + torch.randn(int(sz), m, generator=g) * (0.3 + 0.3 * i) for i, sz in enumerate(sizes)]
    return torch.cat(rows)[torch.randperm(int(sizes.sum()), generator=g)]


def test_solver_certifies_its_tolerance_and_beats_uniform():
    sk = _clustered_sketch()
    prob = moment_problem(sk)
    n = 40
    sol = solve_moment_matching(prob, n, c=0.8, tol=1e-4)
    assert sol.converged and _in_capped_simplex(sol.weights, n)
    assert sol.gap <= 1e-4 * sol.objective_uniform
    assert sol.objective < sol.objective_uniform
    # the certificate bounds the distance to the optimum: a much longer run cannot beat f - gap
    longer = solve_moment_matching(prob, n, c=0.8, tol=1e-6, max_iter=4000)
    assert longer.objective <= sol.objective + 1e-9
    assert longer.objective >= sol.objective - sol.gap - 1e-9 * sol.objective_uniform


def test_A_reproduces_second_moments():
    sk = _clustered_sketch(seed=3)
    prob = moment_problem(sk)
    N = sk.shape[0]
    s = torch.full((N,), 1.0 / N, dtype=torch.float64)
    # uniform weights give a_j^T s = lam_j
    assert torch.allclose(prob.A.double().T @ s, prob.lam, rtol=1e-4, atol=1e-6)


def test_c_at_least_one_is_rejected():
    prob = moment_problem(_clustered_sketch())
    with pytest.raises(ValueError, match="uniform"):
        solve_moment_matching(prob, 10, c=1.0)


def test_rounding_exact_n_distinct_and_unbiased():
    N, n = 60, 12
    g = torch.Generator().manual_seed(0)
    s = project_capped_simplex(torch.rand(N, dtype=torch.float64, generator=g), n)
    counts = torch.zeros(N, dtype=torch.float64)
    trials = 4000
    for t in range(trials):
        idx = round_weights(s, n, "sample", torch.Generator().manual_seed(t))
        assert idx.numel() == n and torch.unique(idx).numel() == n
        counts[idx] += 1
    pi = n * s
    se = torch.sqrt(pi * (1 - pi) / trials).clamp_min(1.0 / trials)
    assert ((counts / trials - pi).abs() <= 5 * se + 1e-9).all()
    top = round_weights(s, n, "top")
    assert set(top.tolist()) == set(torch.topk(s, n).indices.tolist())


def test_skmm_select_record_and_variance_proxy():
    sk = _clustered_sketch(seed=5)
    sel = skmm_select(sk, 40, c=0.7, seed=1, formulation="hinge")
    assert sel.indices.numel() == 40 and torch.unique(sel.indices).numel() == 40
    info = sel.info
    assert info["converged"] and info["duality_gap"] <= info["tol"] * info["objective_uniform"]
    assert math.isfinite(info["variance_proxy"]) and info["variance_proxy"] > 0
    assert variance_proxy(sk, torch.arange(sk.shape[0])) == pytest.approx(sk.shape[1], rel=1e-6)


def test_skmm_maxmin_formulation():
    sel = skmm_select(_clustered_sketch(seed=6), 40, formulation="maxmin", seed=0)
    assert sel.indices.numel() == 40 and sel.info["formulation"] == "maxmin" and sel.info["c"] is None
    assert sel.info["converged"] and sel.info["objective"] >= 1.0 - 1e-9
    with pytest.raises(ValueError, match="formulation"):
        skmm_select(_clustered_sketch(), 10, formulation="lp")


def test_paper_formulation_exact_n_and_better_than_its_start():
    from sketchprune.select import moment_problem, skmm_select
    from sketchprune.select.paper import solve_paper

    g = torch.Generator().manual_seed(11)
    # two clusters of very different sizes: a random start rarely matches the small one's moments
    sk = torch.cat([torch.randn(270, 6, generator=g), 5 + torch.randn(30, 6, generator=g)])
    prob = moment_problem(sk)
    sol = solve_paper(prob, 30, c=0.6, seed=0, iters=600)
    assert sol.weights.shape == (300,) and abs(float(sol.weights.sum()) - 1) < 1e-9
    assert float(sol.weights.max()) <= 1 / 30 + 1e-12 and float(sol.weights.min()) >= 0
    start = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:30]
    s0 = torch.zeros(300, dtype=torch.float64)
    s0[start] = 1 / 30
    B = prob.A.double() / prob.lam
    f0 = float(torch.relu(1 / 0.6 - B.T @ s0).square().mean())
    assert sol.objective < 0.5 * f0
    sel = skmm_select(sk, 30, formulation="paper", iters=300, seed=1)
    assert sel.indices.numel() == 30 and torch.unique(sel.indices).numel() == 30
    assert sel.info["formulation"] == "paper"
    with pytest.raises(ValueError, match="relative weighting"):
        skmm_select(sk, 30, formulation="paper", weighting="absolute")


def test_interior_optimum_top_rounding_keeps_large_norms_sample_does_not():
    """For c near 1 the hinge optimum is 0 on a whole face of C(n); the solver returns an interior
    point of it (top_mass well below 1), whose n largest weights are the samples the gradient
    pushed up most -- the largest norms.  Sample rounding keeps n s_i as inclusion probabilities and
    stays close to the pool's norms (the reason it is the default)."""
    g = torch.Generator().manual_seed(0)
    sk = torch.randn(600, 8, generator=g) * (0.5 + torch.rand(600, 1, generator=g))
    norms = sk.norm(dim=1)
    top = skmm_select(sk, 100, c=0.9, rounding="top", formulation="hinge")
    assert top.info["objective"] == 0.0 and top.info["top_mass"] < 0.5 and top.info["support"] > 300
    assert float(norms[top.indices].mean() / norms.mean()) > 1.4
    for s in range(4):
        sel = skmm_select(sk, 100, c=0.9, seed=s, formulation="hinge")
        assert sel.info["rounding"] == "sample"
        assert float(norms[sel.indices].mean() / norms.mean()) < 1.25
    # a vertex solution carries all its mass on n weights
    vert = skmm_select(_clustered_sketch(seed=5), 40, c=0.6, formulation="hinge")
    assert 0 < vert.info["top_mass"] <= 1 + 1e-9 and vert.info["support"] >= 40
