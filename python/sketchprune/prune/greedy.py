"""Elimination orders: greedy structured OBS and head-similarity redundancy.

Both criteria choose units *jointly* (what one removal costs depends on what was removed
before), so they produce an elimination order; :func:`order_scores` turns it into scores that
the allocation's "drop the lowest" reproduces.

Greedy structured OBS (``greedy``)
----------------------------------
A layer's second matrix ``W`` (d x n columns: down_proj's columns are FFN channels, o_proj's
``head_dim``-wide column blocks are heads) reads inputs ``x`` with second moment
``H = E[x x^T]``.  Removing a set ``R`` of column blocks and re-fitting the kept columns ``K`` by
least squares, ``min_V E||W x - V x_K||^2``, costs ``tr(W_R ((H^-1)_RR)^-1 W_R^T)``.  The greedy
removes one unit at a time, the one whose removal increases that error least given the ones
already gone.  With ``W`` compensated after every removal (``W <- W - W_R (Hi_RR)^-1 Hi_R:``)
and ``Hi = H^-1`` downdated by the Schur complement (``Hi <- Hi - Hi_:R (Hi_RR)^-1 Hi_R:``, rank
one for channels, rank ``head_dim`` for heads), the increment of removing unit ``j`` is
``tr(W_j (Hi_jj)^-1 W_j^T)`` -- for a channel ``||W[:, j]||^2 / Hi[j, j]``.  ``H`` is damped by
``damp * mean(diag H)`` (default ``1e-2``).  All float64 on the weights' device.

Cost.  For channels the exact greedy applies the rank-one downdates lazily: the last ``k`` (64)
are kept as factors, ``Hi - U U^T`` and ``W - P U^T``, the costs' ingredients (``diag Hi`` and the
column norms of ``W``) are updated from them in ``O(d n + n k)`` per step, and every 64 steps
the factors are applied as one matrix product -- so a step reads ``W`` once instead of writing
all of ``Hi``.  Arrays are compacted to the surviving units whenever an eighth of them has gone.
Heads (``head_dim``-wide blocks; few steps) use the eager block update.

``block`` > 1 removes the ``block`` cheapest units of a step together (one rank-``block``
downdate, eagerly): fewer steps at the price of ignoring the interactions inside a block.
``block=1`` is the exact greedy.

Head-similarity (``head-similarity``)
-------------------------------------
Head ``h`` adds ``u_h = O_h z_h`` to the block output.  ``D_ij = E[u_i^T u_j] =
tr(O_i^T O_j E[z_j z_i^T])`` and ``c_ij = |D_ij| / sqrt(D_ii D_jj)``.  The best multiple of
``u_j`` explains the fraction ``c_ij^2`` of ``u_i``'s energy, so a head with a large ``c_ij`` to
a surviving head is redundant (the sign does not matter: a re-fit rescales ``u_j`` either way).
Elimination: repeatedly take the surviving head with the largest redundancy
``r_i = max_{j alive, j != i} c_ij``; within the most similar pair (equal ``r``) the one with the
smaller energy ``D_ii`` goes, its partner stays.  The increment recorded is ``r_i``'s
complement ``1 - r_i``.

Constraints (``head_mode="query"``): the allocation removes the same number of query heads from
each KV group, so when that number is known (``quota``) both orders only pick, at each step,
among heads whose group still has quota left; the allocation then drops exactly the greedy
picks.  When it is not known the unconstrained order is used and the allocation's per-group
lowest ``r`` are an approximation of the constrained greedy.  In ``head_mode="group"`` the units
are whole KV groups (``group_size * head_dim`` columns) and each of a group's query heads gets the
group's score divided by ``group_size`` (the allocation ranks groups by the sum).
"""

from __future__ import annotations

import math

import torch


