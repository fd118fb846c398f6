"""Pruning study on SmolLM2-135M-Instruct: every criterion, as published and with reconstruction,
at several sparsities; held-out perplexity and top-1 accuracy on two corpora.

    python bench/prune_study.py [OUT_DIR] [--criteria all|a,b,...] [--sparsities 0.2,0.5,0.1,0.3]
                                [--variants published,recon] [--calib-seqs 32] [--eval-tokens 4096]
                                [--threads 2] [--stop-after MINUTES] [--force] [--report-only]

OUT_DIR (default results/pruning/study/) receives:

* ``defaults.json`` -- phase 1, run before anything else and used by every ``recon`` run: the
  sequential refit target (``refit_target`` "local" or "dense" of ``prune_model``) chosen on a
  **validation** slice of the calibration corpus.  The calibration and validation sequences are
  consecutive 512-token windows of the wiki ``calib`` split (the first ``--calib-seqs`` calibrate,
  the next ``--val-seqs`` validate); sigma and greedy are pruned to 20% sequentially with
  reconstruction for each target, and the target with the lower mean log validation perplexity
  wins.  The ``heldout`` split is never read in this phase.
* ``runs/<criterion>_<variant>_<sparsity>.json`` -- one per run, written atomically; a run whose
  JSON exists is skipped unless ``--force``.  ``published``: one shot, no reconstruction (flap with
  its bias fold), i.e. ``prune_model(sequential=False, reconstruct=False)``.  ``recon``: sequential
  with this package's least-squares reconstruction (flap without its bias fold, refit target from
  phase 1).  ``runs/dense.json``: the dense model's evaluation.
* ``study.md`` and ``ppl_vs_sparsity.png``, ``layer_errors.png``, regenerated from the JSONs alone
  with ``--report-only``.

Calibration: ``--calib-seqs`` x 512 tokens of the wiki calibration split (batches of 4).
Evaluation: ``--eval-tokens`` tokens of the held-out split of wiki and of austen, cut into
windows of 128 and of 1024 tokens (the same tokens for both lengths; never calibration tokens),
perplexity and top-1 next-token accuracy via ``sketchprune.eval.evaluate``.  Runs are executed in
priority order: sparsities 0.2 and 0.5 first (all criteria published, then with reconstruction),
then 0.1 and 0.3.  ``--stop-after`` stops starting new runs after that many minutes.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import sys
import time
from pathlib import Path

import torch

from provenance import git_commit, machine
from prune_common import count_params, layer_records, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "pruning" / "study"

# execution / table order: the package's methods and flap first, then the other baselines
CRITERIA_ORDER = ("flap", "sigma", "greedy", "head-similarity", "wanda-sp", "taylor", "fisher",
                  "magnitude-depth2", "magnitude-l1", "magnitude-l2", "random")
PACKAGE_METHODS = ("sigma", "greedy", "head-similarity")
VARIANTS = ("published", "recon")
SPARSITIES = (0.2, 0.5, 0.1, 0.3)             # priority order
PRIORITY = ((0.2, 0.5), (0.1, 0.3))
CORPORA = ("wiki", "austen")
EVAL_LENS = (128, 1024)
CALIB_SEQ_LEN = 512
BATCH_SIZE = 4
TARGET_RATIO = 0.7


def run_name(criterion: str, variant: str, sparsity: float) -> str:
    return f"{criterion}_{variant}_{sparsity:g}"


def eval_key(corpus: str, seq_len: int) -> str:
    return f"{corpus}@{seq_len}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def all_criteria() -> list[str]:
    from sketchprune.prune import CRITERIA

    known = [c for c in CRITERIA_ORDER if c in CRITERIA]
    return known + sorted(c for c in CRITERIA if c not in CRITERIA_ORDER)


def parse_list(s: str, kind, allowed=None, what="value"):
    out = [kind(x.strip()) for x in s.split(",") if x.strip()]
    if not out:
        raise SystemExit(f"prune_study: empty list of {what}s")
    if allowed is not None:
        bad = [x for x in out if x not in allowed]
        if bad:
            raise SystemExit(f"prune_study: unknown {what}(s) {', '.join(map(str, bad))}; "
                             f"known: {', '.join(map(str, allowed))}")
    return out


def plan_runs(criteria, variants, sparsities) -> list[tuple[str, str, float]]:
    """(criterion, variant, sparsity) in priority order: each sparsity tier (0.2/0.5, then 0.1/0.3;
    sparsities outside them last); within a tier first the runs the target check and its
    decomposition need (flap and the package's methods, published then recon), then the other
    baselines (published then recon); criteria in the order given."""
    tiers = [[s for s in t if s in sparsities] for t in PRIORITY]
    tiers.append([s for s in sparsities if not any(s in t for t in PRIORITY)])
    key = ("flap",) + PACKAGE_METHODS
    groups = [[c for c in criteria if c in key], [c for c in criteria if c not in key]]
    out = []
    for tier in tiers:
        for group in groups:
            for v in [v for v in VARIANTS if v in variants]:
                for c in group:
                    for s in tier:
                        out.append((c, v, s))
    return out


# --------------------------------------------------------------------------- measuring

def prune_kwargs(variant: str, refit_target: str) -> dict:
    if variant == "published":
        return {"sequential": False, "reconstruct": False}
    if variant == "recon":
        return {"sequential": True, "reconstruct": True, "flap_bias": "none", "refit_target": refit_target}
    raise ValueError(f"unknown variant {variant!r}")


def evaluate_all(model, eval_sets: dict) -> dict:
    from sketchprune.eval import evaluate

    out = {}
    for key, ids in eval_sets.items():
        out[key] = evaluate(model, ids, chunk_size=4 if ids.shape[1] <= 128 else 1)
    return out


def prune_copy(dense, calib_batches, criterion, sparsity, kwargs, seed):
    from sketchprune.prune import prune_model

    model = copy.deepcopy(dense)
    t = time.perf_counter()
    rep = prune_model(model, calib_batches, sparsity=sparsity, criterion=criterion, head_mode="query", seed=seed,
                      progress=False, **kwargs)
    return model, rep, time.perf_counter() - t


def run_defaults_phase(dense, tok, args, out: Path) -> dict:
    """Phase 1: choose refit_target on a validation slice of the wiki calibration split."""
    from sketchprune.datasets.text import text_tokens
    from sketchprune.eval import evaluate

    path = out / "defaults.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    if state.get("choice") and not args.force_defaults:
        print(f"defaults: refit_target={state['choice']} (from {path})", flush=True)
        return state
    n_cal, n_val = args.calib_seqs, args.val_seqs
    ids = text_tokens("wiki", tok, CALIB_SEQ_LEN, (n_cal + n_val) * CALIB_SEQ_LEN, "calib", seed=args.seed)
    calib, val = ids[:n_cal], ids[n_cal:]
    state.update({"date": now(), "machine": machine(), "git_commit": git_commit(),
                  "args": {"calib_seqs": n_cal, "val_seqs": n_val, "seq_len": CALIB_SEQ_LEN, "seed": args.seed,
                           "sparsity": 0.2, "criteria": ["sigma", "greedy"], "variant": "recon"},
                  "slices": f"wiki 'calib' split (seed {args.seed}): windows 0-{n_cal - 1} calibrate, "
                            f"windows {n_cal}-{n_cal + n_val - 1} validate; the 'heldout' split is not read",
                  "library_default": "local"})
    runs = state.setdefault("runs", {})
    if "dense" not in runs:
        runs["dense"] = {"val": evaluate(dense, val, chunk_size=1)}
        write_json_atomic(path, state)
    for target in ("local", "dense"):
        for crit in ("sigma", "greedy"):
            key = f"{crit}_{target}"
            if key in runs and not args.force_defaults:
                continue
            model, rep, secs = prune_copy(dense, list(calib.split(BATCH_SIZE)), crit, 0.2,
                                          prune_kwargs("recon", target), args.seed)
            runs[key] = {"criterion": crit, "refit_target": target, "prune_seconds": secs,
                         "val": evaluate(model, val, chunk_size=1), "layers": layer_records(rep)}
            del model
            print(f"defaults: {key}: validation ppl {runs[key]['val']['ppl']:.3f} ({secs:.0f}s)", flush=True)
            write_json_atomic(path, state)
    score = {t: sum(math.log(runs[f"{c}_{t}"]["val"]["ppl"]) for c in ("sigma", "greedy")) / 2
             for t in ("local", "dense")}
    per_crit = {c: min(("local", "dense"), key=lambda t: runs[f"{c}_{t}"]["val"]["ppl"]) for c in ("sigma", "greedy")}
    state["mean_log_val_ppl"] = score
    state["best_per_criterion"] = per_crit
    state["choice"] = min(score, key=score.get)
    state["agrees_with_library_default"] = state["choice"] == state["library_default"]
    write_json_atomic(path, state)
    print(f"defaults: refit_target={state['choice']} (mean log val ppl {score})", flush=True)
    return state


def report_subprocess(out: Path) -> None:
    """Regenerate the report in a separate process from the JSONs (with this file as it is on disk
    now); a failure is printed and does not stop the runs."""
    import subprocess

    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), "--report-only"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"prune_study: writing the report failed (the runs go on):\n{r.stderr[-2000:]}", flush=True)


# --------------------------------------------------------------------------- report

def load_runs(out: Path) -> tuple[dict | None, dict, dict]:
    """(dense record, {name: run record} of finished runs, {name: error} of failed ones)."""
    runs_dir = out / "runs"
    dense, runs, failed = None, {}, {}
    if not runs_dir.is_dir():
        return dense, runs, failed
    for f in sorted(runs_dir.glob("*.json")):
        r = json.loads(f.read_text())
        if f.stem == "dense":
            dense = r
        elif "error" in r:
            failed[f.stem] = r["error"]
        else:
            runs[f.stem] = r
    return dense, runs, failed


def _ppl(r, key):
    e = (r or {}).get("eval", {}).get(key)
    return None if e is None else e["ppl"]


def _fmt(x, digits=None):
    if x is None:
        return "-"
    if digits is None:
        digits = 2 if x < 100 else (1 if x < 1000 else 0)
    return f"{x:,.{digits}f}"


def _fr(x):
    """A ratio: two decimals, or two significant digits below 0.1."""
    if x is None:
        return "-"
    return f"{x:.2f}" if abs(x) >= 0.1 else f"{x:.2g}"


def _ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def _rows(runs):
    crits = [c for c in CRITERIA_ORDER if any(r["criterion"] == c for r in runs.values())]
    crits += sorted({r["criterion"] for r in runs.values()} - set(crits))
    return [(c, v) for c in crits for v in VARIANTS]


def _sparsities(runs):
    return sorted({r["sparsity"] for r in runs.values()})


def _table(runs, dense, sps, cell) -> list[str]:
    L = ["| criterion | variant | " + " | ".join(f"{s:.0%}" for s in sps) + " |",
         "|---|---|" + "---:|" * len(sps)]
    L.append("| dense | | " + " | ".join([cell(dense)] * len(sps)) + " |")
    for c, v in _rows(runs):
        cells = [cell(runs.get(run_name(c, v, s))) for s in sps]
        if any(x != "-" for x in cells):
            L.append(f"| {c} | {v} | " + " | ".join(cells) + " |")
    return L


def _validation_pick(defaults) -> str | None:
    """The package method with the lower validation perplexity in the defaults phase (chosen target)."""
    if not defaults or not defaults.get("choice"):
        return None
    t = defaults["choice"]
    vals = {c: defaults["runs"][f"{c}_{t}"]["val"]["ppl"] for c in ("sigma", "greedy")
            if f"{c}_{t}" in defaults["runs"]}
    return min(vals, key=vals.get) if vals else None


def _target_section(runs, dense, keys, defaults) -> list[str]:
    pick = _validation_pick(defaults)
    L = ["## Target check: the package's methods with reconstruction vs FLAP as published", "",
         f"Increase of held-out perplexity over dense, as a fraction of flap (published)'s increase; target <= "
         f"{TARGET_RATIO}.  All three package methods are listed.  `best` is the best on these evaluation "
         f"numbers (a choice made after looking at evaluation text, so it flatters); the method chosen before "
         f"any evaluation, on the validation slice of the defaults phase (20%), is **{pick or 'none'}**, and "
         f"its ratio is the honest one.", ""]
    for sp in (0.2, 0.5):
        L += [f"### {sp:.0%}", "", "| eval | dense | flap published | " +
              " | ".join(f"{m} recon (ratio)" for m in PACKAGE_METHODS) + " | best | target met (validation pick / best) |",
              "|---|---:|---:|" + "---:|" * len(PACKAGE_METHODS) + "---|---|"]
        for key in keys:
            d = _ppl(dense, key)
            f = _ppl(runs.get(run_name("flap", "published", sp)), key)
            cells, ratios = [], {}
            for m in PACKAGE_METHODS:
                x = _ppl(runs.get(run_name(m, "recon", sp)), key)
                r = _ratio(None if x is None else x - d, None if f is None else f - d)
                ratios[m] = r
                cells.append("-" if x is None else f"{_fmt(x)} ({_fr(r)})")
            have = {m: r for m, r in ratios.items() if r is not None}
            best = min(have, key=have.get) if have else None
            def met(m):
                return "-" if m not in have else ("yes" if have[m] <= TARGET_RATIO else "no")
            met = f"{met(pick)} / {met(best)}"
            L.append(f"| {key} | {_fmt(d)} | {_fmt(f)} | " + " | ".join(cells) + f" | {best or '-'} | {met} |")
        L.append("")
    return L


def _decomposition(runs, dense, keys) -> list[str]:
    L = ["## Where the gap comes from: criterion vs reconstruction", "",
         "Each cell: increase of perplexity over dense, and in brackets that increase divided by flap "
         "(published)'s.  `published` = the criterion alone, one shot (flap with its bias fold); `recon` = "
         "sequential with this package's reconstruction (flap without its fold).  Reading: *criterion alone* "
         "compares X published with flap published; *reconstruction* is X recon / X published; *criterion under "
         "the same reconstruction* is X recon / flap recon.", ""]
    methods = ("flap",) + PACKAGE_METHODS
    for sp in (0.2, 0.5):
        L += [f"### {sp:.0%}", "", "| eval | " + " | ".join(f"{m} {v}" for m in methods for v in VARIANTS) + " |",
              "|---|" + "---:|" * (2 * len(methods))]
        for key in keys:
            d = _ppl(dense, key)
            f = _ppl(runs.get(run_name("flap", "published", sp)), key)
            cells = []
            for m in methods:
                for v in VARIANTS:
                    x = _ppl(runs.get(run_name(m, v, sp)), key)
                    inc = None if x is None or d is None else x - d
                    r = _ratio(inc, None if f is None or d is None else f - d)
                    cells.append("-" if inc is None else f"{_fmt(inc)} ({_fr(r)})")
            L.append(f"| {key} | " + " | ".join(cells) + " |")
        L.append("")
        key = keys[0] if keys else None
        if key is None:
            continue
        d = _ppl(dense, key)
        inc = {(m, v): (None if _ppl(runs.get(run_name(m, v, sp)), key) is None
                        else _ppl(runs.get(run_name(m, v, sp)), key) - d) for m in methods for v in VARIANTS}
        lines = []
        for m in PACKAGE_METHODS:
            a = _ratio(inc[(m, "published")], inc[("flap", "published")])
            b = _ratio(inc[(m, "recon")], inc[(m, "published")])
            c = _ratio(inc[(m, "recon")], inc[("flap", "recon")])
            t = _ratio(inc[(m, "recon")], inc[("flap", "published")])
            lines.append(f"- {m} ({key}): criterion alone {_fr(a)}x flap's increase; reconstruction multiplies "
                         f"its increase by {_fr(b)}; with the same reconstruction it is {_fr(c)}x flap "
                         f"recon's; total {_fr(t)}x flap published's.")
        fr = _ratio(inc[("flap", "recon")], inc[("flap", "published")])
        lines.append(f"- flap ({key}): this package's reconstruction instead of FLAP's bias fold multiplies flap's "
                     f"increase by {_fr(fr)}.")
        L += lines + [""]
    return L


def _layer_error_summary(runs) -> list[str]:
    rec = [(c, s) for c, v in _rows(runs) if v == "recon" for s in _sparsities(runs)
           if run_name(c, "recon", s) in runs]
    if not rec:
        return []
    L = ["## Reconstruction error per layer (recon runs; mean over layers)", "",
         "Relative error of the refit matrix's output against its target: in-sample (the calibration batches "
         "fitted), held-out (the last quarter of the calibration batches, which chose the regularisation), and "
         "held-out without any refit (the kept units with the dense weights).", "",
         "| run | down_proj in-sample | down_proj held-out | down_proj held-out no refit | o_proj in-sample "
         "| o_proj held-out | o_proj held-out no refit |", "|---|---:|---:|---:|---:|---:|---:|"]

    def mean(layers, field, k):
        xs = [(l.get(field) or {}).get(k) for l in layers]
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None
    for c, s in rec:
        layers = runs[run_name(c, "recon", s)]["layers"]
        cells = [mean(layers, f, k) for k in ("down", "o")
                 for f in ("recon_rel_error", "heldout_rel_error", "no_refit_heldout_rel_error")]
        L.append(f"| {run_name(c, 'recon', s)} | " + " | ".join(_fmt(x, 3) for x in cells) + " |")
    return L + [""]


def _plot_ppl(runs, dense, keys, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if k.endswith("@1024")]
    fig, axes = plt.subplots(1, len(keys), figsize=(7 * len(keys), 5.5), squeeze=False)
    crits = [c for c, v in _rows(runs) if v == "published"]
    colors = list(plt.get_cmap("tab10").colors) + ["black", "olive", "navy"]
    for ax, key in zip(axes[0], keys):
        d = _ppl(dense, key)
        for i, c in enumerate(crits):
            for v, ls, mk in (("published", "--", "o"), ("recon", "-", "s")):
                pts = sorted((r["sparsity"], _ppl(r, key)) for r in runs.values()
                             if r["criterion"] == c and r["variant"] == v and _ppl(r, key) is not None)
                if not pts:
                    continue
                xs, ys = [0.0] + [p[0] for p in pts], [d] + [p[1] for p in pts]
                ax.plot(xs, ys, ls=ls, marker=mk, ms=4, color=colors[i % len(colors)], label=f"{c} {v}")
        ax.axhline(d, color="k", lw=0.8, ls=":", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (fraction of attention + MLP block parameters removed)")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"SmolLM2-135M, {key.replace('@', ' held-out, seq-len ')}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_layer_errors(runs, path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, s) for c in ("sigma", "greedy") for s in (0.2, 0.5)]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    missing = []
    for ax, (c, s) in zip(axes.ravel(), panels):
        r = runs.get(run_name(c, "recon", s))
        ax.set_title(f"{c} recon {s:.0%}")
        if r is None:
            ax.text(0.5, 0.5, "run missing", ha="center", va="center", transform=ax.transAxes)
            missing.append(run_name(c, "recon", s))
            continue
        layers = r["layers"]
        xs = [l["layer"] for l in layers]
        for k, color in (("down", "tab:blue"), ("o", "tab:red")):
            def series(field):
                return [(l.get(field) or {}).get(k) for l in layers]
            proj = "down_proj" if k == "down" else "o_proj"
            ax.plot(xs, series("recon_rel_error"), "-o", ms=3, color=color, label=f"{proj} in-sample")
            ax.plot(xs, series("heldout_rel_error"), "--s", ms=3, color=color, label=f"{proj} held-out")
            ax.plot(xs, series("no_refit_heldout_rel_error"), ":", color=color, alpha=0.6,
                    label=f"{proj} held-out, no refit")
        ax.set_ylabel("relative output error")
        ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    if not missing or len(missing) < len(panels):
        next(a for a, (c, s) in zip(axes.ravel(), panels) if run_name(c, "recon", s) not in missing).legend(fontsize=7)
    fig.suptitle("Per-layer relative reconstruction error of the refit matrices: in-sample (calibration batches "
                 "fitted) vs held-out calibration batches")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return missing


def write_report(out: Path) -> None:
    """study.md + the two plots, from OUT_DIR/defaults.json and OUT_DIR/runs/*.json alone."""
    dense, runs, failed = load_runs(out)
    if dense is None:
        raise SystemExit(f"prune_study: {out / 'runs' / 'dense.json'} is missing; nothing to report")
    defaults_path = out / "defaults.json"
    defaults = json.loads(defaults_path.read_text()) if defaults_path.exists() else None
    setup = dense["setup"]
    keys = [k for k in (eval_key(c, L) for L in (1024, 128) for c in CORPORA) if k in dense["eval"]]
    cal, ev = setup["calibration"], setup["evaluation"]
    L = ["# Structured pruning study: SmolLM2-135M-Instruct, every criterion as published and with "
         "reconstruction", "",
         f"Generated by `bench/prune_study.py` from `runs/*.json` and `defaults.json`.  Dense evaluation: "
         f"{dense['date']}, git {dense['git_commit']}, {dense['machine']}.", "",
         f"- Model: {setup['model']}; the dense baseline is the dequantized model.",
         f"- Calibration: wiki `calib` split ({cal['slice']}), {cal['sequences']} x {cal['seq_len']} = "
         f"{cal['tokens']} tokens, batches of {cal['batch_size']}, seed {cal['seed']}.  With reconstruction the "
         f"last quarter of the batches is held out inside the pipeline to choose each layer's regularisation.",
         f"- Evaluation: the `heldout` split of each corpus ("
         + "; ".join(f"{c}: {s}" for c, s in ev["slices"].items())
         + f"), the same {ev['tokens_per_set']} tokens per corpus cut into windows of "
         + " and ".join(f"{L} ({n} sequences)" for L, n in sorted({(v["seq_len"], v["sequences"])
                                                                  for v in ev["sets"].values()}))
         + f"; perplexity (token-weighted) and top-1 next-token accuracy.  Never calibration "
           f"tokens.  One seed, one calibration draw: differences of a few percent are within noise.",
         "- Sparsity: fraction of the attention + MLP parameters of every decoder layer removed (head_mode "
         "`query`, the same fraction per layer).  `published`: one shot from dense-model statistics, no "
         "reconstruction (flap with its bias compensation, created in memory).  `recon`: sequential, "
         "least-squares refit of down_proj / o_proj (flap without its bias fold).",
         f"- Threads: {setup['threads']} on a 2-core machine shared with other work (times are noisy)."]
    if ev.get("unavailable"):
        L.append("- **Not evaluated**: " + "; ".join(f"{c} ({e})" for c, e in ev["unavailable"].items()))
    if cal["sequences"] != 32:
        L.append(f"- Calibration uses {cal['sequences']} sequences ({cal['tokens']} tokens) instead of the CLI "
                 f"default of 32 (16384 tokens), to keep the whole study within this machine's time.")
    L.append("")
    # defaults
    L += ["## Defaults, fixed before any evaluation run: the sequential refit target", ""]
    if defaults is None or "runs" not in defaults:
        L += ["defaults.json is missing: the defaults phase did not run.", ""]
    else:
        dr = defaults["runs"]
        L += [f"Chosen on a validation slice of the calibration corpus ({defaults['slices']}), sigma and greedy at "
              f"20% with reconstruction, validation perplexity at seq-len {defaults['args']['seq_len']}:", "",
              "| refit_target | sigma | greedy | mean log ppl |", "|---|---:|---:|---:|",
              f"| (dense model) | {_fmt(dr['dense']['val']['ppl'])} | | |"]
        for t in ("local", "dense"):
            L.append(f"| {t} | {_fmt((dr.get(f'sigma_{t}') or {}).get('val', {}).get('ppl'))} | "
                     f"{_fmt((dr.get(f'greedy_{t}') or {}).get('val', {}).get('ppl'))} | "
                     f"{_fmt((defaults.get('mean_log_val_ppl') or {}).get(t), 3)} |")
        if defaults.get("choice"):
            agree = "agrees with" if defaults["agrees_with_library_default"] else "differs from"
            L += ["", f"Choice: **refit_target = `{defaults['choice']}`** (best per criterion: "
                      f"{defaults['best_per_criterion']}); this {agree} the library default "
                      f"(`{defaults['library_default']}`), which had been chosen on evaluation perplexity."]
        else:
            L += ["", "The defaults phase did not finish; no choice recorded."]
        L.append("")
    sps = _sparsities(runs)
    L += ["## Held-out perplexity, seq-len 1024", ""]
    for key in [k for k in keys if k.endswith("@1024")]:
        L += [f"### {key} (cell: ppl / top-1 accuracy)", ""]
        L += _table(runs, dense, sps, lambda r, k=key: "-" if _ppl(r, k) is None else
                    f"{_fmt(_ppl(r, k))} / {r['eval'][k]['top1']:.3f}")
        L.append("")
    k128 = [k for k in keys if k.endswith("@128")]
    if k128:
        L += ["## Held-out perplexity, seq-len 128 (cell: " + " / ".join(k128) + ")", ""]
        L += _table(runs, dense, sps, lambda r: "-" if all(_ppl(r, k) is None for k in k128) else
                    " / ".join(_fmt(_ppl(r, k)) for k in k128))
        L.append("")
    L += _target_section(runs, dense, keys, defaults)
    L += _layer_error_summary(runs)
    L += _decomposition(runs, dense, keys)
    L += ["Notes for reading the decomposition: `greedy` and `head-similarity` choose the units whose removal "
          "the *least-squares compensation of the kept units* can absorb best; `published` applies no "
          "compensation, so their published numbers measure the criterion used without the refit its derivation "
          "assumes, not the quality of its ranking.  FLAP as published already carries a compensation (its bias "
          "fold), so 'criterion alone' compares a compensated baseline with uncompensated criteria; *X recon vs "
          "flap recon* is the like-for-like comparison of criteria.  `recon` is sequential pruning *and* the "
          "refit together (each layer scored on the already pruned model's activations, then refit); this study "
          "does not separate the two.", ""]
    # run details
    L += ["## Runs", "", "| run | params after | achieved sparsity (attn / ffn) | prune s | eval s |",
          "|---|---:|---:|---:|---:|"]
    for c, v in _rows(runs):
        for s in sps:
            r = runs.get(run_name(c, v, s))
            if r is None:
                continue
            a = r["sparsity_achieved"]
            L.append(f"| {r['name']} | {r['params_after']:,} | {a['overall']:.3f} ({a['attention']:.3f} / "
                     f"{a['ffn']:.3f}) | {r['prune_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    L.append("")
    # plots
    _plot_ppl(runs, dense, keys, out / "ppl_vs_sparsity.png")
    miss_plot = _plot_layer_errors(runs, out / "layer_errors.png")
    L += ["## Plots", "", "- `ppl_vs_sparsity.png`: held-out perplexity (log scale) against sparsity at seq-len "
          "1024, one panel per corpus; published dashed, recon solid; sparsity 0 is the dense model.",
          "- `layer_errors.png`: per-layer relative error of the refit down_proj / o_proj outputs, in-sample "
          "(the calibration batches fitted) vs held-out (the calibration batches held out inside the "
          "pipeline), and held-out without a refit, for sigma and greedy recon at 20% and 50%"
          + (f" (missing: {', '.join(miss_plot)})" if miss_plot else "") + ".", ""]
    # not done
    planned = plan_runs(all_criteria(), VARIANTS, SPARSITIES)
    missing = [run_name(*r) for r in planned if run_name(*r) not in runs]
    L += ["## Not done", ""]
    if failed:
        L += ["Failed runs (error recorded in their JSON):", ""] + [f"- {n}: {e}" for n, e in failed.items()] + [""]
    if missing:
        L += [f"{len(missing)} of the {len(planned)} planned runs have no result (not run within the time "
              f"budget{', or failed' if failed else ''}): " + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    else:
        L += ["Every planned run finished.", ""]
    (out / "study.md").write_text("\n".join(L) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--criteria", default="all", help="comma-separated criteria, or 'all' (every registered one)")
    p.add_argument("--sparsities", default=",".join(f"{s:g}" for s in SPARSITIES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--calib-seqs", type=int, default=32, help="calibration sequences of 512 tokens (wiki calib)")
    p.add_argument("--val-seqs", type=int, default=8, help="validation sequences for the defaults phase")
    p.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens per corpus and sequence length")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop-after", type=float, default=None,
                   help="minutes of wall time after which no new run is started")
    p.add_argument("--force", action="store_true", help="redo runs whose JSON exists")
    p.add_argument("--force-defaults", action="store_true", help="redo the defaults phase")
    p.add_argument("--report-only", action="store_true", help="only regenerate study.md and the plots from the JSONs")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    if args.report_only:
        write_report(out)
        return
    t_start = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    criteria = all_criteria() if args.criteria == "all" else parse_list(args.criteria, str, all_criteria(), "criterion")
    sparsities = parse_list(args.sparsities, float, what="sparsity")
    if any(not 0 < s < 1 for s in sparsities):
        raise SystemExit("prune_study: sparsities must lie in (0, 1)")
    variants = parse_list(args.variants, str, VARIANTS, "variant")
    if args.calib_seqs < 2 * BATCH_SIZE or args.val_seqs < 1 or args.eval_tokens < max(EVAL_LENS):
        raise SystemExit(f"prune_study: need --calib-seqs >= {2 * BATCH_SIZE}, --val-seqs >= 1 and "
                         f"--eval-tokens >= {max(EVAL_LENS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)

    from sketchprune.datasets import load_smollm2
    from sketchprune.datasets.cache import FetchError, OfflineError
    from sketchprune.datasets.text import describe_split, text_tokens

    torch.manual_seed(args.seed)
    dense, tok = load_smollm2()
    dense.eval()
    calib = text_tokens("wiki", tok, CALIB_SEQ_LEN, args.calib_seqs * CALIB_SEQ_LEN, "calib", seed=args.seed)
    calib_batches = list(calib.split(BATCH_SIZE))
    eval_sets, unavailable = {}, {}
    for corpus in CORPORA:
        for L in EVAL_LENS:
            try:
                eval_sets[eval_key(corpus, L)] = text_tokens(corpus, tok, L, args.eval_tokens, "heldout", seed=args.seed)
            except (OfflineError, FetchError) as e:
                unavailable[corpus] = f"{type(e).__name__}: {e}"
                print(f"prune_study: {corpus} cannot be obtained, evaluating without it: {e}", file=sys.stderr, flush=True)
                break
    setup = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to fp32)",
             "calibration": {"source": "wiki", "split": "calib", "slice": describe_split("wiki", "calib"),
                             "sequences": args.calib_seqs, "seq_len": CALIB_SEQ_LEN, "batch_size": BATCH_SIZE,
                             "tokens": int(calib.numel()), "seed": args.seed},
             "evaluation": {"split": "heldout", "tokens_per_set": args.eval_tokens, "seq_lens": list(EVAL_LENS),
                            "sets": {k: {"sequences": int(v.shape[0]), "seq_len": int(v.shape[1])}
                                     for k, v in eval_sets.items()},
                            "slices": {c: describe_split(c, "heldout") for c in CORPORA if c not in unavailable},
                            "unavailable": unavailable},
             "head_mode": "query", "threads": torch.get_num_threads()}

    def provenance():
        return {"date": now(), "machine": machine(), "git_commit": git_commit()}

    dense_path = out / "runs" / "dense.json"
    if not dense_path.exists() or args.force:
        res = {"name": "dense", **provenance(), "setup": setup, "params": count_params(dense),
               "eval": evaluate_all(dense, eval_sets)}
        write_json_atomic(dense_path, res)
        print("dense: " + ", ".join(f"{k} ppl {v['ppl']:.3f} top1 {v['top1']:.3f}" for k, v in res["eval"].items()),
              flush=True)

    refit_target = None
    if "recon" in variants:
        refit_target = run_defaults_phase(dense, tok, args, out)["choice"]
    report_subprocess(out)

    todo = plan_runs(criteria, variants, sparsities)
    for i, (crit, variant, sp) in enumerate(todo):
        name = run_name(crit, variant, sp)
        path = out / "runs" / f"{name}.json"
        if path.exists() and not args.force:
            prev = json.loads(path.read_text())
            if "error" not in prev:
                continue
        elapsed = (time.monotonic() - t_start) / 60
        if args.stop_after is not None and elapsed > args.stop_after:
            left = [run_name(*r) for r in todo[i:] if not (out / "runs" / f"{run_name(*r)}.json").exists()]
            print(f"prune_study: {elapsed:.0f} min elapsed (--stop-after {args.stop_after:g}); not starting "
                  f"{len(left)} runs: {', '.join(left)}", flush=True)
            break
        kwargs = prune_kwargs(variant, refit_target)
        rec = {"name": name, "criterion": crit, "variant": variant, "sparsity": sp, **provenance(),
               "args": {"sparsity": sp, "criterion": crit, "head_mode": "query", "seed": args.seed,
                        **{k: v for k, v in kwargs.items()}}, "setup": setup}
        print(f"[{i + 1}/{len(todo)}] {name} ...", flush=True)
        try:
            model, rep, secs = prune_copy(dense, calib_batches, crit, sp, kwargs, args.seed)
        except Exception as e:   # recorded in the run file and the report, retried on the next invocation
            rec["error"] = f"{type(e).__name__}: {e}"
            write_json_atomic(path, rec)
            print(f"  FAILED {rec['error']}", flush=True)
            continue
        t = time.perf_counter()
        ev = evaluate_all(model, eval_sets)
        rec.update({"params_before": rep["params_before"], "params_after": rep["params_after"],
                    "params_counted": count_params(model), "sparsity_achieved": rep["sparsity_achieved"],
                    "prune_seconds": secs, "prune_report_seconds": rep["seconds"],
                    "calibration_tokens": rep["calibration_tokens"], "biases_folded": rep.get("biases_folded", []),
                    "eval_seconds": time.perf_counter() - t, "eval": ev, "layers": layer_records(rep)})
        del model
        write_json_atomic(path, rec)
        print(f"  {name}: prune {secs:.0f}s; " + ", ".join(f"{k} {v['ppl']:.2f}" for k, v in ev.items()), flush=True)
        report_subprocess(out)
    report_subprocess(out)


if __name__ == "__main__":
    main()
