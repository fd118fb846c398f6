"""forgetting, contextual diversity, GLISTER and DeepFool against small brute-force references."""

import pytest
import torch
from torch import nn

from sketchprune.select import ModelOutputs, correctness_record, select
from sketchprune.select import model_based as MB


def _valid(idx, N, n):
    assert idx.dtype == torch.int64 and idx.numel() == n
    assert torch.unique(idx).numel() == n and 0 <= int(idx.min()) and int(idx.max()) < N
    assert torch.equal(idx, idx.sort().values)


def test_forgetting_counts_by_hand():
    rec = torch.tensor([[1, 0, 1, 0, 1],
                        [0, 0, 1, 1, 1],
                        [1, 0, 0, 1, 0],
                        [0, 0, 1, 0, 1]], dtype=torch.bool)
    # sample 0: 1->0, 1->0 = 2; 1: never learned; 2: 1->0 once; 3: 1->0 once (epoch 2->3); 4: 1->0 once
    ev = MB.forgetting_counts(rec)
    assert ev.tolist() == [2.0, float("inf"), 1.0, 1.0, 1.0]
    assert MB.forgetting(rec, 2).tolist() == [0, 1]
    picks = {tuple(MB.forgetting(rec, 3, seed=s).tolist()) for s in range(20)}
    assert all(set(p) >= {0, 1} for p in picks) and len(picks) > 1  # ties broken at random


def test_forgetting_brute_force_random():
    g = torch.Generator().manual_seed(0)
    rec = torch.rand(7, 60, generator=g) < 0.6
    ref = []
    for i in range(60):
        col = rec[:, i].tolist()
        ref.append(float("inf") if not any(col) else sum(1 for a, b in zip(col, col[1:]) if a and not b))
    assert MB.forgetting_counts(rec).tolist() == ref
    idx = MB.forgetting(rec, 25, seed=3)
    _valid(idx, 60, 25)
    kept = torch.tensor(ref)[idx]
    rest = torch.tensor(ref)[[i for i in range(60) if i not in idx.tolist()]]
    assert kept.min() >= rest.max()


def test_correctness_record_learns_separable_data():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (300,), generator=g)
    X = torch.randn(300, 5, generator=g) + 4 * nn.functional.one_hot(y, 5).float()
    rec = correctness_record(X, y, epochs=5, seed=0)
    assert rec.shape == (5, 300) and rec.dtype == torch.bool
    assert rec[-1].float().mean() > 0.95


def test_contextual_diversity_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    p = torch.softmax(3 * torch.randn(50, 4, generator=g, dtype=torch.float64), 1)
    D = torch.zeros(50, 50, dtype=torch.float64)
    for i in range(50):
        for j in range(50):
            kl_ij = (p[i] * (p[i] / p[j]).log()).sum()
            kl_ji = (p[j] * (p[j] / p[i]).log()).sum()
            D[i, j] = 0.5 * (kl_ij + kl_ji)
    first = int(torch.randint(50, (1,), generator=torch.Generator().manual_seed(5)))
    ref = [first]
    for _ in range(11):
        d = D[:, ref].min(1).values
        d[ref] = -1
        ref.append(int(d.argmax()))
    idx = MB.contextual_diversity(p, 12, seed=5)
    _valid(idx, 50, 12)
    assert idx.tolist() == sorted(ref)


def _glister_reference(X, y, Xv, yv, W1, n, eta):
    """One pick at a time; the gain is the directional derivative of the validation
    log-likelihood along -g_i at theta_S, both from autograd in float64."""
    N, d = X.shape
    X1 = torch.cat([X, torch.ones(N, 1, dtype=torch.float64)], 1)
    Xv1 = torch.cat([Xv, torch.ones(Xv.shape[0], 1, dtype=torch.float64)], 1)

    def g_of(i):  # per-sample cross-entropy gradient at theta_0
        W = W1.clone().requires_grad_(True)
        nn.functional.cross_entropy((X1[i:i + 1] @ W.T), y[i:i + 1]).backward()
        return W.grad

    gs = [g_of(i) for i in range(N)]
    S, step = [], torch.zeros_like(W1)
    for _ in range(n):
        W = (W1 - eta / n * step).clone().requires_grad_(True)
        ll = -nn.functional.cross_entropy(Xv1 @ W.T, yv)
        (gll,) = torch.autograd.grad(ll, W)
        gains = torch.tensor([float((gll * -gs[i]).sum()) if i not in S else -float("inf") for i in range(N)])
        i = int(gains.argmax())
        S.append(i)
        step = step + gs[i]
    return sorted(S)


