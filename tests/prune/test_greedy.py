"""Elimination orders: greedy structured OBS and head-similarity, against float64 brute force."""

import itertools

import pytest
import torch
from prune_models import FFN, HEAD_DIM, HEADS, KV_HEADS, LAYERS, make_model
from test_criteria import batches, capture

from sketchprune.prune import allocate, collect_statistics, get_adapter, score_model
from sketchprune.prune.allocation import removal_plan
from sketchprune.prune.criteria import head_gram
from sketchprune.prune.greedy import greedy_obs, order_scores, similarity_elimination

F64 = torch.float64


def problem(d, n, width=1, t=None, rank=None, seed=0):
    """W (d, n*width) and samples X (t, n*width) with correlated columns; H = X^T X / t."""
    g = torch.Generator().manual_seed(seed)
    m = n * width
    t = t or 4 * m
    rank = rank or max(2, m // 2)
    X = torch.randn(t, rank, generator=g, dtype=F64) @ torch.randn(rank, m, generator=g, dtype=F64)
    X += 0.3 * torch.randn(t, m, generator=g, dtype=F64) * torch.rand(m, generator=g, dtype=F64)
    W = torch.randn(d, m, generator=g, dtype=F64) * (0.2 + torch.rand(m, generator=g, dtype=F64))
    return W, X, X.T @ X / t


def damped(H, damp):
    return H + damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=F64)


def cols(units, width):
    return [u * width + k for u in units for k in range(width)]


def error(W, H, removed, width=1):
    """min_V tr((W - V P_K) H (W - V P_K)^T) for the kept columns K (closed form, float64)."""
    R = cols(sorted(removed), width)
    K = [c for c in range(W.shape[1]) if c not in R]
    tot = torch.trace(W @ H @ W.T)
    if not K:
        return float(tot)
    HK = H[:, K]
    return float(tot - torch.trace(W @ HK @ torch.linalg.solve(H[K][:, K], HK.T @ W.T)))


def lstsq_error(W, X, removed, width=1):
    """The same error from the samples: least squares of X W^T on the kept columns of X."""
    R = cols(sorted(removed), width)
    K = [c for c in range(W.shape[1]) if c not in R]
    Y = X @ W.T
    if not K:
        return float(Y.square().sum() / X.shape[0])
    V = torch.linalg.lstsq(X[:, K], Y).solution
    return float((Y - X[:, K] @ V).square().sum() / X.shape[0])


def brute_greedy(W, H, width, n_remove, group_of=None, quota=None):
    """Reference greedy: every step tries every admissible unit with the exact error."""
    n = W.shape[1] // width
    removed, errs = [], []
    left = None if quota is None else list(quota)
    for _ in range(n_remove):
        cand = [u for u in range(n) if u not in removed and (left is None or left[group_of[u]] > 0)]
        e = {u: error(W, H, removed + [u], width) for u in cand}
        u = min(cand, key=lambda k: (e[k], k))
        removed.append(u)
        errs.append(e[u])
        if left is not None:
            left[group_of[u]] -= 1
    return removed, errs


@pytest.mark.parametrize("width,d,n", [(1, 7, 10), (3, 5, 6)])
def test_greedy_equals_brute_force_greedy(width, d, n):
    for seed in range(3):
        W, X, H = problem(d, n, width, seed=seed)
        damp = 1e-2
        order, incs, rest, rest_costs, errs = greedy_obs(W, H, width=width, n_remove=n - 1, damp=damp)
        ref, ref_errs = brute_greedy(W, damped(H, damp), width, n - 1)
        assert order == ref
        torch.testing.assert_close(torch.tensor(errs, dtype=F64), torch.tensor(ref_errs, dtype=F64),
                                   rtol=1e-8, atol=1e-10)
        # increments are the error differences; the survivor's increment is its removal cost
        torch.testing.assert_close(torch.tensor(incs, dtype=F64), torch.diff(torch.tensor([0.0] + ref_errs, dtype=F64)),
                                   rtol=1e-7, atol=1e-9)
        assert rest == [u for u in range(n) if u not in ref]
        last = error(W, damped(H, damp), range(n), width) - ref_errs[-1]
        assert rest_costs[0] == pytest.approx(last, rel=1e-7)


