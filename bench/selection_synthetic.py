"""Synthetic data-selection experiment: coresets for high-dimensional ridge regression.

    python bench/selection_synthetic.py [OUT_DIR] [--seeds 10] [--quick] [--workers 2]

writes OUT_DIR/synthetic.json, synthetic.md, synthetic_excess_risk.png, synthetic_m_sweep.png
(OUT_DIR defaults to results/selection/).

Generator (fixed before any selection result was looked at; every quantity is drawn from the seed)
-------------------------------------------------------------------------------------------------
* K = 8 Gaussian clusters in R^r, r = 2400, with random proportions p ~ Dirichlet(1, ..., 1)
  (so some clusters hold a few percent of the data or less).
* Cluster k: mean mu_k = 4 u_k with u_k a uniformly random unit vector (pairwise distances ~5.7,
  against a within-cluster standard deviation of 1 along the top direction and ~1.8 in total:
  well separated); covariance U_k diag(l) U_k^T + s_iso^2 I, U_k a random r x d orthonormal basis
  (cluster specific), d = 16, l_j = 1/j, s_iso = 0.002 (small isotropic noise).  So r > N, but the
  data lives near a union of 8 affine 16-dimensional subspaces.
* theta* ~ N(0, I_r); y = x^T theta* + eps, eps ~ N(0, sigma^2), sigma = 1.  (Signal variance
  E[(x^T theta*)^2] ~ 19, so SNR ~ 19.)
* Pool: N = 2000 samples (cluster labels ~ Multinomial(N, p)); validation: a separate labelled draw
  of 500 samples from the same mixture; test: the population itself -- the excess risk
      ||theta_S - theta*||_Sigma^2 = (theta_S - theta*)^T Sigma (theta_S - theta*),
      Sigma = E[x x^T] = sum_k p_k (mu_k mu_k^T + U_k diag(l) U_k^T) + s_iso^2 I
  is evaluated exactly (the population second moment of the mixture, no test sample).

Protocol
--------
* Features for selection: the model is linear, so the per-sample gradients are the rows x_i (times
  a residual, which selection may not look at: labels are unknown before selection).  They are
  sketched with ``sketch_matrix(X, m)`` (sparse-sign, k = 8).  m = ``intrinsic_dimension`` of a
  pilot sketch with m = 512, computed per seed (recorded).  Every method sees only this N x m sketch.
* Methods: uniform, herding, k-center, leverage (rank-k), ridge leverage, adaptive sampling and
  SkMM (variants: weighting absolute / relative, c in {0.6, 0.7, 0.8, 0.9}, rounding sample / top).
* Equal tuning effort: every method gets the same budget of B = 16 candidate coresets per
  (seed, n): its hyperparameter grid, and where that has fewer than 16 points, independent random
  redraws of the randomised method (uniform: 16 draws; k-center: 16 random starts; adaptive: 16
  draws; leverage: rank in {m/8, m/4, m/2, m} x 4 draws; ridge leverage: lambda in
  {0.01, 0.1, 1, 10} x the default ||X||_F^2 / n, x 4 draws; SkMM: the 16 variants; herding is
  deterministic: 1 candidate).  Each candidate is fitted by ridge regression on its n labelled
  samples with alpha on a log grid (13 values, 1e-5 ... 10 times the mean squared row norm);
  (candidate, alpha) is chosen by the validation MSE, and only then the excess risk of the choice
  is computed.  Results: mean and 95% t-interval over seeds.
* SkMM's solver runs to its certified tolerance (tol = 1e-4 x f(uniform)) or a time limit of
  SOLVER_TIME_LIMIT seconds, whichever comes first; the gap, iterations and convergence are
  recorded for every solve.
* Added after the first run (to look for principled fixes; variants chosen on validation only):
  ``skmm_paper`` -- the ``paper`` formulation (Adam from a random size-n start with a sparsity
  term, PAPER_ITERS steps), candidates c in C_GRID x 4 random starts; ``skmm_clustered`` --
  cluster-balanced SkMM: k-means (k-means++ seeding) on the sketch with K in CLUSTER_GRID, n split
  across clusters in proportion to sqrt(cluster size) (the allocation minimising sum_k p_k d / n_k,
  the variance of per-cluster least squares with equal cluster dimension d -- chosen from the
  generator's structure, not from results), SkMM (relative, top) inside each cluster; candidates
  K x c.  Both get the same 16-candidate budget.  (skmm_clustered is no longer in the default
  run: ``--methods ...,skmm_clustered``.)
* Added after the second run, as the principled fix of what the variance-proxy column showed
  (the hinge coresets' tr(Sigma~ Sigma~_S^+) far above k-center's at small n): ``skmm_variance``
  -- the ``variance`` formulation of :mod:`sketchprune.select.variance`, which minimises that
  proxy itself (with a ridge eps, relative to the mean eigenvalue) instead of constraining the
  diagonal of Sigma~_S in the eigenbasis.  Candidates: eps in EPS_GRID x {greedy, relaxed
  (Frank-Wolfe) + top, relaxed + 2 sample draws} = 16.  The library default formulation is the
  variant with the lowest mean validation rank among the hinge and variance candidates together.
* m sweep: at n = 160, each SkMM formulation (with the same 16-candidate validation choice) for m
  in {8, 16, 32, 64, 128, 256}; uniform sampling at the same n as the reference.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from provenance import git_commit, machine

from sketchprune.select import (baselines, intrinsic_dimension, moment_problem, round_weights,
                                sketch_matrix, skmm_select, solve_moment_matching, variance_proxy)
from sketchprune.select.paper import solve_paper
from sketchprune.select.variance import greedy_variance, solve_variance, variance_problem

# ---- the generator (fixed) -------------------------------------------------------------------
N, R, K_CLUSTERS, D_CLUSTER, SEP, S_ISO, NOISE, N_VAL = 2000, 2400, 8, 16, 4.0, 0.002, 1.0, 500
# ---- the protocol ----------------------------------------------------------------------------
N_SWEEP = [40, 80, 160, 320, 640, 1000]
M_SWEEP = [8, 16, 32, 64, 128, 256]
M_SWEEP_N = 160
PILOT_M = 512
BUDGET = 16
ALPHA_GRID = np.logspace(-5, 1, 13)
C_GRID = [0.6, 0.7, 0.8, 0.9]
WEIGHTINGS = ["absolute", "relative"]
ROUNDINGS = ["sample", "top"]
SOLVER_TOL = 1e-4
SOLVER_TIME_LIMIT = 3.0
VARIANCE_TOL = 1e-3  # Frank-Wolfe: certified gap <= tol * f(s)
METHODS = ["uniform", "herding", "kcenter", "leverage", "ridge_leverage", "adaptive", "skmm", "skmm_variance",
           "skmm_paper"]
SKMM_FAMILIES = ["skmm", "skmm_variance"]  # SkMM formulations whose variants are kept for the default choice
EXTRA_METHODS = ["skmm_clustered"]  # exploratory, run with --methods
EPS_GRID = [1e-3, 1e-2, 1e-1, 1.0]
PAPER_ITERS = 300
CLUSTER_GRID = [4, 8, 16, 32]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
        10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}


class Data:
    """One draw of the mixture: pool (X, y), validation (Xv, yv), theta*, and the population."""

    def __init__(self, seed: int):
        g = torch.Generator().manual_seed(10_000 + seed)
        dt = torch.float64
        self.p = _dirichlet(K_CLUSTERS, g)
        mu = torch.randn(K_CLUSTERS, R, generator=g, dtype=dt)
        self.mu = SEP * mu / mu.norm(dim=1, keepdim=True)
        self.U = torch.linalg.qr(torch.randn(K_CLUSTERS, R, D_CLUSTER, generator=g, dtype=dt))[0]
        self.l = 1.0 / torch.arange(1, D_CLUSTER + 1, dtype=dt)
        self.theta = torch.randn(R, generator=g, dtype=dt)
        self.X, self.y, self.lab = self._draw(N, g)
        self.Xv, self.yv, _ = self._draw(N_VAL, g)

    def _draw(self, n, g):
        lab = torch.multinomial(self.p, n, replacement=True, generator=g)
        X = S_ISO * torch.randn(n, R, generator=g, dtype=torch.float64)
        for k in range(K_CLUSTERS):
            idx = torch.nonzero(lab == k).squeeze(1)
            z = torch.randn(idx.numel(), D_CLUSTER, generator=g, dtype=torch.float64) * self.l.sqrt()
            X[idx] += self.mu[k] + z @ self.U[k].T
        y = X @ self.theta + NOISE * torch.randn(n, generator=g, dtype=torch.float64)
        return X, y, lab

    def excess_risk(self, theta_hat: torch.Tensor) -> float:
        d = theta_hat - self.theta
        along_mu = (self.mu @ d).square()                                   # (K,)
        along_u = (torch.einsum("krd,r->kd", self.U, d).square() * self.l).sum(1)
        return float((self.p * (along_mu + along_u)).sum() + S_ISO ** 2 * d.square().sum())


def _dirichlet(k, g):
    e = -torch.log(torch.rand(k, generator=g, dtype=torch.float64))  # Gamma(1) = Exp(1)
    return e / e.sum()


class Ridge:
    """Ridge regression on a subset S of the pool through the dual (n x n) problem, all alphas at
    once: theta = X_S^T (X_S X_S^T + alpha I)^{-1} y_S.  Gram matrices of the pool are cached."""

    def __init__(self, data: Data):
        self.data = data
        self.G = data.X @ data.X.T
        self.Gv = data.Xv @ data.X.T
        self.scale = float(torch.diagonal(self.G).mean())

    def fit(self, idx: torch.Tensor):
        idx = idx.long()
        KS = self.G[idx][:, idx]
        e, Q = torch.linalg.eigh(KS)
        e = e.clamp_min(0)
        alphas = torch.as_tensor(ALPHA_GRID * self.scale, dtype=torch.float64)
        Qy = Q.T @ self.data.y[idx]
        A = Q @ (Qy[:, None] / (e[:, None] + alphas[None, :]))  # (n, n_alpha) dual coefficients
        pred = self.Gv[:, idx] @ A
        mse = (pred - self.data.yv[:, None]).square().mean(0)
        j = int(torch.argmin(mse))
        theta = self.data.X[idx].T @ A[:, j]
        return {"alpha": float(ALPHA_GRID[j]), "val_mse": float(mse[j]),
                "excess_risk": self.data.excess_risk(theta)}


def candidates(method, sk, n, seed, cache):
    """Yield (hyperparameters, indices, solver info) for the method's B candidate coresets."""
    N_, m = sk.shape
    base = 1_000_003 * seed + 7919 * n
    draws = lambda k: [base + 101 * j for j in range(k)]  # noqa: E731
    if method == "uniform":
        for s in draws(BUDGET):
            yield {"draw": s}, baselines.uniform(N_, n, seed=s), None
    elif method == "herding":
        yield {}, baselines.herding(sk, n), None
    elif method == "kcenter":
        for s in draws(BUDGET):
            yield {"draw": s}, baselines.kcenter(sk, n, seed=s), None
    elif method == "adaptive":
        for s in draws(BUDGET):
            yield {"draw": s}, baselines.adaptive(sk, n, seed=s), None
    elif method == "leverage":
        ranks = sorted({max(1, m // 8), max(1, m // 4), max(1, m // 2), m})
        per = BUDGET // len(ranks)
        for k in ranks:
            for s in draws(per):
                yield {"rank": k, "draw": s}, baselines.leverage(sk, n, rank=k, seed=s), None
    elif method == "ridge_leverage":
        default = float(sk.double().square().sum()) / n
        for f in [0.01, 0.1, 1.0, 10.0]:
            for s in draws(BUDGET // 4):
                yield ({"ridge_factor": f, "draw": s},
                       baselines.ridge_leverage(sk, n, ridge=f * default, seed=s), None)
    elif method == "skmm":
        if "problem" not in cache:
            cache["problem"] = moment_problem(sk)
        for ci_, c in enumerate(C_GRID):
            for wi, w in enumerate(WEIGHTINGS):
                sol = solve_moment_matching(cache["problem"], n, c=c, weighting=w, tol=SOLVER_TOL,
                                            time_limit=SOLVER_TIME_LIMIT)
                info = {"objective": sol.objective, "objective_uniform": sol.objective_uniform,
                        "duality_gap": sol.gap, "rel_gap": sol.gap / max(sol.objective_uniform, 1e-300),
                        "iterations": sol.iterations, "converged": sol.converged,
                        "solver_seconds": sol.seconds}
                for rd in ROUNDINGS:
                    gen = torch.Generator().manual_seed(base + 10 * ci_ + wi)
                    idx = round_weights(sol.weights, n, rd, gen)
                    yield {"c": c, "weighting": w, "rounding": rd}, idx, info
    elif method == "skmm_variance":
        if "vproblem" not in cache:
            cache["vproblem"] = variance_problem(sk)
        X, lam = cache["vproblem"]
        for ei, e in enumerate(EPS_GRID):
            t0 = time.perf_counter()
            idx, f = greedy_variance(X, lam, n, e)
            yield ({"formulation": "variance", "eps": e, "rounding": "greedy"}, idx,
                   {"objective": f, "converged": None, "iterations": n, "solver_seconds": time.perf_counter() - t0})
            sol = solve_variance(X, lam, n, eps=e, tol=VARIANCE_TOL, time_limit=SOLVER_TIME_LIMIT)
            info = {"objective": sol.objective, "objective_uniform": sol.objective_uniform,
                    "duality_gap": sol.gap, "rel_gap": sol.gap / max(sol.objective, 1e-300),
                    "iterations": sol.iterations, "converged": sol.converged, "solver_seconds": sol.seconds}
            gen = torch.Generator().manual_seed(base + 10 * ei)
            yield {"formulation": "variance", "eps": e, "rounding": "top"}, round_weights(sol.weights, n, "top"), info
            for j in range(2):
                yield ({"formulation": "variance", "eps": e, "rounding": "sample", "draw": j},
                       round_weights(sol.weights, n, "sample", gen), info)
    elif method == "skmm_paper":
        if "problem" not in cache:
            cache["problem"] = moment_problem(sk)
        for c in C_GRID:
            for j, s in enumerate(draws(BUDGET // len(C_GRID))):
                sol = solve_paper(cache["problem"], n, c=c, seed=s, iters=PAPER_ITERS)
                info = {"objective": sol.objective, "objective_uniform": sol.objective_uniform,
                        "iterations": sol.iterations, "solver_seconds": sol.seconds}
                yield {"c": c, "start": j}, torch.topk(sol.weights, n).indices.sort().values, info
    elif method == "skmm_clustered":
        for K in CLUSTER_GRID:
            if ("km", K) not in cache:
                cache[("km", K)] = kmeans(sk, K, seed)
            for c in C_GRID:
                yield {"K": K, "c": c}, clustered_skmm(sk, n, cache[("km", K)], c), None
    else:
        raise ValueError(method)


def kmeans(X, K, seed, iters=30):
    """Lloyd's k-means with k-means++ seeding on the sketch rows; returns labels (N,)."""
    g = torch.Generator().manual_seed(7 + seed)
    X = X.double()
    C = X[torch.randint(X.shape[0], (1,), generator=g)]
    for _ in range(K - 1):
        d = torch.cdist(X, C).min(1).values.square()
        C = torch.cat([C, X[torch.multinomial(d / d.sum(), 1, generator=g)]])
    for _ in range(iters):
        lab = torch.cdist(X, C).argmin(1)
        C = torch.stack([X[lab == k].mean(0) if (lab == k).any() else C[k] for k in range(K)])
    return torch.cdist(X, C).argmin(1)


def sqrt_allocation(sizes, n):
    """n_k proportional to sqrt(N_k) (capped at N_k; largest remainders): minimises
    sum_k p_k d / n_k, the variance of per-cluster least squares with equal cluster dimension d."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    take = torch.zeros_like(sizes, dtype=torch.long)
    free = sizes > 0
    left = n
    while left > 0:
        w = sizes.sqrt() * free
        q = w / w.sum() * left
        add = torch.minimum(q.floor().long(), (sizes.long() - take))
        if int(add.sum()) == 0:  # hand out the remainder one by one by largest fraction
            for i in torch.argsort(q - q.floor(), descending=True).tolist():
                if left and take[i] < sizes[i]:
                    take[i] += 1
                    left -= 1
            continue
        take += add
        left -= int(add.sum())
        free = take < sizes.long()
    return take


def clustered_skmm(sk, n, lab, c):
    """Cluster-balanced SkMM: k-means clusters of the sketch, sqrt allocation, SkMM in each cluster."""
    K = int(lab.max()) + 1
    sizes = torch.bincount(lab, minlength=K)
    take = sqrt_allocation(sizes, n)
    out = []
    for k in range(K):
        if int(take[k]) == 0:
            continue
        rows = torch.nonzero(lab == k).squeeze(1)
        if int(take[k]) == rows.numel():
            out.append(rows)
            continue
        # the variant this row was defined with (relative, top), pinned against later default changes
        sel = skmm_select(sk[rows], int(take[k]), c=c, weighting="relative", rounding="top",
                          time_limit=SOLVER_TIME_LIMIT)
        out.append(rows[sel.indices])
    return torch.cat(out).sort().values


def run_method(method, sk, n, seed, ridge, cache, keep_all=False):
    """Evaluate the method's candidates, choose by validation MSE; returns (chosen record, all)."""
    t0 = time.perf_counter()
    cands = []
    for hp, idx, info in candidates(method, sk, n, seed, cache):
        assert idx.numel() == n and torch.unique(idx).numel() == n
        fit = ridge.fit(idx)
        cands.append({"hp": hp, "idx": idx, "solver": info, **fit})
    best = min(cands, key=lambda c: c["val_mse"])
    rec = {"method": method, "n": n, "seed": seed, "m": sk.shape[1], "hyperparameters": best["hp"],
           "alpha": best["alpha"], "val_mse": best["val_mse"], "excess_risk": best["excess_risk"],
           "variance_proxy": variance_proxy(sk, best["idx"]), "solver": best["solver"],
           "n_candidates": len(cands), "seconds": time.perf_counter() - t0,
           "clusters_covered": int(torch.unique(ridge.data.lab[best["idx"]]).numel())}
    allc = []
    if keep_all:
        for c in cands:
            allc.append({"method": method, "n": n, "seed": seed, "m": sk.shape[1], "hyperparameters": c["hp"],
                         "alpha": c["alpha"], "val_mse": c["val_mse"], "excess_risk": c["excess_risk"],
                         "variance_proxy": variance_proxy(sk, c["idx"]), "solver": c["solver"]})
    return rec, allc


def run_seed(args):
    seed, n_sweep, m_sweep, m_sweep_n, methods = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = Data(seed)
    ridge = Ridge(data)
    pilot, _ = sketch_matrix(data.X.float(), PILOT_M, seed=seed, device="cpu")
    m = max(8, min(PILOT_M, intrinsic_dimension(pilot)))
    sk, rec = sketch_matrix(data.X.float(), m, seed=seed, device="cpu")
    runs, variants, msweep = [], [], []
    # the full pool as the reference (no selection)
    full = ridge.fit(torch.arange(N))
    runs.append({"method": "full_data", "n": N, "seed": seed, "m": m, "hyperparameters": {},
                 "alpha": full["alpha"], "val_mse": full["val_mse"], "excess_risk": full["excess_risk"],
                 "variance_proxy": None, "solver": None, "n_candidates": 1, "seconds": 0.0,
                 "clusters_covered": K_CLUSTERS})
    for n in n_sweep:
        cache = {}
        for method in methods:
            r, allc = run_method(method, sk, n, seed, ridge, cache, keep_all=(method in SKMM_FAMILIES))
            runs.append(r)
            variants += allc
    families = [f for f in SKMM_FAMILIES if f in methods]
    for mm in m_sweep:
        skm, _ = sketch_matrix(data.X.float(), mm, seed=seed, device="cpu")
        cache = {}
        for fam in families:
            r, _ = run_method(fam, skm, m_sweep_n, seed, ridge, cache)
            msweep.append(r)
    u, _ = run_method("uniform", sk, m_sweep_n, seed, ridge, {})
    msweep.append(u)
    info = {"seed": seed, "m": m, "pilot_intrinsic_dimension": intrinsic_dimension(pilot),
            "cluster_proportions": data.p.tolist(), "cluster_sizes": torch.bincount(data.lab, minlength=K_CLUSTERS).tolist(),
            "signal_variance": data.excess_risk(torch.zeros(R, dtype=torch.float64)),
            "seconds": time.perf_counter() - t0}
    return {"runs": runs, "skmm_variants": variants, "m_sweep": msweep, "seed_info": info}


# ---- statistics and reporting ------------------------------------------------------------------
def ci(vals):
    v = np.asarray(vals, dtype=float)
    k = len(v)
    mean = float(v.mean())
    if k < 2:
        return mean, mean, mean
    t = T975.get(k - 1) or (T975[max(d for d in T975 if d <= k - 1)] if k - 1 < 30 else 1.96)
    h = t * float(v.std(ddof=1)) / math.sqrt(k)
    return mean, mean - h, mean + h


SKMM_ALL = ("skmm", "skmm_variance", "skmm_paper", "skmm_clustered")


def variant_key(hp):
    if hp.get("formulation") == "variance":
        return f"variance, eps={hp['eps']}, {hp['rounding']}"
    return f"hinge, c={hp['c']}, {hp['weighting']}, {hp['rounding']}"


def write_md(res, path):
    runs, seeds, n_sweep = res["runs"], res["config"]["seeds"], res["config"]["n_sweep"]
    methods = res["config"].get("methods", METHODS)
    L = []
    cfg = res["config"]
    L.append("# Synthetic data selection: coreset ridge regression on a Gaussian mixture\n")
    L.append(f"Date {res['date']}; machine: {res['machine']}; git {res['git_commit']}; "
             f"wall time {res['wall_seconds']:.0f} s; {len(seeds)} seeds.\n")
    L.append(f"Generator: N = {cfg['N']}, r = {cfg['r']}, {cfg['K']} clusters (Dirichlet(1) "
             f"proportions), per-cluster rank {cfg['d']} covariance (l_j = 1/j) + isotropic "
             f"{cfg['s_iso']}, cluster means at norm {cfg['sep']}, theta* ~ N(0, I), noise sigma = "
             f"{cfg['noise']}; validation: a separate draw of {cfg['n_val']}; excess risk against the "
             "exact population second moment.  See the script's docstring for the protocol "
             f"(every method: {cfg['budget']} candidate coresets per (seed, n) chosen with ridge "
             "alpha by validation MSE).\n")
    ms = sorted({si["m"] for si in res["seed_info"]})
    L.append(f"Sketch: sparse-sign, m = intrinsic_dimension(pilot sketch, m = {PILOT_M}) per seed: "
             f"m in {ms}.  Full-data ridge (all N, validation alpha): excess risk "
             + "%.4g [%.4g, %.4g]" % ci([r["excess_risk"] for r in runs if r["method"] == "full_data"])
             + f"; signal variance theta*^T Sigma theta* ~ "
             f"{np.mean([si['signal_variance'] for si in res['seed_info']]):.3g}.\n")
    L.append("`skmm`: the squared-hinge formulation (the paper's moment matching); `skmm_variance`: the "
             "`variance` formulation (the variance proxy tr(Sigma~ (Sigma~_S + eps I)^{-1}) minimised "
             "directly, greedy or relaxed + rounding); `skmm_paper`: the original code's procedure.\n")
    L.append("## Test excess risk ||theta_S - theta*||_Sigma^2 (mean [95% CI] over seeds; best mean per n in bold)\n")
    L.append("| method | " + " | ".join(f"n = {n}" for n in n_sweep) + " | geo-mean over n |")
    L.append("|---|" + "---|" * (len(n_sweep) + 1))
    table = {}
    for meth in methods:
        for n in n_sweep:
            table[meth, n] = ci([r["excess_risk"] for r in runs if r["method"] == meth and r["n"] == n])
    geo = {meth: float(np.exp(np.mean([np.log(table[meth, n][0]) for n in n_sweep]))) for meth in methods}
    for meth in methods:
        cells = []
        for n in n_sweep:
            mean, lo, hi = table[meth, n]
            best = min(methods, key=lambda mm: table[mm, n][0])
            s = f"{mean:.4g} [{lo:.3g}, {hi:.3g}]"
            cells.append(f"**{s}**" if best == meth else s)
        g = f"{geo[meth]:.4g}"
        cells.append(f"**{g}**" if min(geo, key=geo.get) == meth else g)
        L.append(f"| {meth} | " + " | ".join(cells) + " |")
    L.append("")
    win = min(geo, key=geo.get)
    others = [mm for mm in methods if mm not in SKMM_ALL]
    L.append(f"Target (SkMM has the lowest mean excess risk over the sweep): "
             f"**{'met' if win in SKMM_ALL else 'not met'}** -- lowest geometric mean over n: {win} "
             f"({geo[win]:.4g}); " + "; ".join(f"{mm} {geo[mm]:.4g}" for mm in methods if mm in SKMM_ALL)
             + f"; best other {min(others, key=geo.get)} {min(geo[mm] for mm in others):.4g}; "
             f"uniform {geo['uniform']:.4g}.\n")
    L.append("Each SkMM formulation against the best non-SkMM method per n (ratio of means; < 1: SkMM better):\n")
    fams = [mm for mm in methods if mm in SKMM_ALL]
    L.append("| n | best other | " + " | ".join(f"{f} / best other (CI overlap)" for f in fams) + " |")
    L.append("|---|---|" + "---|" * len(fams))
    for n in n_sweep:
        bo = min(others, key=lambda mm: table[mm, n][0])
        o = table[bo, n]
        cells = []
        for f in fams:
            s_ = table[f, n]
            overlap = not (s_[2] < o[1] or o[2] < s_[1])
            cells.append(f"{s_[0] / o[0]:.3f} ({'yes' if overlap else 'no'})")
        L.append(f"| {n} | {bo} | " + " | ".join(cells) + " |")
    L.append("")
    # variance proxy and cluster coverage
    L.append("## Variance proxy tr(Sigma~ Sigma~_S^+) on the sketch (mean over seeds) and clusters covered (of 8)\n")
    L.append("| method | " + " | ".join(f"n = {n}" for n in n_sweep) + " |")
    L.append("|---|" + "---|" * len(n_sweep))
    for meth in methods:
        cells = []
        for n in n_sweep:
            rr = [r for r in runs if r["method"] == meth and r["n"] == n]
            cells.append(f"{np.mean([r['variance_proxy'] for r in rr]):.3g} / "
                         f"{np.mean([r['clusters_covered'] for r in rr]):.2f}")
        L.append(f"| {meth} | " + " | ".join(cells) + " |")
    L.append("")
    # skmm variants (hinge and variance formulations ranked together)
    var = res["skmm_variants"]
    L.append("## SkMM variants\n")
    L.append("Which variant validation chose (count over seeds x n):\n")
    for fam in [f for f in SKMM_FAMILIES if f in methods]:
        counts = {}
        for r in runs:
            if r["method"] == fam:
                counts[variant_key(r["hyperparameters"])] = counts.get(variant_key(r["hyperparameters"]), 0) + 1
        L.append(f"* {fam}: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    L.append("")
    keys = sorted({variant_key(v["hyperparameters"]) for v in var})
    # mean validation rank among all the variants of the same (seed, n): the criterion for the default
    rank = {k: [] for k in keys}
    for seed in seeds:
        for n in n_sweep:
            vv = sorted([v for v in var if v["seed"] == seed and v["n"] == n], key=lambda v: v["val_mse"])
            for i, v in enumerate(vv):
                rank[variant_key(v["hyperparameters"])].append(i + 1)
    default = min(keys, key=lambda k: np.mean(rank[k]))
    per = len(var) // max(1, len(seeds) * len(n_sweep))
    L.append(f"Default by validation (lowest mean validation-MSE rank among the {per} candidates of both "
             f"formulations, over seeds x n): **{default}**.\n")
    L.append("Each fixed variant (alpha still chosen on validation): test excess risk, mean over seeds; "
             "mean validation rank; solver convergence (hinge: certified gap <= 1e-4 f(uniform); variance, "
             f"relaxed: Frank-Wolfe gap <= {VARIANCE_TOL} f(s); both within {SOLVER_TIME_LIMIT} s; greedy: "
             "no relaxed solve) and mean iterations.\n")
    L.append("| variant | " + " | ".join(f"n = {n}" for n in n_sweep) + " | val rank | converged | iters |")
    L.append("|---|" + "---|" * (len(n_sweep) + 3))
    for k in sorted(keys, key=lambda k: np.mean(rank[k])):
        vk = [v for v in var if variant_key(v["hyperparameters"]) == k]
        cells = [f"{np.mean([v['excess_risk'] for v in vk if v['n'] == n]):.4g}" for n in n_sweep]
        cv = [v["solver"]["converged"] for v in vk if v["solver"]["converged"] is not None]
        conv = f"{np.mean(cv):.0%}" if cv else "-"
        it = np.mean([v["solver"]["iterations"] for v in vk])
        L.append(f"| {k} | " + " | ".join(cells) + f" | {np.mean(rank[k]):.2f} | {conv} | {it:.0f} |")
    L.append("")
    # m sweep
    L.append(f"## m sweep (n = {res['config']['m_sweep_n']}): SkMM test excess risk against the sketch size\n")
    L.append("| m | formulation | excess risk mean [95% CI] | variance proxy | chosen variants |")
    L.append("|---|---|---|---|---|")
    for mm in res["config"]["m_sweep"]:
        for fam in [f for f in SKMM_FAMILIES if f in methods]:
            rr = [r for r in res["m_sweep"] if r["method"] == fam and r["m"] == mm]
            mean, lo, hi = ci([r["excess_risk"] for r in rr])
            ch = {}
            for r in rr:
                ch[variant_key(r["hyperparameters"])] = ch.get(variant_key(r["hyperparameters"]), 0) + 1
            L.append(f"| {mm} | {fam} | {mean:.4g} [{lo:.3g}, {hi:.3g}] | {np.mean([r['variance_proxy'] for r in rr]):.3g} | "
                     + "; ".join(f"{k} x{v}" for k, v in sorted(ch.items(), key=lambda kv: -kv[1])) + " |")
    uu = [r for r in res["m_sweep"] if r["method"] == "uniform"]
    L.append(f"| | uniform (reference) | " + "%.4g [%.3g, %.3g]" % ci([r["excess_risk"] for r in uu]) + " | | |")
    L.append("")
    hinge = {id(v["solver"]): v["solver"] for v in var if variant_key(v["hyperparameters"]).startswith("hinge")}
    fw = {id(v["solver"]): v["solver"] for v in var
          if v["hyperparameters"].get("rounding") in ("top", "sample") and v["hyperparameters"].get("formulation") == "variance"}
    for name, sv in (("hinge", list(hinge.values())), ("variance (Frank-Wolfe)", list(fw.values()))):
        if sv:
            L.append(f"Solver, {name}: {len(sv)} solves in the n sweep, "
                     f"{np.mean([s['converged'] for s in sv]):.1%} converged to the certified tolerance; "
                     f"median relative gap {np.median([s['rel_gap'] for s in sv]):.2e}, max {max(s['rel_gap'] for s in sv):.2e}; "
                     f"max solve time {max(s['solver_seconds'] for s in sv):.2f} s.\n")
    with open(path, "w") as f:
        f.write("\n".join(L))
    return default, table, geo


def plot(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_sweep = res["config"]["n_sweep"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for meth in res["config"].get("methods", METHODS):
        vals = [[r["excess_risk"] for r in res["runs"] if r["method"] == meth and r["n"] == n] for n in n_sweep]
        st = [ci(v) for v in vals]
        mean = [s[0] for s in st]
        lo = [max(s[1], min(v)) for s, v in zip(st, vals)]  # log axis: clip the band at the lowest seed
        hi = [s[2] for s in st]
        lw = 2.5 if meth in SKMM_ALL else 1.2
        line, = ax.plot(n_sweep, mean, marker="o", lw=lw, label=meth)
        ax.fill_between(n_sweep, lo, hi, color=line.get_color(), alpha=0.15)
    full = np.mean([r["excess_risk"] for r in res["runs"] if r["method"] == "full_data"])
    ax.axhline(full, color="k", ls=":", lw=1, label=f"full data (N = {N})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("coreset size n")
    ax.set_ylabel(r"excess risk $\|\theta_S - \theta^*\|_\Sigma^2$")
    ax.set_title(f"GMM ridge regression, N={N}, r={R}: mean, 95% CI, {len(res['config']['seeds'])} seeds", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "synthetic_excess_risk.png"), dpi=130)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ms = res["config"]["m_sweep"]
    for fam in [f for f in SKMM_FAMILIES if f in res["config"].get("methods", METHODS)]:
        vals = [[r["excess_risk"] for r in res["m_sweep"] if r["method"] == fam and r["m"] == mm] for mm in ms]
        st = [ci(v) for v in vals]
        line, = ax.plot(ms, [s[0] for s in st], marker="o", lw=2, label=f"{fam} (validation-chosen variant)")
        ax.fill_between(ms, [max(s[1], min(v)) for s, v in zip(st, vals)], [s[2] for s in st],
                        color=line.get_color(), alpha=0.2)
    uv = [r["excess_risk"] for r in res["m_sweep"] if r["method"] == "uniform"]
    u = ci(uv)
    ax.axhline(u[0], color="gray", ls="--", label="uniform")
    ax.axhspan(max(u[1], min(uv)), u[2], color="gray", alpha=0.1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sketch size m")
    ax.set_ylabel("excess risk")
    ax.set_title(f"m sweep at n = {res['config']['m_sweep_n']}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "synthetic_m_sweep.png"), dpi=130)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="results/selection")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 n values, 3 m values (smoke run)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--replot", action="store_true", help="redo the .md and plots from OUT/synthetic.json")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {METHODS + EXTRA_METHODS} (uniform is always run)")
    a = ap.parse_args(argv)
    if a.replot:
        with open(os.path.join(a.out, "synthetic.json")) as f:
            res = json.load(f)
        write_md(res, os.path.join(a.out, "synthetic.md"))
        plot(res, a.out)
        return
    seeds = list(range(2 if a.quick else a.seeds))
    n_sweep = [40, 160, 640] if a.quick else N_SWEEP
    m_sweep = [16, 64, 256] if a.quick else M_SWEEP
    os.makedirs(a.out, exist_ok=True)
    t0 = time.perf_counter()
    methods = [x for x in a.methods.split(",") if x]
    bad = [x for x in methods if x not in METHODS + EXTRA_METHODS]
    if bad:
        ap.error(f"unknown methods {bad}")
    if "uniform" not in methods:
        methods = ["uniform"] + methods
    jobs = [(s, n_sweep, m_sweep, M_SWEEP_N, methods) for s in seeds]
    results = []
    if a.workers > 1:
        with ProcessPoolExecutor(a.workers) as ex:
            for r in ex.map(run_seed, jobs):
                print(f"seed {r['seed_info']['seed']}: m = {r['seed_info']['m']}, {r['seed_info']['seconds']:.0f} s", flush=True)
                results.append(r)
    else:
        for j in jobs:
            r = run_seed(j)
            print(f"seed {r['seed_info']['seed']}: m = {r['seed_info']['m']}, {r['seed_info']['seconds']:.0f} s", flush=True)
            results.append(r)
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "git_commit": git_commit(),
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
        "wall_seconds": time.perf_counter() - t0,
        "config": {"N": N, "r": R, "K": K_CLUSTERS, "d": D_CLUSTER, "sep": SEP, "s_iso": S_ISO, "noise": NOISE,
                   "n_val": N_VAL, "seeds": seeds, "methods": methods, "eps_grid": EPS_GRID,
                   "variance_tol": VARIANCE_TOL, "n_sweep": n_sweep, "m_sweep": m_sweep,
                   "m_sweep_n": M_SWEEP_N, "pilot_m": PILOT_M, "budget": BUDGET, "alpha_grid": ALPHA_GRID.tolist(),
                   "alpha_grid_unit": "times the mean squared row norm of the pool", "c_grid": C_GRID,
                   "weightings": WEIGHTINGS, "roundings": ROUNDINGS, "solver_tol": SOLVER_TOL,
                   "solver_time_limit_s": SOLVER_TIME_LIMIT, "sketch": "sparse-sign, k = 8", "quick": a.quick},
        "seed_info": [r["seed_info"] for r in results],
        "runs": [x for r in results for x in r["runs"]],
        "skmm_variants": [x for r in results for x in r["skmm_variants"]],
        "m_sweep": [x for r in results for x in r["m_sweep"]],
    }
    default, table, geo = write_md(res, os.path.join(a.out, "synthetic.md"))
    res["skmm_default_by_validation"] = default
    with open(os.path.join(a.out, "synthetic.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(res, a.out)
    print(open(os.path.join(a.out, "synthetic.md")).read())


if __name__ == "__main__":
    main()
