"""Selection methods that read a trained model's outputs: forgetting events, contextual diversity,
GLISTER and DeepFool.  They take the model's outputs through one documented record,
:class:`ModelOutputs`, and return exactly n distinct indices (sorted, int64).

``ModelOutputs`` fields (all optional; each method says which it needs; N = pool size):

* ``logits`` (N x C) -- pre-softmax outputs; ``probs`` (N x C) -- class probabilities (rows sum to
  1).  Either one gives the other (``probs`` = softmax(``logits``)).
* ``labels`` (N,) -- class indices.
* ``features`` (N x d) -- the input of the model's last (linear) layer, the "penultimate features".
* ``head_weight`` (C x d), ``head_bias`` (C,) -- the last layer itself, so that
  logits = features @ head_weight.T + head_bias.
* ``correctness`` (E x N, bool) -- whether each sample was classified correctly after each of E
  training epochs (or presentations), in order.
* ``grad_norms`` (N,) -- per-sample gradient norms (GraNd).

Methods
-------
* ``forgetting`` (Toneva et al. 2019): count forgetting events -- a sample classified correctly at
  record t and wrongly at t + 1 -- in ``correctness``; samples never classified correctly count as
  forgotten infinitely often (they rank first); keep the n most forgotten, ties broken at random
  from the seed.  :func:`correctness_record` produces the record by a short training run of a
  softmax probe on ``features`` when the user has none.
* ``contextual_diversity`` (Agarwal et al. 2020): greedy k-center (farthest point) where the
  distance between two samples is the symmetric KL divergence of their class-probability
  vectors, 0.5 (KL(p_i || p_j) + KL(p_j || p_i)).  In classification every image is a single
  "region", so the paper's class-conditional mixture of region probabilities reduces to the
  sample's own probability vector (the entropy weights cancel in the normalised mixture).
* ``glister`` (Killamsetty et al. 2021, GLISTER-ONLINE): greedy maximisation of the validation
  log-likelihood after one gradient step on the selected samples, with the one-step Taylor
  approximation of the paper restricted to the last layer: with theta_S = theta_0 - (eta / n)
  sum_{j in S} g_j (g_j the per-sample gradient of the cross-entropy w.r.t. the head's weight and
  bias, theta_0 the given head or zero), the gain of adding i is grad LL_V(theta_S) . (-g_i)
  -- the first-order change of the validation log-likelihood.  The validation gradient is
  recomputed exactly at theta_S after every ``batch`` picks (``batch=1``: after every pick, the
  paper's greedy; larger batches take the ``batch`` best gains at once, an approximation that
  saves time).  Without a validation set the pool itself is used (as the paper allows).
* ``deepfool`` (Ducoffe & Precup 2018): the smallest perturbation that moves a sample across
  the decision boundary; keep the n samples closest to the boundary.  For an affine head on
  features the DeepFool step is exact: ||r_i|| = min_{k != k_i} |f_k - f_{k_i}| / ||w_k - w_{k_i}||.
  For any differentiable model, :func:`deepfool_distances_model` runs the iterative DeepFool of
  Moosavi-Dezfooli et al. (2016) on the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import check_labels, check_num_classes
from .simplex import check_size

__all__ = ["ModelOutputs", "forgetting", "forgetting_counts", "check_correctness", "correctness_record",
           "contextual_diversity",
           "glister", "deepfool", "deepfool_distances", "deepfool_distances_model"]


@dataclass
class ModelOutputs:
    """A trained model's outputs on the pool (see the module docstring for every field)."""

    logits: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    features: torch.Tensor | None = None
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    correctness: torch.Tensor | None = None
    grad_norms: torch.Tensor | None = None

    def __post_init__(self):
        sizes = {}
        for name in ("logits", "probs", "labels", "features", "head_weight", "head_bias", "correctness",
                     "grad_norms"):
            t = getattr(self, name)
            if t is not None:  # read detached: selection is not differentiable
                setattr(self, name, torch.as_tensor(t).detach())
        for name in ("logits", "probs", "labels", "features", "grad_norms"):
            t = getattr(self, name)
            if t is not None:
                if t.dim() == 0:
                    raise ValueError(f"{name} must have one entry or row per sample, got a scalar")
                sizes[name] = int(t.shape[0])
        if self.correctness is not None:
            self.correctness = check_correctness(self.correctness)
            sizes["correctness (columns)"] = int(self.correctness.shape[1])
        if len(set(sizes.values())) > 1:
            raise ValueError(f"ModelOutputs fields disagree on the number of samples N: {sizes}")
        for name in ("logits", "probs", "features"):
            t = getattr(self, name)
            if t is not None and t.dim() != 2:
                raise ValueError(f"{name} must be 2-D (N x ...), got shape {tuple(t.shape)}")
        if self.labels is not None:
            check_labels(self.labels)
        if self.grad_norms is not None:
            g = self.grad_norms
            if g.dim() != 1 or not g.is_floating_point():
                raise ValueError(f"grad_norms must be a 1-D float tensor (one norm per sample), got "
                                 f"shape {tuple(g.shape)}, dtype {g.dtype}")
            if not bool(torch.isfinite(g).all()):
                raise ValueError("grad_norms has NaN or Inf entries")
        if self.probs is not None:
            p = self.probs.double()
            if not bool(torch.isfinite(p).all()):
                raise ValueError("probs has NaN or Inf entries")
            if bool((p < -1e-6).any()) or bool((p > 1 + 1e-6).any()):   # rounding noise allowed
                raise ValueError("probs must lie in [0, 1] (pass pre-softmax outputs as logits)")
            s = p.sum(1)
            if not torch.allclose(s, torch.ones_like(s), atol=1e-3):
                raise ValueError("probs rows must sum to 1 (pass pre-softmax outputs as logits)")

    @property
    def size(self) -> int | None:
        for name in ("logits", "probs", "labels", "features", "grad_norms"):
            t = getattr(self, name)
            if t is not None:
                return int(t.shape[0])
        return None if self.correctness is None else int(self.correctness.shape[1])

    def get_probs(self) -> torch.Tensor | None:
        if self.probs is not None:
            return self.probs
        if self.logits is not None:
            return torch.softmax(self.logits.double(), 1)
        if self.features is not None and self.head_weight is not None:
            return torch.softmax(self.get_logits().double(), 1)
        return None

    def get_logits(self) -> torch.Tensor | None:
        if self.logits is not None:
            return self.logits
        if self.features is not None and self.head_weight is not None:
            z = self.features.double() @ self.head_weight.double().T
            return z + self.head_bias.double() if self.head_bias is not None else z
        return None

    def require(self, method: str, *names: str):
        for name in names:
            have = {"probs": self.get_probs(), "logits": self.get_logits()}.get(name, getattr(self, name, None))
            if have is None:
                raise ValueError(f"method {method!r} needs ModelOutputs.{name}")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- forgetting events ---------------------------------------------------------------------------
