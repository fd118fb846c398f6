"""``python -m sketchprune.demo``: the three kernels on built-in defaults, with checks.

1. stream activations of a SmolLM2-sized layer (d = 576) through a CovarianceAccumulator;
2. sketch 512 per-sample gradients of dimension 100,000 down to 512 with the sparse-sign
   sketch and report how well pairwise geometry is kept (the JL distortion), next to a
   dense Gaussian projection;
3. prune a SwiGLU FFN (576 -> 1536 -> 576) to 80% of its channels with gather_slices, keeping
   the channels with the largest activation-weighted norms.
Each step prints the backend that ran and its time against the pure-torch reference.
"""

from __future__ import annotations

import argparse
import time

import torch

from . import CovarianceAccumulator, _backends, gather_slices, sparse_sign_sketch, use_backend


def _timed(fn, repeat=3):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    auto = {op: _backends.select(op, dev, warn=False) for op in _backends.OPS}
    print(f"device {dev}; backends chosen: {auto}")

    # 1. streaming covariance
    d, chunks = 576, [torch.randn(1000, 576, device=dev) @ torch.randn(576, 576, device=dev) / 24 for _ in range(16)]

    def stream():
        acc = CovarianceAccumulator(d, device=dev)
        for x in chunks:
            acc.update(x.to(torch.bfloat16))
        return acc.covariance()

    cov, t_fast = _timed(stream)
    with use_backend("torch"):
        cov_ref, t_ref = _timed(stream)
    rel = ((cov - cov_ref).norm() / cov_ref.norm()).item()
    print(f"[covariance] 16k tokens x {d}: {t_fast*1e3:.1f} ms ({auto['cov_accumulate_']}) vs "
          f"{t_ref*1e3:.1f} ms (torch reference); rel. difference {rel:.1e}")

    # 2. sketching
    n, r, m = 512, 100_000, 512
    g = torch.randn(n, r, device=dev) * torch.linspace(0.2, 2.0, r, device=dev)
    sk, t_fast = _timed(lambda: sparse_sign_sketch(g, m, 8, seed=args.seed))
    with use_backend("torch"):
        _, t_ref = _timed(lambda: sparse_sign_sketch(g, m, 8, seed=args.seed), repeat=1)
    gauss = g @ (torch.randn(r, m, device=dev) / m**0.5)

    def distortion(proj):  # |  ||x_i S - x_j S||^2 / ||x_i - x_j||^2 - 1 | over random pairs
        i, j = torch.randint(0, n, (2, 2000), device=dev)
        keep = i != j
        i, j = i[keep], j[keep]
        ratio = (proj[i] - proj[j]).pow(2).sum(1) / (g[i] - g[j]).pow(2).sum(1)
        return (ratio - 1).abs().mean().item()

    print(f"[sketch] {n} x {r:,} -> {n} x {m}: {t_fast*1e3:.1f} ms ({auto['sparse_sign_sketch']}) vs "
          f"{t_ref*1e3:.1f} ms (torch reference); mean pairwise-distance distortion {distortion(sk):.3f} "
          f"(dense Gaussian: {distortion(gauss):.3f}; theory ~ {(2 / m) ** 0.5 * 0.8:.3f})")

    # 3. slicing an FFN by activation-weighted channel norms
    hidden, inter = 576, 1536
    gate, up = torch.randn(inter, hidden, device=dev), torch.randn(inter, hidden, device=dev)
    down = torch.randn(hidden, inter, device=dev)
    score = (up @ cov @ up.T).diagonal() * down.pow(2).sum(0)
    keep = score.topk(int(0.8 * inter)).indices.sort().values
    (g2, u2, d2), t_fast = _timed(lambda: gather_slices([gate, up, down], keep, [0, 0, 1]))
    ok = torch.equal(d2, down[:, keep]) and torch.equal(g2, gate[keep])
    print(f"[slice] FFN {inter} -> {keep.numel()} channels in one call: {t_fast*1e6:.0f} us "
          f"({auto['gather_slices']}); bit-exact vs index_select: {ok}")


if __name__ == "__main__":
    main()
