"""Pool size against SkMM's margin on the Fashion-MNIST *validation* split (probe and finetuning).

    python bench/selection_fmnist_pool.py [OUT_DIR] [--seeds 3] [--pools 10000,45000]
                                          [--n 500,1000,2000,4000] [--workers 2]

The main experiment (``selection_fmnist.py``) selects from a 10k subset of the 45k training images
outside the pretraining and validation splits, for compute.  Here the same pipeline -- the same
pretrained CNN, probe and finetuning sketches (m = 512, one sparse-sign matrix and one set of
random labels per seed), SkMM with the library defaults (class-balanced with the pool labels),
uniform and class-balanced uniform with the same seeds, the same training protocol and
hyperparameter grids -- runs on each pool size, where a pool of p is the first p images of the 45k
(so the 10k pool is the main experiment's).  Reported: validation accuracy (the best of the grid,
the main experiment's model choice) and SkMM - class-balanced uniform per seed.  The test split is
never read.  Writes OUT_DIR/fmnist_pool.{json,md} (default OUT_DIR: results/selection/).

Question it answers: SkMM's edge over uniform fades at n >= 2000 from a pool of 10k, where the
whole pool is only 0.6-1.5 points of test accuracy above a uniform 4000
(``fmnist_ceiling.md``).  Does a larger pool -- more to choose from, the experiment as the task
states it -- leave SkMM more to win?
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import selection_fmnist as E  # noqa: E402
from provenance import git_commit, machine  # noqa: E402
from selection_fmnist_validation import val_acc  # noqa: E402

from sketchprune.select import linear_probe_sketch, select  # noqa: E402

M = 512
SETTINGS = ("probe", "finetune")
METHODS = ("skmm", "uniform", "uniform-cb")


def sub_pool(D, p):
    """The first p images of D's pool as a pool of its own (probe features standardised on it,
    as ``prepare`` does)."""
    H = D["H_pool"][:p]
    mu, sd = H.mean(0), H.std(0).clamp_min(1e-6)
    return {**D, "x_pool": D["x_pool"][:p], "y_pool": D["y_pool"][:p], "H_pool": H,
            "F_pool": (H - mu) / sd, "F_val": (D["H_val"] - mu) / sd, "F_test": None}


_SHARED = {}


def _init(Ds):
    _SHARED.update(Ds)


def _job(job):
    pool, setting, method, n, seed, idx = job
    torch.set_num_threads(1)
    return {"pool": pool, "setting": setting, "method": method, "n": n, "seed": seed,
            "val_accuracy": val_acc(_SHARED[pool], idx, setting, seed)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=E.RESULTS_DIR)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pools", default="10000,45000")
    ap.add_argument("--n", default="500,1000,2000,4000")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--report-only", action="store_true", help="rewrite OUT_DIR/fmnist_pool.md from its .json")
    a = ap.parse_args(argv)
    if a.report_only:
        with open(os.path.join(a.out, "fmnist_pool.json")) as f:
            text = report(json.load(f))
        with open(os.path.join(a.out, "fmnist_pool.md"), "w") as f:
            f.write(text)
        print(text)
        return
    pools = sorted(int(v) for v in a.pools.split(","))
    ns = [int(v) for v in a.n.split(",")]
    seeds = list(range(a.seeds))
    torch.set_num_threads(max(1, a.workers))
    t0 = time.perf_counter()
    D = E.prepare(max(pools), False)
    if D["x_pool"].shape[0] < max(pools):
        raise SystemExit(f"only {D['x_pool'].shape[0]} images outside the pretraining / validation splits")
    Ds = {p: sub_pool(D, p) for p in pools}
    ft_model = E.finetune_start(D)
    jobs, sel_seconds = [], []
    for p in pools:
        Dp, y = Ds[p], Ds[p]["y_pool"]
        for s in seeds:
            sks = {"probe": linear_probe_sketch(Dp["F_pool"], "random", 10, m=M, seed=s)[0],
                   "finetune": E.last_two_layer_sketch(ft_model, Dp["x_pool"], M, seed=s)[0]}
            for setting in SETTINGS:
                for n in ns:
                    t1 = time.perf_counter()
                    sel = {"skmm": select(n, "skmm", sks[setting], labels=y, seed=s),
                           "uniform": select(n, "uniform", sks[setting], seed=s),
                           "uniform-cb": select(n, "uniform", sks[setting], labels=y, class_balanced=True, seed=s)}
                    sel_seconds.append({"pool": p, "setting": setting, "n": n, "seed": s,
                                        "seconds": time.perf_counter() - t1})
                    for method in METHODS:
                        jobs.append((p, setting, method, n, s, sel[method].indices))
            E._log(f"pool {p} seed {s}: sketched and selected", t0)
    rows = []
    keep = ("F_pool", "F_val", "H_pool", "H_val", "y_pool", "y_val", "fc1")  # what val_acc reads
    shared = {p: {k: Ds[p][k] for k in keep} for p in pools}
    with ProcessPoolExecutor(max(1, a.workers), initializer=_init, initargs=(shared,)) as ex:
        for r in E._progress(ex.map(_job, jobs, chunksize=2), total=len(jobs), desc="training"):
            rows.append(r)
    E._log(f"{len(rows)} trainings done", t0)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "git_commit": git_commit(), "pools": pools, "seeds": seeds, "n": ns, "m": M,
           "rows": rows, "selection_seconds": sel_seconds, "wall_seconds": time.perf_counter() - t0}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "fmnist_pool.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = report(res)
    with open(os.path.join(a.out, "fmnist_pool.md"), "w") as f:
        f.write(text)
    print(text)


def report(res):
    rows = res["rows"]

    def acc(p, setting, method, n):
        return np.array([100 * r["val_accuracy"] for r in sorted(rows, key=lambda r: r["seed"])
                         if (r["pool"], r["setting"], r["method"], r["n"]) == (p, setting, method, n)])

    L = ["# Fashion-MNIST: pool size against SkMM (validation split)", "",
         f"{res['date']}; {res['machine']}; git {res['git_commit']}; {len(res['seeds'])} seeds, m = {res['m']}, "
         f"{res['wall_seconds']:.0f} s.  `bench/selection_fmnist_pool.py` (see its docstring).", "",
         "Validation accuracy (%), mean over seeds; SkMM - class-balanced uniform per seed, mean [min, max].", ""]
    for setting in SETTINGS:
        L += [f"## {'Linear probe' if setting == 'probe' else 'Finetuning fc1 + fc2'}", "",
              "| pool | n | skmm | uniform-cb | uniform | skmm - uniform-cb |", "|---|---|---|---|---|---|"]
        for p in res["pools"]:
            for n in res["n"]:
                s, cb, u = (acc(p, setting, m, n) for m in ("skmm", "uniform-cb", "uniform"))
                d = s - cb
                L.append(f"| {p} | {n} | {s.mean():.2f} | {cb.mean():.2f} | {u.mean():.2f} | "
                         f"{d.mean():+.2f} [{d.min():+.2f}, {d.max():+.2f}] |")
        L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
