"""``python -m sketchprune.demo_select``: data selection on Fashion-MNIST, SkMM against uniform.

1. split the 60k training images by a fixed permutation into a pretraining set (10k) and a
   selection pool (``--pool``, default 10k, from the rest); pretrain a small CNN on the first;
2. sketch the per-sample gradients of a linear probe on the CNN's frozen features (zero
   init, random labels; the fused ``outer_sketch`` with T = 1, never forming the gradients);
3. select ``--n`` samples (default 1000) with SkMM (library defaults, class-balanced with the
   pool labels) and with uniform sampling, for ``--seeds`` seeds (each seed draws a new sketch --
   new sparse-sign matrix and random probe labels -- since SkMM's default greedy design is
   deterministic given the sketch);
4. train a softmax probe on each coreset and print its accuracy on the 10k test images.

The same small CNN, feature and probe code drive ``bench/selection_fmnist.py`` (the full study).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

SPLIT_SEED = 1234
N_PRETRAIN = 10_000
#: two-sided 95% Student t quantiles by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class FashionCNN(nn.Module):
    """conv(1->16) - ReLU - pool - conv(16->32) - ReLU - pool - flatten (1568) - fc1 (64) - ReLU - fc2 (10)."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                   nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.fc1 = nn.Linear(1568, 64)
        self.fc2 = nn.Linear(64, 10)

    def head(self, h0):
        return self.fc2(torch.relu(self.fc1(h0)))

    def forward(self, x):
        return self.head(self.trunk(x))


def images(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> standardised float (N, 1, 28, 28) (Fashion-MNIST mean / std)."""
    return ((x.float() / 255.0 - 0.2860) / 0.3530).unsqueeze(1)


def pretrain(x, y, seed: int = 0, epochs: int = 2) -> FashionCNN:
    """The CNN trained on (x, y) by minibatch Adam (lr 1e-3, batch 128), returned in eval mode."""
    torch.manual_seed(seed)
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(images(x[idx])), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def trunk_features(model: FashionCNN, x, bs: int = 2000) -> torch.Tensor:
    """The frozen trunk's 1568-d features of uint8 images x."""
    return torch.cat([model.trunk(images(x[i:i + bs])) for i in range(0, x.shape[0], bs)])


def metrics(pred, y, num_classes: int = 10) -> tuple[float, float]:
    """(accuracy, macro-F1) of integer predictions against labels."""
    C = num_classes
    acc = float((pred == y).double().mean())
    cm = torch.bincount(y * C + pred, minlength=C * C).view(C, C).double()
    tp = cm.diagonal()
    prec = tp / cm.sum(0).clamp_min(1)
    rec = tp / cm.sum(1).clamp_min(1)
    f1 = torch.where(prec + rec > 0, 2 * prec * rec / (prec + rec).clamp_min(1e-300), torch.zeros_like(tp))
    return acc, float(f1.mean())


def train_probe(F, y, wd: float, seed: int, steps: int = 200, lr: float = 0.01, num_classes: int = 10):
    """A softmax probe on features F trained by full-batch Adam with an L2 penalty ``wd``;
    returns a predictor Z -> labels."""
    torch.manual_seed(seed)
    W = torch.zeros(num_classes, F.shape[1], requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(F @ W.T + b, y) + 0.5 * wd * W.square().sum()
        loss.backward()
        opt.step()
    return lambda Z: (Z @ W.detach().T + b.detach()).argmax(1)


def _ci(xs):
    """Mean and half-width of the 95% t-interval (normal approximation past 9 values)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, T975.get(len(xs) - 1, 1.96) * sd / math.sqrt(len(xs))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="coreset size")
    p.add_argument("--pool", type=int, default=10_000, help="selection pool size (from the non-pretraining images)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--m", type=int, default=256, help="sketch dimension")
    p.add_argument("--wd", type=float, default=1e-3, help="probe L2 penalty")
    p.add_argument("--epochs", type=int, default=2, help="CNN pretraining epochs")
    args = p.parse_args(argv)
    if not 0 < args.n <= args.pool:
        raise SystemExit(f"--n must be in [1, --pool = {args.pool}], got {args.n}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, got {args.seeds}")

    from .datasets import load_fashion_mnist
    from .select import linear_probe_sketch, select

    t0 = time.perf_counter()
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    perm = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    pre, pool = perm[:N_PRETRAIN], perm[N_PRETRAIN:N_PRETRAIN + args.pool]
    if pool.numel() < args.pool:
        raise SystemExit(f"--pool {args.pool} exceeds the {xtr.shape[0] - N_PRETRAIN} non-pretraining images")
    model = pretrain(xtr[pre], ytr[pre], epochs=args.epochs)
    H_pool, H_test = trunk_features(model, xtr[pool]), trunk_features(model, xte)
    mu, sd = H_pool.mean(0), H_pool.std(0).clamp_min(1e-6)
    F_pool, F_test, y_pool = (H_pool - mu) / sd, (H_test - mu) / sd, ytr[pool]
    with torch.no_grad():
        acc0, _ = metrics(model.head(H_test).argmax(1), yte)
    print(f"[data] pretrained the CNN on {N_PRETRAIN} images ({time.perf_counter() - t0:.1f} s, test accuracy "
          f"{acc0:.2%}); pool {args.pool} images, test {xte.shape[0]}", flush=True)

    t = time.perf_counter()
    sketches = [linear_probe_sketch(F_pool, "random", 10, m=args.m, seed=s) for s in range(args.seeds)]
    rec = sketches[0][1]
    print(f"[sketch] linear-probe gradients r = {rec['r']:,} -> m = {args.m} (sparse-sign, k = {rec['k']}), "
          f"one sketch per seed, in {time.perf_counter() - t:.2f} s", flush=True)

    res = {"n": args.n, "pool": args.pool, "accuracy": {"skmm": [], "uniform": []}, "select_s": {"skmm": [], "uniform": []}}
    for seed in range(args.seeds):
        sk = sketches[seed][0]
        for method in ("skmm", "uniform"):
            t = time.perf_counter()
            sel = select(args.n, method, sk, labels=y_pool, seed=seed)
            res["select_s"][method].append(time.perf_counter() - t)
            idx = torch.as_tensor(sel.indices)
            predict = train_probe(F_pool[idx], y_pool[idx], args.wd, seed)
            acc, _ = metrics(predict(F_test), yte)
            res["accuracy"][method].append(acc)
        print(f"[seed {seed}] probe test accuracy: skmm {res['accuracy']['skmm'][-1]:.2%} "
              f"({res['select_s']['skmm'][-1]:.1f} s to select), uniform {res['accuracy']['uniform'][-1]:.2%}",
              flush=True)
    (ms, hs), (mu_, hu) = _ci(res["accuracy"]["skmm"]), _ci(res["accuracy"]["uniform"])
    diff = [a - b for a, b in zip(res["accuracy"]["skmm"], res["accuracy"]["uniform"])]
    md, hd = _ci(diff)
    print(f"linear probe on n = {args.n} of {args.pool}, {args.seeds} seeds: SkMM {ms:.2%} +- {hs:.2%}, "
          f"uniform {mu_:.2%} +- {hu:.2%}; SkMM - uniform {100 * md:+.2f} +- {100 * hd:.2f} points "
          f"(total {time.perf_counter() - t0:.0f} s)")
    return res


if __name__ == "__main__":
    main()