def _damped_inverse(H: torch.Tensor, damp: float) -> torch.Tensor:
    """(H + damp * mean(diag H) I)^-1, symmetric, by Cholesky."""
    diag = H.diagonal()
    lam = damp * float(diag.mean()) if float(diag.mean()) > 0 else damp
    Hd = H.clone()
    Hd.diagonal().add_(lam)
    L, info = torch.linalg.cholesky_ex(Hd)
    del Hd
    if int(info) != 0:
        raise ValueError("sketchprune.prune: the input second moment is not positive definite even after damping "
                         f"({damp} x mean diagonal); increase damp")
    Hi = torch.cholesky_inverse(L)
    del L
    return _symmetrize_(Hi)


def _symmetrize_(A: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """A <- (A + A^T) / 2 in place, a pair of blocks at a time (no second n x n array)."""
    n = A.shape[0]
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        D = A[i0:i1, i0:i1]
        D.copy_((D + D.T) * 0.5)
        for j0 in range(i1, n, block):
            j1 = min(n, j0 + block)
            upper, lower = A[i0:i1, j0:j1], A[j0:j1, i0:i1]
            avg = (upper + lower.T) * 0.5
            upper.copy_(avg)
            lower.copy_(avg.T)
    return A


def _unit_costs(W: torch.Tensor, Hi: torch.Tensor, width: int) -> torch.Tensor:
    """Per unit (contiguous ``width`` columns): tr(W_u (Hi_uu)^-1 W_u^T)."""
    if width == 1:
        return torch.linalg.vector_norm(W, dim=0).square() / Hi.diagonal()
    n = W.shape[1] // width
    B = Hi.reshape(n, width, n, width).diagonal(dim1=0, dim2=2).permute(2, 0, 1)   # (n, w, w)
    L = torch.linalg.cholesky(B)
    Wt = W.T.reshape(n, width, W.shape[0])                                         # (n, w, d)
    X = torch.linalg.solve_triangular(L, Wt, upper=False)
    return X.square().sum((1, 2))


def greedy_obs(W: torch.Tensor, H: torch.Tensor, width: int = 1, n_remove: int | None = None, block: int = 1,
               damp: float = 1e-2, group_of: torch.Tensor | None = None, quota: torch.Tensor | None = None,
               h_inverse: torch.Tensor | None = None):
    """Greedy structured OBS elimination (see the module doc).

    ``W``: (d, n*width); ``H``: (n*width, n*width) input second moment.  Units are contiguous
    blocks of ``width`` columns.  ``n_remove``: stop after that many removals (default: all n).
    ``group_of`` (n,) / ``quota`` (n_groups,): remove at most ``quota[g]`` units of group ``g``
    (with ``n_remove = quota.sum()``).  Returns ``(order, increments, rest, rest_costs, errors)``:
    the removed units in order, each one's increment when chosen, the surviving units, their
    increments at the final state, and the total output error after each step (cumulative joint
    increments, one entry per step).  ``h_inverse``: the damped inverse of ``H`` when the caller
    already has it (copied, not modified; ``damp`` is then not used).
    """
    W0 = W.detach()
    W = W0.to(torch.float64)
    if W.data_ptr() == W0.data_ptr():           # one private float64 copy, whatever the input dtype
        W = W.clone()
    del W0
    H = H.detach().to(device=W.device, dtype=torch.float64)
    if W.shape[1] % width or H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"sketchprune.prune: greedy_obs got W {tuple(W.shape)}, H {tuple(H.shape)}, width {width}")
    n = W.shape[1] // width
    n_remove = n if n_remove is None else int(n_remove)
    if not 0 <= n_remove <= n:
        raise ValueError(f"sketchprune.prune: cannot remove {n_remove} of {n} units")
    if block < 1:
        raise ValueError(f"sketchprune.prune: block must be >= 1, got {block}")
    if quota is not None:
        group_of = group_of.to("cpu", torch.long)
        left = quota.to("cpu", torch.long).clone()
        if group_of.shape != (n,) or int(group_of.min()) < 0 or int(group_of.max()) >= left.numel() \
                or (left < 0).any() or (left > torch.bincount(group_of, minlength=left.numel())).any():
            raise ValueError(f"sketchprune.prune: group_of must give each of the {n} units a group in "
                             f"[0, {left.numel()}) and each quota be at most its group's size")
        if int(left.sum()) != n_remove:
            raise ValueError(f"sketchprune.prune: quotas sum to {int(left.sum())}, n_remove is {n_remove}")
    if h_inverse is None:
        Hi = _damped_inverse(H, damp)
    else:
        if h_inverse.shape != H.shape:
            raise ValueError(f"sketchprune.prune: h_inverse has shape {tuple(h_inverse.shape)}, H {tuple(H.shape)}")
        Hi = h_inverse.detach().to(device=W.device, dtype=torch.float64).clone()
    if width == 1 and block == 1:
        return _greedy_channels_lazy(W, Hi, n_remove, group_of, left if quota is not None else None)
    alive = torch.arange(n)                     # original ids of the units in the current arrays
    dead = torch.zeros(n, dtype=torch.bool)     # removed units not yet compacted away
    order, incs, errors = [], [], []
    total = 0.0
    cols_of = torch.arange(width, device=W.device)
    eye = torch.eye(width, dtype=torch.float64, device=W.device)
    inf = torch.tensor(float("inf"), dtype=torch.float64)

    def compact():
        nonlocal W, Hi, alive, dead
        live = ~dead
        kc = (torch.nonzero(live).reshape(-1).to(W.device)[:, None] * width + cols_of).reshape(-1)
        W = W[:, kc].contiguous()
        Hi = _symmetrize_(Hi[kc[:, None], kc[None, :]])
        alive, dead = alive[live], dead[live]

    while len(order) < n_remove:
        c_cpu = torch.where(dead, inf, _unit_costs(W, Hi, width).clamp_min(0).to("cpu"))
        want = min(block, n_remove - len(order))
        pick = []
        for p in torch.argsort(c_cpu, stable=True).tolist():
            if quota is not None:
                g = int(group_of[alive[p]])
                if left[g] == 0:
                    continue
                left[g] -= 1
            pick.append(p)
            if len(pick) == want:
                break
        R = (torch.tensor(pick, device=W.device)[:, None] * width + cols_of).reshape(-1)
        M = Hi[R][:, R]
        Lm = torch.linalg.cholesky(0.5 * (M + M.T))
        HiR = Hi[R]                                           # (|R|, m)
        A = torch.cholesky_solve(HiR, Lm)                     # (Hi_RR)^-1 Hi_R:
        WR = W[:, R]
        total += float(torch.linalg.solve_triangular(Lm, WR.T, upper=False).square().sum())
        W.addmm_(WR, A, alpha=-1.0)                           # compensate the kept columns
        Hi.addmm_(HiR.T, A, alpha=-1.0)                       # Schur-complement downdate
        # the removed blocks are now zero up to rounding: make them exactly inert
        W[:, R] = 0
        Hi[R, :] = 0
        Hi[:, R] = 0
        Rb = R.reshape(len(pick), width)
        Hi[Rb[:, :, None], Rb[:, None, :]] = eye              # identity diagonal blocks keep costs finite
        for p in pick:
            order.append(int(alive[p]))
            incs.append(float(c_cpu[p]))
            dead[p] = True
        errors.append(total)
        if int(dead.sum()) * 8 >= alive.numel():              # compact once 1/8 of the arrays is dead
            compact()
    if bool(dead.any()):
        compact()
    rest_costs = _unit_costs(W, Hi, width).clamp_min(0).to("cpu") if alive.numel() else torch.zeros(0)
    return order, incs, alive.tolist(), rest_costs.tolist(), errors


