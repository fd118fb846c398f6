"""Run time of the greedy structured-OBS criterion on layer-sized problems.

    python bench/greedy_speed.py OUT_DIR [--sizes smollm2,llama7b] [--blocks 1,8,32] [--device cpu]
                                 [--max-steps 40] [--threads N]

For each size, one FFN (down_proj: d x d_ff, 20% of the channels removed) and the attention
output (o_proj, 20% of the query heads, the same number per KV group) on synthetic data: a
random W and H = E[x x^T] of a low-rank-plus-diagonal activation model.  Reported: the damped
inverse's time, the time per greedy step and for the whole removal (measured when it takes at
most ``--max-steps`` steps, otherwise extrapolated: a step's time is the difference of a run of
``--max-steps`` steps and a run of one, divided by the steps between them, at full size -- an
upper bound, since the arrays shrink as units go).  The damped inverse is computed and timed once
per problem and handed to each run.  Writes OUT_DIR/greedy_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from sketchprune.prune.greedy import _damped_inverse, greedy_obs

SIZES = {  # d, d_ff, heads, kv heads, head_dim
    "smollm2": (576, 1536, 9, 3, 64),
    "llama7b": (4096, 11008, 32, 32, 128),
}


def synthetic(d, n, device, seed=0, rank=256):
    g = torch.Generator(device="cpu").manual_seed(seed)
    A = torch.randn(n, rank, generator=g, dtype=torch.float64) / rank ** 0.5
    H = (A @ A.T).to(device)
    H.diagonal().add_(0.1 * torch.rand(n, generator=g, dtype=torch.float64).to(device))
    W = (torch.randn(d, n, generator=g, dtype=torch.float64) / n ** 0.5).to(device)
    return W, H


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def _partial_quota(quota, r):
    """Per-group quotas summing to r <= quota.sum(), filled round-robin within ``quota``."""
    q = torch.zeros_like(quota)
    i = 0
    while int(q.sum()) < r:
        if q[i] < quota[i]:
            q[i] += 1
        i = (i + 1) % q.numel()
    return q


def run_case(name, W, H, width, n_remove, block, device, max_steps, t_inv, Hi, **kw):
    steps = -(-n_remove // block)
    measured = min(steps, max_steps)

    def run(k):
        r = min(n_remove, k * block)
        args = dict(kw)
        if "quota" in args and r < n_remove:   # a partial run removes r units: quotas summing to r
            args["quota"] = _partial_quota(kw["quota"], r)
        return timed(lambda: greedy_obs(W, H, width=width, n_remove=r, block=block, h_inverse=Hi, **args),
                     device)[0]
    t_run = run(measured)
    if measured == steps:
        per_step = None
        total = t_inv + t_run - timed(lambda: Hi.clone(), device)[0]   # the run copies the given inverse
    else:   # fixed costs (copies, the final compaction) cancel in the difference of two runs
        t_one = run(1)
        per_step = (t_run - t_one) / (measured - 1)
        total = t_inv + t_one + per_step * (steps - 1)
    row = {"case": name, "units": W.shape[1] // width, "width": width, "remove": n_remove, "block": block,
           "steps": steps, "steps_measured": measured, "inverse_s": t_inv,
           "per_step_s": per_step if per_step is not None else (total - t_inv) / steps,
           "total_s": total, "extrapolated": measured != steps}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--sizes", default="smollm2,llama7b")
    ap.add_argument("--blocks", default="1,8,32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.max_steps < 2:
        ap.error(f"--max-steps must be >= 2 (a step's time is the difference of a run of that many steps "
                 f"and a run of one), got {args.max_steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for size in args.sizes.split(","):
        d, dff, nh, nkv, hd = SIZES[size]
        W, H = synthetic(d, dff, device)
        t_inv, Hi = timed(lambda: _damped_inverse(H, 1e-2), device)
        for block in (int(b) for b in args.blocks.split(",")):
            rows.append(run_case(f"{size}-ffn", W, H, 1, round(0.2 * dff), block, device, args.max_steps, t_inv, Hi))
        del W, H, Hi
        W, H = synthetic(d, nh * hd, device, seed=1)
        t_inv, Hi = timed(lambda: _damped_inverse(H, 1e-2), device)
        g = nh // nkv
        per = max(1, round(0.2 * g)) if g > 1 else 0
        if g > 1:   # the same number per KV group
            kw = dict(group_of=torch.arange(nh) // g, quota=torch.full((nkv,), per))
            rows.append(run_case(f"{size}-heads", W, H, hd, per * nkv, 1, device, args.max_steps, t_inv, Hi, **kw))
        else:
            rows.append(run_case(f"{size}-heads", W, H, hd, round(0.2 * nh), 1, device, args.max_steps, t_inv, Hi))
    os.makedirs(args.out_dir, exist_ok=True)
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    path = os.path.join(args.out_dir, "greedy_speed.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"info": info, "rows": rows}, f, indent=1)
    os.replace(path + ".tmp", path)
    print("wrote", path)


if __name__ == "__main__":
    main()