@pytest.mark.parametrize("head", [False, True])
def test_glister_matches_brute_force(head):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    Xv = torch.randn(15, 3, generator=g, dtype=torch.float64)
    yv = torch.randint(0, 3, (15,), generator=g)
    W = torch.randn(3, 3, generator=g, dtype=torch.float64) if head else None
    b = torch.randn(3, generator=g, dtype=torch.float64) if head else None
    W1 = torch.cat([W, b[:, None]], 1) if head else torch.zeros(3, 4, dtype=torch.float64)
    ref = _glister_reference(X, y, Xv, yv, W1, 8, eta=2.0)
    idx = MB.glister(X, y, 8, Xv, yv, head_weight=W, head_bias=b, eta=2.0, batch=1)
    assert idx.tolist() == ref
    _valid(MB.glister(X, y, 8, Xv, yv, batch=3), 40, 8)


def test_deepfool_affine_matches_projection():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(4, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    f = X @ W.T + b
    dist = MB.deepfool_distances(f, W)
    for i in range(30):  # brute force: project onto each pairwise boundary, keep the nearest
        k = int(f[i].argmax())
        best = float("inf")
        for c in range(4):
            if c == k:
                continue
            w, bb = W[c] - W[k], b[c] - b[k]
            r = -(X[i] @ w + bb) / (w @ w) * w  # onto {x : f_c(x) = f_k(x)}
            assert abs(float((X[i] + r) @ w + bb)) < 1e-9
            best = min(best, float(r.norm()))
        assert abs(best - float(dist[i])) < 1e-9
    # iterative DeepFool on the same affine model finds the same distance in one step
    lin = nn.Linear(6, 4).double()
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(b)
    it = MB.deepfool_distances_model(lin, X, overshoot=0.0)
    assert torch.allclose(it, dist, rtol=1e-3, atol=1e-4)
    idx = MB.deepfool(dist, 5)
    assert idx.tolist() == sorted(torch.argsort(dist)[:5].tolist())


def test_deepfool_iterative_flips_a_nonlinear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    X = torch.randn(20, 5, dtype=torch.float64)
    d = MB.deepfool_distances_model(model, X)
    assert torch.isfinite(d).all() and (d > 0).all()


def test_select_interface_for_model_methods():
    g = torch.Generator().manual_seed(5)
    N, C, d = 80, 4, 6
    feats = torch.randn(N, d, generator=g)
    W, b = torch.randn(C, d, generator=g), torch.randn(C, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    out = ModelOutputs(features=feats, head_weight=W, head_bias=b, labels=labels,
                       correctness=torch.rand(5, N, generator=g) < 0.5)
    for method in ("forgetting", "contextual-diversity", "glister", "deepfool", "entropy", "el2n"):
        for n in (1, 13, N):
            sel = select(n, method, outputs=out, seed=1)
            _valid(sel.indices, N, n)
            assert sel.info["method"] == method
        cb = select(20, method, outputs=out, class_balanced=True)
        _valid(cb.indices, N, 20)
    with pytest.raises(ValueError, match="needs ModelOutputs.correctness"):
        select(5, "forgetting", outputs=ModelOutputs(probs=torch.softmax(feats[:, :C], 1)))
    with pytest.raises(ValueError, match="needs ModelOutputs.head_weight"):
        select(5, "deepfool", outputs=ModelOutputs(logits=feats[:, :C]))
    with pytest.raises(ValueError, match="disagree on the number of samples"):
        ModelOutputs(features=feats, labels=labels[:10])
    with pytest.raises(ValueError, match="sum to 1"):
        ModelOutputs(probs=(feats[:, :C].abs() + 0.5) / (2 * (feats[:, :C].abs() + 0.5).sum(1, keepdim=True)))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        ModelOutputs(probs=feats[:, :C])
    with pytest.raises(ValueError, match="NaN or Inf"):
        ModelOutputs(probs=torch.full((4, 2), float("nan")))


def _pool(N=30, d=4, C=3, seed=21):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, d, generator=g), torch.randint(0, C, (N,), generator=g)


@pytest.mark.parametrize("val_labels, err, match", [
    (torch.full((6,), -1), ValueError, "glister: val_labels must be class ids >= 0, got -1"),
    (torch.full((6,), 1.7), TypeError, "glister: val_labels must be integer class ids"),
    (torch.zeros(5, dtype=torch.long), ValueError, r"glister: val_labels must be 1-D, one class id per sample \(6\)"),
])
def test_glister_validates_val_labels(val_labels, err, match):
    f, y = _pool()
    with pytest.raises(err, match=match):
        select(5, "glister", outputs=ModelOutputs(features=f, labels=y), val_features=f[:6], val_labels=val_labels)


def test_glister_validates_val_features_and_head():
    f, y = _pool()
    with pytest.raises(ValueError, match=r"val_features must be \(N_val x d\) with the pool's feature width d = 4"):
        MB.glister(f, y, 5, val_features=torch.randn(6, 3), val_labels=y[:6])
    with pytest.raises(ValueError, match=r"the head must be head_weight \(C x d\) = \(3 x 4\)"):
        MB.glister(f, y, 5, head_weight=torch.randn(3, 5))
    with pytest.raises(ValueError, match="labels go up to 2 but there are 2 classes"):
        MB.glister(f, y, 5, num_classes=2)


@pytest.mark.parametrize("labels, err, match", [
    (lambda y: y - 1, ValueError, "class ids >= 0"),
    (lambda y: y.double() + 0.5, TypeError, "integer class ids"),
    (lambda y: y[:-1], ValueError, "one class id per sample"),
])
def test_correctness_record_validates_labels(labels, err, match):
    f, y = _pool()
    with pytest.raises(err, match=match):
        correctness_record(f, labels(y))
    with pytest.raises(ValueError, match=r"labels must be in \[0, num_classes=2\)"):
        correctness_record(f, y, num_classes=2)


def test_correctness_record_must_be_bool_or_0_1_integers():
    g = torch.Generator().manual_seed(22)
    rec = torch.rand(4, 20, generator=g) < 0.5
    for bad, err in ((torch.rand(3, 20), TypeError), (rec.double(), TypeError), (rec.long() * 2, ValueError)):
        with pytest.raises(err, match="correctness must be"):
            select(5, "forgetting", outputs=ModelOutputs(correctness=bad))
        with pytest.raises(err, match="correctness must be"):
            MB.forgetting_counts(bad)
    # 0 / 1 integers (e.g. a saved uint8 record) read as the bool record they are
    for ok in (rec.long(), rec.to(torch.uint8), rec.numpy().astype("int32")):
        assert torch.equal(MB.forgetting_counts(ok), MB.forgetting_counts(rec))
        assert torch.equal(select(5, "forgetting", outputs=ModelOutputs(correctness=ok), seed=1).indices,
                           select(5, "forgetting", outputs=ModelOutputs(correctness=rec), seed=1).indices)


def test_model_outputs_are_read_detached():
    f, y = _pool(N=40)
    g = torch.Generator().manual_seed(23)
    W = torch.randn(3, 4, generator=g)
    out = ModelOutputs(features=f.clone().requires_grad_(True), labels=y, head_weight=W.clone().requires_grad_(True),
                       grad_norms=torch.rand(40, generator=g).requires_grad_(True))
    assert not any(t.requires_grad for t in (out.features, out.head_weight, out.grad_norms))
    ref = ModelOutputs(features=f, labels=y, head_weight=W, grad_norms=out.grad_norms)
    for method in ("glister", "deepfool", "grand", "entropy", "contextual-diversity"):
        assert torch.equal(select(6, method, outputs=out).indices, select(6, method, outputs=ref).indices)