def _pick(costs: torch.Tensor, dead: torch.Tensor, group_of, left, alive=None) -> int:
    """The cheapest live unit whose group (if quotas) has quota left."""
    c = torch.where(dead, torch.tensor(float("inf"), dtype=costs.dtype), costs)
    if left is None:
        return int(torch.argmin(c))
    for p in torch.argsort(c, stable=True).tolist():
        g = int(group_of[p if alive is None else alive[p]])
        if left[g] > 0:
            left[g] -= 1
            return p
    raise RuntimeError("sketchprune.prune: no unit left within the quotas")


def _greedy_channels_lazy(W, Hi, n_remove, group_of, left, flush_every: int = 64):
    """Exact greedy for single columns with lazily applied rank-one downdates.

    The downdates of the last ``k`` steps are kept as factors -- ``Hi_cur = Hi - U U^T``,
    ``W_cur = W - P U^T`` (``u = Hi_cur[:, j] / sqrt(Hi_cur[j, j])``, ``p = W_cur[:, j] /
    sqrt(Hi_cur[j, j])``) -- and the costs' ingredients ``diag(Hi_cur)`` and the column norms of
    ``W_cur`` are updated in O(d n + n k) per step; every ``flush_every`` steps the factors are
    applied as one rank-``k`` update (a matrix product) and the ingredients recomputed.  Same
    choices as the eager update, with a pass over ``W`` instead of two over ``Hi`` per step.
    """
    dev = W.device
    n = W.shape[1]
    alive = torch.arange(n)
    order, incs, errors = [], [], []
    total = 0.0

    def fresh():
        return Hi.diagonal().clone(), torch.linalg.vector_norm(W, dim=0).square()
    dead = torch.zeros(n, dtype=torch.bool)
    diag, norms = fresh()
    # the factors live in preallocated buffers; U, P are views of their first k columns
    Ub = torch.empty(n, flush_every, dtype=torch.float64, device=dev)
    Pb = torch.empty(W.shape[0], flush_every, dtype=torch.float64, device=dev)
    k = 0
    U, P = Ub[:, :0], Pb[:, :0]
    # without quotas the pick is an argmin on the device (removed units masked by +inf), and the
    # increments, errors and the positive-definiteness test stay there until the next flush: one
    # small host read per step (the chosen index) instead of the costs vector and two scalars
    masked = torch.zeros(n, dtype=torch.float64, device=dev)   # +inf at removed units
    incs_t, errs_t, piv_t = [], [], []                         # device scalars, read at each flush

    def settle():
        nonlocal total
        piv, inc_v, err_v = (torch.stack(v).tolist() for v in (piv_t, incs_t, errs_t))
        piv_t.clear(), incs_t.clear(), errs_t.clear()
        if not all(v > 0 for v in piv):      # NaN fails too
            raise RuntimeError("sketchprune.prune: greedy OBS lost positive definiteness; increase damp")
        for inc, err in zip(inc_v, err_v):
            total += err
            incs.append(inc)
            errors.append(total)
    while len(order) < n_remove:
        cd = (norms / diag).clamp_min(0)
        if left is None:
            cm = cd + masked
            j = int(torch.argmin(cm))
            incs_t.append(cm[j].clone())
        else:
            costs = cd.to("cpu")
            j = _pick(costs, dead, group_of, left, alive)
            incs_t.append(costs[j].to(dev))
        uj = U[j]
        h = Hi[j] - U @ uj                                    # Hi_cur[:, j] (Hi symmetric)
        hjj = h[j]
        piv_t.append(hjj)
        s = hjj.clamp_min(torch.finfo(torch.float64).tiny).sqrt()   # a bad pivot is reported at the flush
        u = h / s
        wj = W[:, j] - P @ uj
        p = wj / s
        errs_t.append(wj.square().sum() / hjj)
        wtp = W.T @ p - U @ (P.T @ p)                         # W_cur^T p
        norms = norms - 2 * u * wtp + u.square() * p.square().sum()
        diag = diag - u.square()
        Ub[:, k] = u
        Pb[:, k] = p
        k += 1
        U, P = Ub[:, :k], Pb[:, :k]
        dead[j] = True
        diag[j], norms[j], masked[j] = 1.0, 0.0, math.inf
        order.append(int(alive[j]))
        if k >= flush_every or len(order) == n_remove:
            settle()
            Hi.addmm_(U, U.T, alpha=-1.0)
            W.addmm_(P, U.T, alpha=-1.0)
            live = ~dead
            idx = torch.nonzero(live).reshape(-1).to(dev)
            if int(dead.sum()) * 8 >= alive.numel() or len(order) == n_remove:
                W = W[:, idx].contiguous()
                Hi = _symmetrize_(Hi[idx[:, None], idx[None, :]])
                alive, dead = alive[live], dead[live]
                masked = masked[idx]
            else:
                dl = torch.nonzero(dead).reshape(-1).to(dev)
                W[:, dl] = 0
                Hi[dl, :] = 0
                Hi[:, dl] = 0
                Hi[dl, dl] = 1.0
            if Ub.shape[0] != alive.numel():
                Ub = Ub.new_empty(alive.numel(), flush_every)
            k = 0
            U, P = Ub[:, :0], Pb[:, :0]
            diag, norms = fresh()
            diag[dead.to(dev)] = 1.0
    rest_costs = (torch.linalg.vector_norm(W, dim=0).square() / Hi.diagonal()).clamp_min(0).to("cpu") \
        if alive.numel() else torch.zeros(0)
    return order, incs, alive.tolist(), rest_costs.tolist(), errors