def check_correctness(correctness) -> torch.Tensor:
    """A correctness record as an (epochs x N) bool tensor, at least one epoch.  Bool, or integers
    that are all 0 or 1; a float record (probabilities, accuracies, ...) is refused rather than read
    as "nonzero = correct": threshold it first (e.g. ``record > 0.5``)."""
    c = torch.as_tensor(correctness).detach()
    if c.dim() != 2 or c.shape[0] < 1:
        raise ValueError(f"correctness must be (epochs x N) with at least one epoch, got shape {tuple(c.shape)}")
    if c.dtype != torch.bool:
        if c.is_floating_point() or c.is_complex():
            raise TypeError(f"correctness must be a bool (epochs x N) record, got dtype {c.dtype}; threshold a "
                            "score record first (e.g. record > 0.5)")
        if c.numel() and not bool(((c == 0) | (c == 1)).all()):
            raise ValueError(f"correctness must be bool, or integers 0 / 1; got {c.dtype} values in "
                             f"[{int(c.min())}, {int(c.max())}]")
        c = c.bool()
    return c


def forgetting_counts(correctness: torch.Tensor) -> torch.Tensor:
    """(N,) float64: the number of correct -> wrong transitions between consecutive records;
    +inf for samples never classified correctly.  ``correctness``: (epochs x N) bool, or 0 / 1
    integers (see :func:`check_correctness`)."""
    c = check_correctness(correctness)
    ev = (c[:-1] & ~c[1:]).sum(0).double()
    ev[~c.any(0)] = float("inf")
    return ev


