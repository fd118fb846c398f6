"""Sketch size m against SkMM's accuracy on the Fashion-MNIST *validation* split (linear probe).

    python bench/selection_fmnist_msweep.py [OUT_DIR] [--seeds 3] [--m 64,128,256,512,1024]
                                            [--n 500,1000,4000]

Same data, pretrained CNN, probe and training grid as ``selection_fmnist.py`` (its ``prepare``,
pool 10k): for each m, seed s draws a probe gradient sketch (sparse-sign, k = 8, random labels,
both from s) and SkMM with the library defaults (greedy variance design, class-balanced with the
pool labels) selects n; uniform and class-balanced uniform use the same seeds.  Reported: the
validation accuracy (the best of the weight-decay grid, as the main experiment's model choice) and
the variance proxy tr(Sigma~ Sigma~_S^+) of the selection relative to a class-balanced uniform
sample's on the same sketch.  The test split is never read.  Writes OUT_DIR/fmnist_msweep.{json,md}
(default OUT_DIR: results/selection/).

Question it answers: the main experiment clamps m (twice the pilot's intrinsic dimension, capped for
compute: 256 when this sweep was run, 512 since) and SkMM's edge over uniform fades once n >> m; does a larger m keep it?
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import selection_fmnist as E  # noqa: E402
from provenance import git_commit, machine  # noqa: E402
from selection_fmnist_validation import val_acc  # noqa: E402

from sketchprune.select import intrinsic_dimension, linear_probe_sketch, select  # noqa: E402
from sketchprune.select.skmm import variance_proxy  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default=E.RESULTS_DIR)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--m", default="64,128,256,512,1024")
    ap.add_argument("--n", default="500,1000,4000")
    a = ap.parse_args(argv)
    ms = [int(v) for v in a.m.split(",")]
    ns = [int(v) for v in a.n.split(",")]
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    t0 = time.perf_counter()
    D = E.prepare(E.POOL, False)
    y = D["y_pool"]
    pilot = linear_probe_sketch(D["F_pool"], "random", 10, m=E.PILOT_M, seed=0)[0]
    rows = []
    for m in ms:
        for s in range(a.seeds):
            sk, _ = linear_probe_sketch(D["F_pool"], "random", 10, m=m, seed=s)
            for n in ns:
                sel = {"skmm": select(n, "skmm", sk, labels=y, seed=s),
                       "uniform": select(n, "uniform", sk, seed=s),
                       "uniform-cb": select(n, "uniform", sk, labels=y, class_balanced=True, seed=s)}
                ref = variance_proxy(sk, sel["uniform-cb"].indices)
                for name, r in sel.items():
                    rows.append({"m": m, "seed": s, "n": n, "method": name,
                                 "val_accuracy": val_acc(D, r.indices, "probe", s),
                                 "variance_proxy_rel": float(variance_proxy(sk, r.indices) / ref)})
                print(f"[{time.perf_counter() - t0:5.0f} s] m {m} seed {s} n {n}: " + ", ".join(
                    f"{x['method']} {100 * x['val_accuracy']:.2f}" for x in rows[-3:]), flush=True)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "git_commit": git_commit(), "pool": E.POOL, "seeds": a.seeds,
           "pilot_intrinsic_dimension": int(intrinsic_dimension(pilot)), "rows": rows,
           "wall_seconds": time.perf_counter() - t0}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "fmnist_msweep.json"), "w") as f:
        json.dump(res, f, indent=1)
    L = ["# Fashion-MNIST, linear probe: sketch size m against SkMM (validation split)", "",
         f"{res['date']}; {res['machine']}; git {res['git_commit']}; pool {E.POOL}, {a.seeds} seeds, "
         f"{res['wall_seconds']:.0f} s.  `bench/selection_fmnist_msweep.py` (see its docstring).  Pilot sketch "
         f"(m = {E.PILOT_M}) intrinsic dimension: {res['pilot_intrinsic_dimension']} (the main experiment uses "
         f"m = clamp(2 x that, {E.M_MIN}, {E.M_MAX})).", "",
         "Validation accuracy (%), mean over seeds; SkMM - class-balanced uniform per seed, mean [min, max]; "
         "variance proxy of SkMM's selection / a class-balanced uniform sample's on the same sketch.", "",
         "| m | n | skmm | uniform-cb | uniform | skmm - uniform-cb | proxy ratio |", "|---|---|---|---|---|---|---|"]
    for m in ms:
        for n in ns:
            def acc(name):
                return np.array([r["val_accuracy"] for r in rows if r["m"] == m and r["n"] == n and r["method"] == name])
            d = 100 * (acc("skmm") - acc("uniform-cb"))
            pr = np.mean([r["variance_proxy_rel"] for r in rows if r["m"] == m and r["n"] == n and r["method"] == "skmm"])
            L.append(f"| {m} | {n} | {100 * acc('skmm').mean():.2f} | {100 * acc('uniform-cb').mean():.2f} | "
                     f"{100 * acc('uniform').mean():.2f} | {d.mean():+.2f} [{d.min():+.2f}, {d.max():+.2f}] | {pr:.2f} |")
    with open(os.path.join(a.out, "fmnist_msweep.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
