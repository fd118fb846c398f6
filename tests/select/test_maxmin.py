import torch

from sketchprune.select import moment_problem
from sketchprune.select.maxmin import solve_maxmin
from sketchprune.select.simplex import project_capped_simplex


def _sketch(seed=0, N=300, m=12):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(4, m, generator=g) * 3
    lab = torch.randint(0, 4, (N,), generator=g)
    return c[lab] + torch.randn(N, m, generator=g) * torch.linspace(0.2, 1.5, m)


def test_maxmin_certified_and_better_than_uniform_and_random_points():
    prob = moment_problem(_sketch())
    n = 30
    sol = solve_maxmin(prob, n, tol=1e-2)
    s = sol.weights
    assert sol.converged and abs(float(s.sum()) - 1) < 1e-9 and float(s.max()) <= 1 / n + 1e-12
    ratios = (prob.A.double().T @ s) / prob.lam
    assert abs(float(ratios.min()) - sol.objective) < 1e-9
    assert sol.objective >= sol.objective_uniform - 1e-9  # uniform is feasible, value 1
    # no feasible point beats the certified upper bound objective + gap
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = project_capped_simplex(torch.rand(s.shape[0], dtype=torch.float64, generator=g), n)
        val = float(((prob.A.double().T @ x) / prob.lam).min())
        assert val <= sol.objective + sol.gap + 1e-9