def forgetting(correctness: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """The n samples with the most forgetting events (never-learned first), ties at random."""
    ev = forgetting_counts(correctness)
    check_size(ev.numel(), n)
    perm = torch.randperm(ev.numel(), generator=_gen(seed))  # random tie-break: stable sort of a shuffle
    order = perm[torch.sort(-ev[perm], stable=True).indices]
    return order[:n].sort().values


def correctness_record(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                       epochs: int = 10, lr: float = 0.1, batch_size: int = 128, weight_decay: float = 0.0,
                       seed: int = 0) -> torch.Tensor:
    """(epochs x N) bool: a short training run of a softmax probe on (standardised) ``features``
    with minibatch SGD; after each epoch every sample's correctness under the current probe."""
    X = torch.as_tensor(features).detach().float()
    if X.dim() != 2:
        raise ValueError(f"features must be 2-D (N x d), got shape {tuple(X.shape)}")
    N, d = X.shape
    num_classes = check_num_classes(num_classes)
    y = check_labels(labels, N, num_classes, who="correctness_record: labels")
    C = int(y.max()) + 1 if num_classes is None else num_classes
    X = (X - X.mean(0)) / X.std(0).clamp_min(1e-6)
    g = _gen(seed)
    W = torch.zeros(C, d)
    b = torch.zeros(C)
    rec = torch.zeros(epochs, N, dtype=torch.bool)
    for e in range(epochs):
        for i in torch.randperm(N, generator=g).split(batch_size):
            p = torch.softmax(X[i] @ W.T + b, 1)
            p[torch.arange(i.numel()), y[i]] -= 1.0
            W -= lr * (p.T @ X[i] / i.numel() + weight_decay * W)
            b -= lr * p.mean(0)
        rec[e] = (X @ W.T + b).argmax(1) == y
    return rec


# ---- contextual diversity --------------------------------------------------------------------------
def _sym_kl_to(logp: torch.Tensor, p: torch.Tensor, j: int) -> torch.Tensor:
    """0.5 (KL(p_i || p_j) + KL(p_j || p_i)) = 0.5 sum_c (p_ic - p_jc)(log p_ic - log p_jc), all i."""
    return 0.5 * ((p - p[j]) * (logp - logp[j])).sum(1)


def contextual_diversity(probs: torch.Tensor, n: int, seed: int = 0, eps: float = 1e-12) -> torch.Tensor:
    """Greedy k-center under the symmetric KL divergence of class-probability vectors."""
    p = torch.as_tensor(probs).detach().double()
    if p.dim() != 2:
        raise ValueError(f"probs must be (N x classes), got shape {tuple(p.shape)}")
    N = p.shape[0]
    check_size(N, n)
    p = p.clamp_min(eps)
    p = p / p.sum(1, keepdim=True)
    logp = p.log()
    first = int(torch.randint(N, (1,), generator=_gen(seed)))
    dist = _sym_kl_to(logp, p, first)
    chosen = torch.zeros(N, dtype=torch.bool)
    chosen[first] = True
    out = [first]
    for _ in range(n - 1):
        d = dist.masked_fill(chosen, -1.0)
        i = int(torch.argmax(d))
        out.append(i)
        chosen[i] = True
        dist = torch.minimum(dist, _sym_kl_to(logp, p, i))
    return torch.tensor(sorted(out), dtype=torch.int64)


# ---- GLISTER ----------------------------------------------------------------------------------------
def _head_grad(X1: torch.Tensor, y: torch.Tensor, W1: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy gradient w.r.t. the augmented head W1 (C x (d+1)) on rows X1 = [X, 1]."""
    P = torch.softmax(X1 @ W1.T, 1)
    P[torch.arange(y.numel()), y] -= 1.0
    return P.T @ X1 / y.numel()


def glister(features: torch.Tensor, labels: torch.Tensor, n: int, val_features: torch.Tensor | None = None,
            val_labels: torch.Tensor | None = None, head_weight: torch.Tensor | None = None,
            head_bias: torch.Tensor | None = None, num_classes: int | None = None, eta: float = 1.0,
            batch: int | None = None) -> torch.Tensor:
    """GLISTER-ONLINE greedy with the last-layer one-step Taylor approximation (module docstring).
    ``batch`` (default: max(1, n // 50)) picks are taken per recomputation of the validation
    gradient.  Deterministic."""
    X = torch.as_tensor(features).detach().double()
    if X.dim() != 2:
        raise ValueError(f"glister: features must be 2-D (N x d), got shape {tuple(X.shape)}")
    N, d = X.shape
    y = check_labels(labels, N, who="glister: labels")
    check_size(N, n)
    if (val_features is None) != (val_labels is None):
        raise ValueError("give both val_features and val_labels, or neither (then the pool is the validation set)")
    if val_features is None:
        Xv, yv = X, y
    else:
        Xv = torch.as_tensor(val_features).detach().double()
        if Xv.dim() != 2 or Xv.shape[1] != d or Xv.shape[0] == 0:
            raise ValueError(f"glister: val_features must be (N_val x d) with the pool's feature width d = {d}, "
                             f"got shape {tuple(Xv.shape)}")
        yv = check_labels(val_labels, int(Xv.shape[0]), who="glister: val_labels")
    if num_classes is not None:
        C = check_num_classes(num_classes)
    elif head_weight is not None:       # the head fixes the class count (labels may not reach its last class)
        C = int(torch.as_tensor(head_weight).shape[0])
    else:
        C = int(max(int(y.max()), int(yv.max()))) + 1
    if int(max(int(y.max()), int(yv.max()))) >= C:
        raise ValueError(f"labels go up to {int(max(int(y.max()), int(yv.max())))} but there are {C} classes")
    if head_weight is None:
        W1 = torch.zeros(C, d + 1, dtype=torch.float64)
    else:
        W = torch.as_tensor(head_weight).detach().double()
        bias = torch.zeros(C) if head_bias is None else torch.as_tensor(head_bias).detach()
        if W.shape != (C, d) or bias.shape != (C,):
            raise ValueError(f"glister: the head must be head_weight (C x d) = ({C} x {d}) and head_bias (C,), got "
                             f"{tuple(W.shape)} and {tuple(bias.shape)}")
        W1 = torch.cat([W, bias.double()[:, None]], 1)
    X1 = torch.cat([X, torch.ones(N, 1, dtype=torch.float64)], 1)
    Xv1 = torch.cat([Xv, torch.ones(Xv.shape[0], 1, dtype=torch.float64)], 1)
    # per-sample gradients g_i = (p_i - e_{y_i}) [x_i, 1]^T at theta_0 (the one-step approximation
    # keeps them fixed); gains need only E = P - Y (N x C) and X1
    E = torch.softmax(X1 @ W1.T, 1)
    E[torch.arange(N), y] -= 1.0
    batch = max(1, n // 50) if batch is None else int(batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    chosen = torch.zeros(N, dtype=torch.bool)
    step_sum = torch.zeros_like(W1)  # sum_{j in S} g_j
    out: list[int] = []
    while len(out) < n:
        Ws = W1 - (eta / n) * step_sum
        Gv = _head_grad(Xv1, yv, Ws)  # gradient of the mean validation loss = -grad LL_V
        # gain_i = grad LL_V . (-g_i) = <Gv, g_i> = sum_c E_ic (X1_i . Gv_c)
        gain = (E * (X1 @ Gv.T)).sum(1)
        gain[chosen] = -float("inf")
        k = min(batch, n - len(out))
        pick = torch.topk(gain, k).indices
        chosen[pick] = True
        out.extend(pick.tolist())
        step_sum += E[pick].T @ X1[pick]
    return torch.tensor(sorted(out), dtype=torch.int64)


# ---- DeepFool ---------------------------------------------------------------------------------------
def deepfool_distances(logits: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """(N,) float64: the exact DeepFool distance of every sample to the nearest decision boundary
    of the affine head with weight ``head_weight`` (C x d) that produced ``logits`` (N x C)."""
    f = torch.as_tensor(logits).detach().double()
    W = torch.as_tensor(head_weight).detach().double()
    if f.dim() != 2 or W.dim() != 2 or f.shape[1] != W.shape[0]:
        raise ValueError(f"logits (N x C) and head_weight (C x d) disagree: {tuple(f.shape)}, {tuple(W.shape)}")
    k = f.argmax(1)
    df = (f - f.gather(1, k[:, None])).abs()  # |f_c - f_k|
    # ||w_c - w_k||^2 = ||w_c||^2 + ||w_k||^2 - 2 w_c.w_k, from the C x C Gram matrix
    G = W @ W.T
    dw = (G.diagonal()[None, :] + G.diagonal()[k][:, None] - 2.0 * G[k]).clamp_min(0).sqrt()
    ratio = df / dw.clamp_min(1e-300)
    ratio[torch.arange(f.shape[0]), k] = float("inf")
    ratio[dw == 0] = float("inf")  # parallel class: no boundary
    return ratio.min(1).values


def deepfool_distances_model(model, inputs: torch.Tensor, max_iter: int = 50, overshoot: float = 0.02,
                             batch_size: int = 256) -> torch.Tensor:
    """(N,) float64: ||r|| of iterative DeepFool (Moosavi-Dezfooli et al. 2016) on a differentiable
    ``model`` mapping inputs to logits; samples not flipped within max_iter get +inf."""
    out = []
    for x0 in torch.as_tensor(inputs).split(batch_size):
        x0 = x0.detach().double() if next(model.parameters()).dtype == torch.float64 else x0.detach()
        with torch.no_grad():
            k0 = model(x0).argmax(1)
        r = torch.zeros_like(x0)
        done = torch.zeros(x0.shape[0], dtype=torch.bool)
        dist = torch.full((x0.shape[0],), float("inf"), dtype=torch.float64)
        rows = torch.arange(x0.shape[0])
        for _ in range(max_iter):
            x = (x0 + (1 + overshoot) * r).requires_grad_(True)
            f = model(x)
            flipped = (f.argmax(1) != k0) & ~done
            if flipped.any():
                dist[flipped] = ((1 + overshoot) * r[flipped]).flatten(1).norm(dim=1).double()
                done |= flipped
            if done.all():
                break
            fk = f[rows, k0]
            C = f.shape[1]
            best = torch.full((x0.shape[0],), float("inf"), dtype=torch.float64)
            step = torch.zeros_like(x0)
            gk = torch.autograd.grad(fk.sum(), x, retain_graph=True)[0]
            for c in range(C):
                gc = torch.autograd.grad(f[:, c].sum(), x, retain_graph=c < C - 1)[0]
                w = (gc - gk).flatten(1)
                fd = (f[:, c] - fk).detach()
                wn = w.norm(dim=1).clamp_min(1e-12)
                val = (fd.abs() / wn).double()
                val[k0 == c] = float("inf")
                better = val < best
                best = torch.where(better, val, best)
                upd = ((fd.abs() + 1e-4) / wn.square())[:, None] * w
                step[better] = upd.view_as(x0)[better]
            r = r + step * (~done).view(-1, *[1] * (x0.dim() - 1))
        out.append(dist)
    return torch.cat(out)


def deepfool(distances: torch.Tensor, n: int) -> torch.Tensor:
    """The n samples closest to the decision boundary (smallest DeepFool distance)."""
    d = torch.as_tensor(distances).detach().double()
    check_size(d.numel(), n)
    return torch.topk(-d, n).indices.sort().values