def test_greedy_error_is_the_lstsq_error_and_first_step_is_optimal():
    W, X, H = problem(6, 12, t=60, seed=5)
    order, _, _, _, errs = greedy_obs(W, H, n_remove=6, damp=0.0)
    for k in range(1, 7):
        assert errs[k - 1] == pytest.approx(lstsq_error(W, X, order[:k]), rel=1e-9, abs=1e-12)
    assert all(b >= a - 1e-12 for a, b in zip(errs, errs[1:]))        # monotone
    best_single = min(range(12), key=lambda u: lstsq_error(W, X, [u]))
    assert order[0] == best_single
    # for two removals, greedy is within the brute-force optimum's reach on this instance
    best_pair = min(lstsq_error(W, X, list(p)) for p in itertools.combinations(range(12), 2))
    assert errs[1] >= best_pair - 1e-12


def test_greedy_beats_single_shot_heuristics():
    """Greedy's set (with exact compensation) is no worse than magnitude / energy / OBS-once picks."""
    for seed in range(2):
        W, X, H = problem(16, 40, t=200, rank=12, seed=10 + seed)
        order, _, _, _, errs = greedy_obs(W, H, damp=0.0, n_remove=30)
        Hi = torch.linalg.inv(H)
        heuristics = {
            "magnitude": W.square().sum(0),
            "energy": W.square().sum(0) * H.diagonal(),
            "obs-once": W.square().sum(0) / Hi.diagonal(),
        }
        for k in (5, 15, 30):
            g = lstsq_error(W, X, order[:k])
            assert g == pytest.approx(errs[k - 1], rel=1e-8)
            for name, s in heuristics.items():
                other = torch.argsort(s)[:k].tolist()
                assert g <= lstsq_error(W, X, other) * (1 + 1e-9), (seed, k, name)


def test_greedy_quota_matches_constrained_brute_force():
    W, X, H = problem(6, 9, width=2, seed=2)
    group_of = torch.arange(9) // 3
    quota = torch.tensor([1, 2, 1])
    order, _, rest, _, errs = greedy_obs(W, H, width=2, n_remove=4, group_of=group_of, quota=quota)
    ref, ref_errs = brute_greedy(W, damped(H, 1e-2), 2, 4, group_of.tolist(), quota.tolist())
    assert order == ref and torch.bincount(group_of[order], minlength=3).tolist() == [1, 2, 1]
    torch.testing.assert_close(torch.tensor(errs, dtype=F64), torch.tensor(ref_errs, dtype=F64), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="quotas"):
        greedy_obs(W, H, width=2, n_remove=3, group_of=group_of, quota=quota)
    with pytest.raises(ValueError, match="at most its group"):
        greedy_obs(W, H, width=2, n_remove=4, group_of=group_of, quota=torch.tensor([4, 0, 0]))