def order_scores(n: int, order, increments, rest=(), rest_costs=()) -> torch.Tensor:
    """Scores (float64, CPU) whose ascending order is ``order`` then ``rest`` sorted by ``rest_costs``.

    Each score is the running maximum of the increments, nudged up by one ulp where needed so
    that the order is strict (so the allocation's lowest-first reproduces it exactly, ties
    included) and scores keep the increments' scale.
    """
    seq = list(order)
    val = list(increments)
    if len(rest):
        rc = torch.tensor(list(rest_costs), dtype=torch.float64)
        srt = torch.argsort(rc, stable=True).tolist()
        seq += [rest[k] for k in srt]
        val += [float(rc[k]) for k in srt]
    if sorted(seq) != list(range(n)):
        raise RuntimeError("sketchprune.prune: an elimination order must cover every unit exactly once")
    out = [0.0] * n
    prev = -1.0
    for u, v in zip(seq, val):
        cur = max(float(v), prev, 0.0)
        if cur <= prev:
            cur = math.nextafter(prev, math.inf)
        out[u] = cur
        prev = cur
    return torch.tensor(out, dtype=torch.float64)


def similarity_elimination(D: torch.Tensor, n_remove: int | None = None, group_of: torch.Tensor | None = None,
                           quota: torch.Tensor | None = None):
    """Redundancy elimination from a Gram matrix ``D`` (n x n, ``D_ij = E[u_i^T u_j]``); see the
    module doc.  The first ``n_remove`` removals honour ``quota`` per group (when given); the
    order then continues without constraint until every unit is ranked.  Returns
    ``(order, increments)`` with ``increments[t] = 1 - r`` of the unit removed at step ``t``."""
    D = D.detach().to("cpu", torch.float64)
    # exactly symmetric, so the two members of a pair get the same redundancy and the energy rule
    # decides which goes: a Gram matrix computed entry by entry is symmetric only up to rounding,
    # and a 1e-16 difference would otherwise pick the member (measured: the higher-energy head of
    # SmolLM2's most similar pair in layer 0, and different heads for float32- vs float64-product
    # statistics that agree to 1e-7)
    D = (D + D.T) / 2
    n = D.shape[0]
    n_remove = n if n_remove is None else int(n_remove)
    energy = D.diagonal().clamp_min(0)
    norm = energy.sqrt()
    denom = norm[:, None] * norm[None, :]
    C = torch.where(denom > 0, D.abs() / denom.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(D))
    C = C.clamp(0, 1)
    C.fill_diagonal_(-1.0)
    alive = torch.ones(n, dtype=torch.bool)
    left = None if quota is None else quota.to("cpu", torch.long).clone()
    order, incs = [], []
    while len(order) < n:
        Cm = C.clone()
        Cm[:, ~alive] = -1.0
        r = Cm.max(1).values.clamp_min(0)
        constrained = left is not None and len(order) < n_remove
        cand = [k for k in range(n) if alive[k] and (not constrained or left[int(group_of[k])] > 0)]
        # largest redundancy first, then smaller energy, then higher index
        i = min(cand, key=lambda k: (-float(r[k]), float(energy[k]), -k))
        if constrained:
            left[int(group_of[i])] -= 1
        alive[i] = False
        order.append(i)
        incs.append(1.0 - float(r[i]))
    return order, incs
