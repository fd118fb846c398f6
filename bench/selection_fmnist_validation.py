"""SkMM variants on the Fashion-MNIST *validation* split (how the library defaults were chosen).

    python bench/selection_fmnist_validation.py OUT_DIR [--setting probe|finetune|both]

Same data, model, signals and training grid as ``selection_fmnist.py`` (its ``prepare``), with a
pool of 3000 and n in {100, 400, 1000}: validation accuracy (the grid's best, as in the main
experiment's model choice) of uniform and class-balanced uniform sampling (4 seeds) and of SkMM
with c in {0.6, 0.8, 0.9, 0.95} (finetuning: {0.6, 0.9}) x rounding {top, sample} x pooled /
class-balanced, on 3 sketch seeds (m = 256; the sketch seed also draws the random labels and the
rounding).  ``--variants variance``: the variance formulation instead, greedy with eps in {1e-3, 1e-2,
1e-1, 1} and relaxed (Frank-Wolfe, 3 s per solve) + sample rounding with eps = 0.1, x pooled /
class-balanced (written to
fmnist_validation_<setting>_variance.md).  The test split is never read.  Writes
OUT_DIR/fmnist_validation_<setting>.md.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import selection_fmnist as E  # noqa: E402

from sketchprune.select import linear_probe_sketch, select  # noqa: E402

POOL, N_SWEEP, M = 3000, (100, 400, 1000), 256


def val_acc(D, idx, setting, seed):
    y, best = D["y_pool"], 0.0
    for hp in (E.PROBE_WD if setting == "probe" else E.FT_LR):
        if setting == "probe":
            pred, Zv = E.train_probe(D["F_pool"][idx], y[idx], hp, seed), D["F_val"]
        else:
            pred, Zv = E.train_finetune(D["fc1"], D["H_pool"][idx], y[idx], hp, seed), D["H_val"]
        best = max(best, E.metrics(pred(Zv), D["y_val"])[0])
    return best


def _variants(kind, setting):
    """(name, select options) of the SkMM variants compared."""
    out = []
    if kind == "hinge":
        for c in ((0.6, 0.8, 0.9, 0.95) if setting == "probe" else (0.6, 0.9)):
            for r in ("top", "sample"):
                out.append((f"skmm c={c} {r}", dict(formulation="hinge", c=c, rounding=r, time_limit=30)))
    else:
        for e in (1e-3, 1e-2, 1e-1, 1.0):
            out.append((f"skmm variance eps={e} greedy", dict(formulation="variance", eps=e, rounding="greedy")))
        out.append(("skmm variance eps=0.1 sample", dict(formulation="variance", eps=0.1, rounding="sample",
                                                          time_limit=3)))
    return out


def run(D, setting, out, kind="hinge"):
    y = D["y_pool"]
    if setting == "probe":
        sks = {s: linear_probe_sketch(D["F_pool"], "random", 10, m=M, seed=s)[0] for s in range(3)}
    else:
        sks = {s: E.last_two_layer_sketch(E.finetune_start(D), D["x_pool"], M, seed=s)[0] for s in range(3)}
    res = {}
    for n in N_SWEEP:
        for s in range(4):
            res.setdefault(("uniform", n), []).append(val_acc(D, select(n, "uniform", sks[0], seed=s).indices, setting, s))
            idx = select(n, "uniform", sks[0], labels=y, class_balanced=True, seed=s).indices
            res.setdefault(("uniform-cb", n), []).append(val_acc(D, idx, setting, s))
        for s in range(3):
            for name, opts in _variants(kind, setting):
                for cb in (False, True):
                    sel = select(n, "skmm", sks[s], labels=y if cb else None, class_balanced=cb, seed=s, **opts)
                    res.setdefault((f"{name}{' cb' if cb else ''}", n), []).append(val_acc(D, sel.indices, setting, s))
        print(f"{setting}: n = {n} done", flush=True)
    names = sorted({k[0] for k in res}, key=lambda m: -np.mean([np.mean(res[(m, n)]) for n in N_SWEEP]))
    L = [f"# SkMM variants on the Fashion-MNIST validation split ({setting})\n",
         f"Pool {POOL}, m = {M}; validation accuracy (%), mean +- sd over seeds (uniform: 4, SkMM: 3 sketch seeds). "
         "cb = class-balanced with the pool labels. Produced by `bench/selection_fmnist_validation.py`.\n",
         "| variant | " + " | ".join(f"n = {n}" for n in N_SWEEP) + " | mean |", "|---|" + "---|" * (len(N_SWEEP) + 1)]
    for m in names:
        cells = [f"{100 * np.mean(res[(m, n)]):.2f} +- {100 * np.std(res[(m, n)]):.2f}" for n in N_SWEEP]
        L.append(f"| {m} | " + " | ".join(cells) + f" | {100 * np.mean([np.mean(res[(m, n)]) for n in N_SWEEP]):.2f} |")
    path = os.path.join(out, f"fmnist_validation_{setting}{'' if kind == 'hinge' else '_' + kind}.md")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    print(open(path).read())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--setting", choices=["probe", "finetune", "both"], default="both")
    ap.add_argument("--variants", choices=["hinge", "variance"], default="hinge")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(a.out, exist_ok=True)
    D = E.prepare(POOL, False)
    for setting in (("probe", "finetune") if a.setting == "both" else (a.setting,)):
        run(D, setting, a.out, a.variants)


if __name__ == "__main__":
    main()