def test_greedy_block_reports_the_joint_error():
    W, X, H = problem(8, 30, seed=3)
    exact = greedy_obs(W, H, n_remove=12)
    for block in (3, 5, 12):
        order, _, rest, _, errs = greedy_obs(W, H, n_remove=12, block=block)
        assert len(order) == 12 and sorted(order + rest) == list(range(30))
        assert len(errs) == -(-12 // block)
        assert errs[-1] == pytest.approx(error(W, damped(H, 1e-2), order), rel=1e-8)
        assert errs[-1] >= exact[4][-1] * (1 - 1e-9) or block == 1   # blocks ignore interactions
    assert greedy_obs(W, H, n_remove=12, block=1)[0] == exact[0]
    with pytest.raises(ValueError, match="block"):
        greedy_obs(W, H, block=0)


def test_greedy_rejects_bad_shapes_and_counts():
    W, _, H = problem(4, 6, seed=0)
    with pytest.raises(ValueError, match="greedy_obs got"):
        greedy_obs(W, H[:5, :5])
    with pytest.raises(ValueError, match="cannot remove"):
        greedy_obs(W, H, n_remove=7)
    with pytest.raises(ValueError, match="positive definite"):
        greedy_obs(W, -torch.eye(6, dtype=F64), damp=0.0)


def test_order_scores_strict_and_scaled():
    s = order_scores(6, [4, 1, 5], [0.0, 0.0, 2.0], rest=[0, 2, 3], rest_costs=[9.0, 1.0, 3.0])
    assert torch.argsort(s).tolist() == [4, 1, 5, 2, 3, 0]
    assert s[5] == 2.0 and s[2] > 2.0 and s[3] == 3.0 and s[0] == 9.0 and s[4] == 0.0 and 0 < s[1] < 1e-300
    with pytest.raises(RuntimeError, match="every unit"):
        order_scores(3, [0, 1], [1.0, 2.0])


def brute_similarity(D, n_remove=None, group_of=None, quota=None):
    """Reference elimination with explicit loops over pairs."""
    n = D.shape[0]
    n_remove = n if n_remove is None else n_remove
    alive = list(range(n))
    left = None if quota is None else list(quota)
    order = []
    while alive:
        def red(i):
            others = [abs(float(D[i, j] + D[j, i]) / 2) / (float(D[i, i]) * float(D[j, j])) ** 0.5
                      for j in alive if j != i]
            return max(others) if others else 0.0
        constrained = left is not None and len(order) < n_remove
        cand = [i for i in alive if not constrained or left[group_of[i]] > 0]
        best = max(cand, key=lambda i: (red(i), -float(D[i, i]), i))
        order.append(best)
        alive.remove(best)
        if constrained:
            left[group_of[best]] -= 1
    return order


def test_head_gram_and_similarity_elimination_equal_direct():
    model = make_model("llama")
    data = batches()
    stats = collect_statistics(model, data, what={"o_in": "full"}, progress=False)
    ref = capture(model, data)
    ad = get_adapter(model)
    g = HEADS // KV_HEADS
    for i in (0, 3):
        z, O = ref[i]["o_in"], ad.attention(ad.layers(model)[i]).o.weight.detach()
        U = torch.stack([z[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] @ O[:, h * HEAD_DIM:(h + 1) * HEAD_DIM].T
                         for h in range(HEADS)])                                 # (H, T, d) u_h per token
        direct = torch.einsum("itd,jtd->ij", U, U) / z.shape[0]
        D = head_gram(O.double(), stats[i].get("o_in").second_moment(), HEAD_DIM)
        torch.testing.assert_close(D, direct)
        Ug = U.reshape(KV_HEADS, g, *U.shape[1:]).sum(1)
        torch.testing.assert_close(head_gram(O.double(), stats[i].get("o_in").second_moment(), g * HEAD_DIM),
                                   torch.einsum("itd,jtd->ij", Ug, Ug) / z.shape[0])
        order, incs = similarity_elimination(D)
        assert order == brute_similarity(D)
        group_of = (torch.arange(HEADS) // g).tolist()
        order_q, _ = similarity_elimination(D, 4, torch.tensor(group_of), torch.tensor([2, 2]))
        assert order_q == brute_similarity(D, 4, group_of, [2, 2])
        assert sorted(group_of[h] for h in order_q[:4]) == [0, 0, 1, 1]


def test_similarity_keeps_one_of_a_duplicated_pair():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(5, 50, generator=g, dtype=F64)
    U[3] = -2.0 * U[1] + 1e-3 * torch.randn(50, generator=g, dtype=F64)    # head 3 ~ a multiple of head 1
    D = U @ U.T
    order, incs = similarity_elimination(D)
    assert order[0] == 1 and 3 not in order[:4] or order[0] == 3 and 1 not in order[:4]
    assert order[0] == 1          # the lower-energy member goes, its partner stays
    assert incs[0] < 1e-5


def test_similarity_pair_decided_by_energy_not_by_rounding_asymmetry():
    """A Gram matrix is symmetric only up to rounding: of the most similar pair the lower-energy
    member must go even when the higher-energy one's off-diagonal entry is larger by a few ulps."""
    g = torch.Generator().manual_seed(1)
    U = torch.randn(5, 50, generator=g, dtype=F64)
    U[3] = 2.0 * U[1] + 0.3 * torch.randn(50, generator=g, dtype=F64)     # 3 ~ 2 x 1: 4x the energy
    D = U @ U.T
    D = (D + D.T) / 2
    D[3, 1] = D[3, 1] * (1 + 4e-16)          # row 3's redundancy a few ulps above row 1's
    assert float(D[3, 1]) > float(D[1, 3]) and float(D[3, 3]) > float(D[1, 1])
    order, _ = similarity_elimination(D)
    assert order[0] == 1 and order == brute_similarity(D)
    assert similarity_elimination(D.T.contiguous())[0] == order   # and the transpose gives the same


@pytest.mark.parametrize("head_mode", ["query", "group"])
@pytest.mark.parametrize("name", ["greedy", "head-similarity"])
def test_allocation_drops_exactly_the_greedy_picks(name, head_mode):
    model = make_model("llama", seed=2)
    stats = collect_statistics(model, batches(), what={"down_in": "full", "o_in": "full"}, progress=False)
    rp = removal_plan(model, 0.3, head_mode=head_mode)
    sc = score_model(model, name, stats, removal=rp, head_mode=head_mode, layers=[0, LAYERS - 1])
    al = allocate(model, sc.ffn, sc.heads, 0.3, head_mode=head_mode)
    ad = get_adapter(model)
    g = HEADS // KV_HEADS
    for i in (0, LAYERS - 1):
        rem, plan = rp[i], al.layers[i]
        layer = ad.layers(model)[i]
        assert FFN - plan.ffn_keep.numel() == rem.ffn
        dropped = sorted(set(range(FFN)) - set(plan.ffn_keep.tolist()))
        if name == "greedy":
            W, H = ad.ffn(layer).down.weight, stats[i].get("down_in").second_moment()
            assert dropped == sorted(greedy_obs(W, H, n_remove=rem.ffn)[0])
            W, H = ad.attention(layer).o.weight, stats[i].get("o_in").second_moment()
            if head_mode == "query":
                ref = greedy_obs(W, H, width=HEAD_DIM, n_remove=rem.q_per_group * KV_HEADS,
                                 group_of=torch.arange(HEADS) // g, quota=torch.full((KV_HEADS,), rem.q_per_group))[0]
                assert sorted(set(range(HEADS)) - set(plan.heads.indices)) == sorted(ref)
            else:
                ref = greedy_obs(W, H, width=g * HEAD_DIM, n_remove=rem.groups)[0]
                assert sorted(set(range(KV_HEADS)) - set(plan.heads.indices)) == sorted(ref)
        else:
            # FFN: sigma's score
            assert torch.equal(sc.ffn[i], score_model(model, "sigma", stats, layers=[i]).ffn[i])
    # no removal counts: the order covers every unit and the allocation is still valid
    full = score_model(model, name, stats, head_mode=head_mode, layers=[1])
    for i in [1]:
        assert torch.unique(full.ffn[i]).numel() == FFN or name == "head-similarity"
        assert torch.isfinite(full.heads[i]).all() and (full.heads[i] >= 0).all()


def test_greedy_criterion_options_and_smollm_layout():
    model = make_model("llama", hidden_size=72, num_attention_heads=9, num_key_value_heads=3, head_dim=8)
    stats = collect_statistics(model, batches(n=2), what={"down_in": "full", "o_in": "full"}, progress=False)
    rp = removal_plan(model, 0.35)
    a = score_model(model, "greedy", stats, removal=rp, layers=[1])
    b = score_model(model, "greedy", stats, removal=rp, layers=[1], options={"block": 4})
    al = allocate(model, a.ffn, a.heads, 0.35)  # only layer 1
    plan = al.layers[1]
    assert plan.q_heads_kept % 3 == 0 and FFN - plan.ffn_keep.numel() == rp[1].ffn
    lowest = lambda s, k: set(torch.argsort(s)[:k].tolist())
    overlap = len(lowest(a.ffn[1], rp[1].ffn) & lowest(b.ffn[1], rp[1].ffn))
    assert overlap >= 0.7 * rp[1].ffn           # blocks change few picks on this layer
    with pytest.raises(ValueError, match="head_mode"):
        score_model(model, "greedy", stats, removal=rp, head_mode="group")


def test_greedy_given_inverse_is_not_modified():
    from sketchprune.prune.greedy import _damped_inverse
    W, _, H = problem(5, 12, seed=4)
    Hi = _damped_inverse(H, 1e-2)
    Hi0 = Hi.clone()
    a = greedy_obs(W, H, n_remove=5)
    b = greedy_obs(W, H, n_remove=5, h_inverse=Hi)
    assert a[0] == b[0] and torch.equal(Hi, Hi0)
    torch.testing.assert_close(torch.tensor(a[4], dtype=F64), torch.tensor(b[4], dtype=F64))
    with pytest.raises(ValueError, match="h_inverse"):
        greedy_obs(W, H, h_inverse=Hi[:4, :4])


def test_lazy_channel_updates_equal_brute_force_across_flushes():
    from sketchprune.prune.greedy import _damped_inverse, _greedy_channels_lazy
    W, _, H = problem(6, 14, seed=7)
    ref, ref_errs = brute_greedy(W, damped(H, 1e-2), 1, 12)
    for every in (1, 3, 5, 64):      # flushes (and compactions) inside the run, or none
        order, incs, rest, rest_costs, errs = _greedy_channels_lazy(W.clone(), _damped_inverse(H, 1e-2), 12,
                                                                    None, None, flush_every=every)
        assert order == ref and sorted(rest) == sorted(set(range(14)) - set(ref))
        torch.testing.assert_close(torch.tensor(errs, dtype=F64), torch.tensor(ref_errs, dtype=F64),
                                   rtol=1e-8, atol=1e-10)
        diffs = torch.diff(torch.tensor([0.0] + ref_errs, dtype=F64))
        torch.testing.assert_close(torch.tensor(incs, dtype=F64), diffs, rtol=1e-7, atol=1e-9)
    # quotas on channels go through the same path
    group_of = torch.arange(14) % 2
    order, *_ = greedy_obs(W, H, n_remove=6, group_of=group_of, quota=torch.tensor([4, 2]))
    ref, _ = brute_greedy(W, damped(H, 1e-2), 1, 6, group_of.tolist(), [4, 2])
    assert order == ref


@pytest.mark.parametrize("quota", [False, True])
def test_greedy_channels_report_a_lost_pivot(quota):
    """The channel greedy reads its pivots back once per flush (no host read per step on a GPU):
    a non-positive pivot -- here from an indefinite inverse handed in -- is still an error, never
    a result."""
    n = 50
    kw = dict(group_of=torch.arange(n) % 2, quota=torch.tensor([6, 4])) if quota else {}
    with pytest.raises(RuntimeError, match="lost positive definiteness"):
        greedy_obs(torch.randn(8, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64), n_remove=10,
                   h_inverse=-torch.eye(n, dtype=torch.float64), **kw)
    if quota:       # (with quotas a NaN cost sorts last and its unit is never picked)
        return
    Hi = torch.eye(n, dtype=torch.float64)
    Hi[:, 7] = Hi[7, :] = float("nan")                  # a NaN pivot (picked: argmin meets NaN first) fails too
    with pytest.raises(RuntimeError, match="lost positive definiteness"):
        greedy_obs(torch.ones(8, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64), n_remove=10,
                   h_inverse=Hi, **kw)
