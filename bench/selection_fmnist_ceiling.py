"""How much accuracy is there to win on the Fashion-MNIST selection experiment? Uniform learning curve up to the whole pool.

    python bench/selection_fmnist_ceiling.py [OUT_DIR] [--seeds 5] [--n 500,1000,2000,4000,6000,8000,10000]
                                             [--workers 2]

Same data, pretrained CNN, pool, training protocol and hyperparameter grids (chosen per run on the
validation split) as ``selection_fmnist.py``; the coresets are uniform samples drawn exactly as that
experiment's ``uniform`` rows (``select(n, "uniform", ..., seed=s)``), so its rows at n <= 4000 are
reproduced here (checked against ``fmnist.json`` when it is in OUT_DIR), and the curve goes on to
n = 10000 = the whole pool (where the seeds differ only in training).  Both settings: the linear
probe and the fc1 + fc2 finetuning.  Writes OUT_DIR/fmnist_ceiling.{json,md} (default OUT_DIR:
results/selection/).

Question it answers: the experiment's target asks a coreset of n to beat a uniform sample of n by
one point of test accuracy.  How far is that from what more (uniform) data buys -- the accuracy of
2n uniform samples, and of all 10k?
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

from sketchprune.select import select  # noqa: E402

SETTINGS = ("probe", "finetune")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=E.RESULTS_DIR)
    ap.add_argument("--seeds", type=int, default=E.SEEDS)
    ap.add_argument("--n", default="500,1000,2000,4000,6000,8000,10000")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args(argv)
    ns = sorted({int(v) for v in a.n.split(",")})
    if a.seeds < 1 or not ns or ns[0] < 1 or ns[-1] > E.POOL:
        raise SystemExit(f"need >= 1 seed and sizes in [1, {E.POOL}], got seeds {a.seeds}, n {ns}")
    seeds = list(range(a.seeds))
    torch.set_num_threads(max(1, a.workers))
    t0 = time.perf_counter()
    D = E.prepare(E.POOL, False)
    E._log(f"prepared; pretrained test accuracy {D['pretrained_test']['accuracy']:.4f}", t0)
    jobs = []
    for n in ns:
        for s in seeds:
            idx = select(n, "uniform", D["F_pool"], seed=s).indices
            for setting in SETTINGS:
                jobs.append((setting, "uniform", n, s, idx))
    shared = {k: D[k] for k in ("F_pool", "F_val", "F_test", "H_pool", "H_val", "H_test", "y_pool", "y_val",
                                "y_test", "fc1")}
    runs = []
    if a.workers > 1:
        torch.set_num_threads(1)
        with ProcessPoolExecutor(a.workers, initializer=E._init_worker, initargs=(shared,)) as ex:
            for r in E._progress(ex.map(E._eval_shared, jobs, chunksize=2), total=len(jobs), desc="training"):
                runs.append(r)
    else:
        E._init_worker(shared)
        runs = [E._eval_shared(j) for j in E._progress(jobs, total=len(jobs), desc="training")]
    E._log(f"{len(runs)} trainings done", t0)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "git_commit": git_commit(), "pool": E.POOL, "seeds": seeds, "n": ns,
           "runs": runs, "wall_seconds": time.perf_counter() - t0}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "fmnist_ceiling.json"), "w") as f:
        json.dump(res, f, indent=1)
    text = report(res, os.path.join(a.out, "fmnist.json"))
    with open(os.path.join(a.out, "fmnist_ceiling.md"), "w") as f:
        f.write(text)
    print(text)


def _acc(runs, setting, n):
    return {r["seed"]: 100 * r["test_accuracy"] for r in runs
            if r["setting"] == setting and r["n"] == n and r["method"] == "uniform"}


def report(res, main_json):
    ns, runs = res["n"], res["runs"]
    main = None
    if os.path.exists(main_json):
        with open(main_json) as f:
            main = json.load(f)
    L = ["# Fashion-MNIST selection: the uniform learning curve up to the whole pool", "",
         f"{res['date']}; {res['machine']}; git {res['git_commit']}; pool {res['pool']}, {len(res['seeds'])} seeds, "
         f"{res['wall_seconds']:.0f} s.  `bench/selection_fmnist_ceiling.py` (see its docstring): uniform "
         "coresets drawn as in `fmnist.md`, same training protocol and validation-chosen hyperparameters; "
         f"n = {res['pool']} is the whole pool.", ""]
    for setting in SETTINGS:
        title = "Linear probe" if setting == "probe" else "Finetuning fc1 + fc2"
        L += [f"## {title}: test accuracy (%) of uniform coresets", "",
              "| n | mean [95% CI] | gain of 2n over n | whole pool - n |"
              + (" same run in fmnist.md |" if main else ""),
              "|---|---|---|---|" + ("---|" if main else "")]
        full = _acc(runs, setting, res["pool"]) if res["pool"] in ns else None
        for n in ns:
            a = _acc(runs, setting, n)
            m, lo, hi = E.ci(list(a.values()))
            two = _acc(runs, setting, 2 * n) if 2 * n in ns else None
            gain = f"{np.mean([two[s] - a[s] for s in a]):+.2f}" if two else "—"
            to_full = f"{np.mean([full[s] - a[s] for s in a]):+.2f}" if full and n != res["pool"] else "—"
            row = f"| {n} | {m:.2f} [{lo:.2f}, {hi:.2f}] | {gain} | {to_full} |"
            if main:
                prev = {r["seed"]: 100 * r["test_accuracy"] for r in main["runs"]
                        if r["setting"] == setting and r["n"] == n and r["method"] == "uniform"}
                same = prev and all(abs(prev[s] - a[s]) < 1e-9 for s in a if s in prev)
                row += (" identical |" if same else (" differs |" if prev else " — |"))
            L.append(row)
        L.append("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
