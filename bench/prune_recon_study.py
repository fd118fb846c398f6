"""Reconstruction study on SmolLM2-135M-Instruct: none / per-layer / block / cross-block, each
calibrated on text and on sequences the dense model generated itself.

    python bench/prune_recon_study.py [OUT_DIR] [--criterion sigma] [--sparsity 0.2]
                                      [--recons none,layer,block,cross-block] [--calibs wiki,self]
                                      [--calib-seqs 16] [--eval-tokens 4096] [--threads 1]
                                      [--force] [--report-only]

Every run prunes a fresh copy of the dense model sequentially (layer by layer on the pruned
model's activations) with the same criterion and sparsity; only the reconstruction and the
calibration data change:

* ``none``: no refit; ``layer``: the closed-form per-Linear refits (o_proj / down_proj toward the
  layer's own unpruned output, ridge toward the dense weights, strength chosen on held-out
  calibration batches); ``block`` / ``cross-block``: those refits, then every Linear of the block
  (or of two consecutive blocks) re-fit by Adam toward the dense hidden states, early-stopped on
  the held-out calibration batches (library defaults);
* ``wiki``: windows of the Wikipedia calibration split; ``self``: the same number of sequences
  sampled from the dense model (random first token, then top-50 sampling at temperature 1).

Reconstruction error: per layer, the relative distance of the pruned model's hidden state from
the dense one after that layer on the calibration stream (``stream_rel_error``; the last
layer's value is the headline), and the refits' own relative errors in-sample and on the
held-out calibration batches.  Held-out perplexity and top-1 on the evaluation slices of
Wikipedia and Jane Austen (disjoint from every calibration token) at 128 and 1024 tokens.

Writes OUT_DIR/runs/<recon>_<calib>.json (atomically, one per run; existing ones are skipped
unless --force), OUT_DIR/recon_study.md and OUT_DIR/recon_error_vs_ppl.png (default OUT_DIR:
results/pruning/recon_study/).  Fix every option before looking at evaluation numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from provenance import git_commit, machine
from prune_common import count_params, layer_records, write_json_atomic
from prune_study import CALIB_SEQ_LEN, CORPORA, EVAL_LENS, eval_key, evaluate_all, now, parse_list, prune_copy

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "results" / "pruning" / "recon_study"
RECONS = ("none", "layer", "block", "cross-block")
CALIBS = ("wiki", "self")
BATCH_SIZE = 4


def kwargs_of(recon: str) -> dict:
    if recon == "none":
        return {"sequential": True, "reconstruct": False, "stream_error": True}
    return {"sequential": True, "reconstruct": True, "recon": recon, "flap_bias": "none", "stream_error": True}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summary_of(layers: list[dict]) -> dict:
    """Mean per-layer refit errors (o and down), block errors and the stream errors."""
    def refit(field):
        return _mean([v for lay in layers for v in (lay.get(field) or {}).values() if isinstance(v, (int, float))])
    blocks = [lay["block_recon"] for lay in layers if isinstance(lay.get("block_recon"), dict)]
    stream = [lay.get("stream_rel_error") for lay in layers]
    return {"refit_in_sample": refit("recon_rel_error"), "refit_heldout": refit("heldout_rel_error"),
            "block_in_sample": _mean([b.get("fit_error_after") for b in blocks]),
            "block_heldout": _mean([b.get("heldout_error_after") for b in blocks]),
            "stream_last": stream[-1] if stream else None, "stream_mean": _mean(stream)}


def run_all(args, out: Path) -> None:
    from sketchprune.datasets import load_smollm2
    from sketchprune.datasets.selfgen import self_generated
    from sketchprune.datasets.text import text_tokens

    torch.manual_seed(args.seed)
    dense, tok = load_smollm2()
    dense.eval()
    n_tokens = args.calib_seqs * CALIB_SEQ_LEN
    calib = {}
    if "wiki" in args.calibs:
        calib["wiki"] = text_tokens("wiki", tok, CALIB_SEQ_LEN, n_tokens, "calib", seed=args.seed)
    if "self" in args.calibs:
        t = time.perf_counter()
        calib["self"] = self_generated(dense, args.calib_seqs, CALIB_SEQ_LEN, seed=args.seed,
                                       exclude_ids=getattr(tok, "all_special_ids", ()) or ())
        print(f"self-generated {args.calib_seqs} x {CALIB_SEQ_LEN} tokens in {time.perf_counter() - t:.0f} s",
              flush=True)
    eval_sets = {eval_key(c, L): text_tokens(c, tok, L, args.eval_tokens, "heldout", seed=args.seed)
                 for c in CORPORA for L in EVAL_LENS}
    prov = {"machine": machine(), "git_commit": git_commit(), "threads": torch.get_num_threads()}
    setup = {"criterion": args.criterion, "sparsity": args.sparsity, "calib_seqs": args.calib_seqs,
             "seq_len": CALIB_SEQ_LEN, "batch_size": BATCH_SIZE, "eval_tokens": args.eval_tokens, "seed": args.seed}
    runs = out / "runs"
    if not (runs / "dense.json").exists() or args.force:
        write_json_atomic(runs / "dense.json", {"name": "dense", "date": now(), **prov, "setup": setup,
                                                 "params": count_params(dense), "eval": evaluate_all(dense, eval_sets)})
    for source in args.calibs:
        batches = list(calib[source].split(BATCH_SIZE))
        for recon in args.recons:
            path = runs / f"{recon}_{source}.json"
            if path.exists() and not args.force:
                continue
            model, rep, secs = prune_copy(dense, batches, args.criterion, args.sparsity, kwargs_of(recon), args.seed)
            layers = layer_records(rep)
            res = {"name": f"{recon}_{source}", "recon": recon, "calib": source, "date": now(), **prov,
                   "setup": setup, "prune_seconds": secs, "params": count_params(model),
                   "sparsity_achieved": rep["sparsity_achieved"], "summary": summary_of(layers), "layers": layers,
                   "eval": evaluate_all(model, eval_sets)}
            write_json_atomic(path, res)
            e = res["eval"][eval_key("wiki", max(EVAL_LENS))]
            print(f"{recon} / {source}: wiki@{max(EVAL_LENS)} ppl {e['ppl']:.3f}, last-layer stream error "
                  f"{res['summary']['stream_last']:.3f}, prune {secs:.0f} s", flush=True)
            del model


def _f(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def write_report(out: Path) -> None:
    runs = {}
    for p in sorted((out / "runs").glob("*.json")):
        r = json.loads(p.read_text())
        runs[r["name"]] = r
    dense = runs.pop("dense", None)
    if dense is None:
        raise SystemExit(f"prune_recon_study: no dense run under {out / 'runs'}")
    s = dense["setup"]
    keys = [eval_key(c, L) for c in CORPORA for L in EVAL_LENS]
    L = ["# Reconstruction study: SmolLM2-135M-Instruct, sequential pruning", "",
         f"{s['criterion']} at {s['sparsity']:.0%} sparsity; calibration {s['calib_seqs']} x {s['seq_len']} tokens "
         f"(batches of {s['batch_size']}; the last quarter of the batches held out to choose refit strengths and "
         f"stop the block training); evaluation {s['eval_tokens']} held-out tokens per set.  Machine: "
         f"{dense['machine']}; git {dense['git_commit']}; {dense['date']}.  One seed.", "",
         "| recon | calibration | " + " | ".join(f"ppl {k}" for k in keys) + " | top-1 wiki@1024 | stream err. last layer "
         "| stream err. mean | refit err. in / held-out | block err. in / held-out | prune s |",
         "|---|---|" + "---:|" * (len(keys) + 6)]
    L.append("| dense | - | " + " | ".join(_f(dense["eval"][k]["ppl"]) for k in keys)
             + f" | {_f(dense['eval']['wiki@1024']['top1'])} | 0 | 0 | - | - | - |")
    order = [f"{r}_{c}" for c in CALIBS for r in RECONS]
    for name in order + sorted(set(runs) - set(order)):
        if name not in runs:
            continue
        r, m = runs[name], runs[name]["summary"]
        L.append(f"| {r['recon']} | {r['calib']} | " + " | ".join(_f(r["eval"][k]["ppl"]) for k in keys)
                 + f" | {_f(r['eval']['wiki@1024']['top1'])} | {_f(m['stream_last'])} | {_f(m['stream_mean'])} | "
                 f"{_f(m['refit_in_sample'], 4)} / {_f(m['refit_heldout'], 4)} | "
                 f"{_f(m['block_in_sample'], 4)} / {_f(m['block_heldout'], 4)} | {r['prune_seconds']:.0f} |")
    missing = [n for n in order if n not in runs]
    L += ["", "Stream error: relative distance of the pruned model's hidden state from the dense one after a layer, "
          "on the calibration tokens (all batches).  Refit error: mean over layers and over o_proj / down_proj of the "
          "closed-form refit's relative output error; block error: mean relative error of the block output after the "
          "block training.  In-sample = fitting batches, held-out = held-out calibration batches.",
          "", "Not run: " + (", ".join(missing) if missing else "none") + "."]
    (out / "recon_study.md").write_text("\n".join(L) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("prune_recon_study: matplotlib not installed, no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    marks = {"none": "o", "layer": "s", "block": "^", "cross-block": "D"}
    colors = {"wiki": "tab:blue", "self": "tab:orange"}
    for r in runs.values():
        x, y = r["summary"]["stream_last"], r["eval"]["wiki@1024"]["ppl"]
        if x is None:
            continue
        ax.scatter([x], [y], marker=marks.get(r["recon"], "x"), color=colors.get(r["calib"], "k"), s=50,
                   label=f"{r['recon']} / {r['calib']}")
    ax.axhline(dense["eval"]["wiki@1024"]["ppl"], color="gray", ls=":", label="dense")
    ax.set_xlabel("stream error after the last layer (calibration tokens)")
    ax.set_ylabel("held-out Wikipedia perplexity (1024 tokens)")
    ax.set_yscale("log")
    ax.set_title(f"SmolLM2-135M, {s['criterion']} {s['sparsity']:.0%}: reconstruction vs perplexity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "recon_error_vs_ppl.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    p.add_argument("--criterion", default="sigma")
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--recons", default=",".join(RECONS))
    p.add_argument("--calibs", default=",".join(CALIBS))
    p.add_argument("--calib-seqs", type=int, default=16)
    p.add_argument("--eval-tokens", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--force", action="store_true", help="re-run runs whose JSON exists")
    p.add_argument("--report-only", action="store_true", help="only rewrite the markdown and the plot")
    args = p.parse_args(argv)
    args.recons = parse_list(args.recons, str, RECONS, "recon")
    args.calibs = parse_list(args.calibs, str, CALIBS, "calibration source")
    if args.calib_seqs < 2 * BATCH_SIZE:
        raise SystemExit(f"--calib-seqs must be at least {2 * BATCH_SIZE} (some batches are held out)")
    if not 0 <= args.sparsity < 1:
        raise SystemExit(f"--sparsity must be in [0, 1), got {args.sparsity}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    if not args.report_only:
        run_all(args, out)
    write_report(out)
    print(f"wrote {out / 'recon_study.md'}")


if __name__ == "__main__":
    main()
