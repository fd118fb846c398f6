"""Evaluation noise of the pruning study's target check: the ratios per disjoint block of held-out tokens.

    python bench/prune_study_blocks.py STUDY_DIR [--sparsities 0.2] [--block-tokens 2048]
                                       [--compare OLD_STUDY_DIR] [--threads 1] [--report-only]

STUDY_DIR is an output folder of ``bench/prune_study.py`` (``runs/*.json``, ``defaults.json``).  For
each sparsity the runs the target check reads -- flap ``published`` and the package's methods
(sigma, greedy, head-similarity) with ``recon`` -- are pruned again with the arguments recorded in
their JSONs, on the calibration recorded in ``dense.json``, and evaluated on the same held-out
tokens cut into disjoint blocks of ``--block-tokens`` tokens per corpus and sequence length (with
8192 tokens and blocks of 2048: 4 blocks of 16 windows at seq-len 128, of 2 windows at 1024).
Block 0 is the first ``--block-tokens`` tokens, i.e. the evaluation set of a study run with
``--eval-tokens`` equal to the block size.

Checks, each recorded and printed, never silently passed over: the re-pruned model's perplexity on
all blocks together against the run JSON's (the same model must come back), and with
``--compare`` block 0 against the older study's run JSON (same runs, evaluated on those tokens
only).

Writes STUDY_DIR/blocks.json (per block: tokens, predictions, NLL sums, perplexities; the ratios)
and STUDY_DIR/blocks.md: for every target cell, the ratio (increase of perplexity over dense as a
fraction of flap published's) on each block, on all blocks, and the spread of the block ratios.
``--report-only`` rewrites blocks.md from blocks.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from provenance import git_commit, machine
from prune_common import write_json_atomic
from prune_study import (BATCH_SIZE, CALIB_SEQ_LEN, CORPORA, EVAL_LENS, PACKAGE_METHODS, TARGET_RATIO, eval_key,
                         now, prune_copy, prune_kwargs, run_name)

PPL_RTOL = 1e-3   # re-pruned model vs the run JSON: relative perplexity difference allowed


def block_scores(model, ids: torch.Tensor, rows_per_block: int) -> list[dict]:
    """Per block of ``rows_per_block`` windows: {"predictions", "nll_sum", "ppl"}."""
    from sketchprune.eval import evaluate

    out = []
    for s in range(0, ids.shape[0], rows_per_block):
        e = evaluate(model, ids[s:s + rows_per_block], chunk_size=4 if ids.shape[1] <= 128 else 1)
        out.append({"predictions": e["predicted_tokens"], "nll_sum": e["nll"] * e["predicted_tokens"],
                    "ppl": e["ppl"]})
    return out


def pooled_ppl(blocks: list[dict]) -> float:
    return math.exp(sum(b["nll_sum"] for b in blocks) / sum(b["predictions"] for b in blocks))


def ratio(x: float, d: float, f: float) -> float:
    return (x - d) / (f - d)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("study_dir")
    p.add_argument("--sparsities", default="0.2")
    p.add_argument("--block-tokens", type=int, default=2048)
    p.add_argument("--compare", default=None, help="an older study folder evaluated on the first block only")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--report-only", action="store_true", help="only rewrite blocks.md from blocks.json")
    args = p.parse_args(argv)
    out = Path(args.study_dir)
    if args.report_only:
        if not (out / "blocks.json").exists():
            raise SystemExit(f"prune_study_blocks: {out / 'blocks.json'} is missing; nothing to report")
        write_md(json.loads((out / "blocks.json").read_text()), out / "blocks.md")
        return
    dense_path = out / "runs" / "dense.json"
    if not dense_path.exists():
        raise SystemExit(f"prune_study_blocks: {dense_path} is missing; run bench/prune_study.py first")
    dense_rec = json.loads(dense_path.read_text())
    setup = dense_rec["setup"]
    ev_tokens = setup["evaluation"]["tokens_per_set"]
    if args.block_tokens <= 0 or ev_tokens % args.block_tokens or args.block_tokens % max(EVAL_LENS):
        raise SystemExit(f"prune_study_blocks: --block-tokens {args.block_tokens} must divide the study's "
                         f"{ev_tokens} evaluation tokens and be a multiple of {max(EVAL_LENS)}")
    n_blocks = ev_tokens // args.block_tokens
    if n_blocks < 2:
        raise SystemExit(f"prune_study_blocks: {ev_tokens} evaluation tokens make only one block of {args.block_tokens}")
    sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    names = {sp: [run_name("flap", "published", sp)] + [run_name(m, "recon", sp) for m in PACKAGE_METHODS]
             for sp in sparsities}
    runs = {}
    for sp in sparsities:
        for n in names[sp]:
            path = out / "runs" / f"{n}.json"
            if not path.exists():
                raise SystemExit(f"prune_study_blocks: {path} is missing; the target check needs it")
            runs[n] = json.loads(path.read_text())
            if "error" in runs[n]:
                raise SystemExit(f"prune_study_blocks: run {n} failed in the study ({runs[n]['error']})")
    defaults = json.loads((out / "defaults.json").read_text())
    old = Path(args.compare) if args.compare else None

    torch.set_num_threads(args.threads)
    from sketchprune.datasets import load_smollm2
    from sketchprune.datasets.text import text_tokens

    cal = setup["calibration"]
    if cal["seq_len"] != CALIB_SEQ_LEN or cal["batch_size"] != BATCH_SIZE:
        raise SystemExit("prune_study_blocks: the study's calibration shape differs from bench/prune_study.py's")
    torch.manual_seed(cal["seed"])
    dense, tok = load_smollm2()
    dense.eval()
    calib = text_tokens("wiki", tok, CALIB_SEQ_LEN, cal["sequences"] * CALIB_SEQ_LEN, "calib", seed=cal["seed"])
    calib_batches = list(calib.split(BATCH_SIZE))
    keys = [eval_key(c, L) for L in (1024, 128) for c in CORPORA]
    eval_sets = {eval_key(c, L): text_tokens(c, tok, L, ev_tokens, "heldout", seed=cal["seed"])
                 for c in CORPORA for L in EVAL_LENS}

    def measure(model, rec, label):
        res, checks = {}, []
        for k in keys:
            blocks = block_scores(model, eval_sets[k], args.block_tokens // eval_sets[k].shape[1])
            res[k] = blocks
            ppl, want = pooled_ppl(blocks), rec["eval"][k]["ppl"]
            checks.append({"what": f"{label} {k}: all blocks vs the study's run JSON", "got": ppl, "want": want,
                           "ok": abs(ppl - want) <= PPL_RTOL * want})
            if old is not None:
                o = json.loads((old / "runs" / f"{rec['name']}.json").read_text())
                if o.get("setup", {}).get("evaluation", {}).get("tokens_per_set") != args.block_tokens:
                    raise SystemExit(f"prune_study_blocks: {old} was not evaluated on {args.block_tokens} tokens")
                w0 = o["eval"][k]["ppl"]
                checks.append({"what": f"{label} {k}: block 0 vs {old}", "got": blocks[0]["ppl"], "want": w0,
                               "ok": abs(blocks[0]["ppl"] - w0) <= PPL_RTOL * w0})
        for c in checks:
            print(f"  check {'ok  ' if c['ok'] else 'FAIL'} {c['what']}: {c['got']:.4f} vs {c['want']:.4f}", flush=True)
        return res, checks

    t0 = time.perf_counter()
    scores, checks = {}, []
    print("dense ...", flush=True)
    scores["dense"], c = measure(dense, dense_rec, "dense")
    checks += c
    for sp in sparsities:
        for n in names[sp]:
            rec = runs[n]
            a = rec["args"]
            if a.get("reconstruct") and a.get("refit_target") != defaults["choice"]:
                raise SystemExit(f"prune_study_blocks: {n} used refit_target {a.get('refit_target')}, "
                                 f"defaults.json chose {defaults['choice']}")
            kwargs = prune_kwargs(rec["variant"], a.get("refit_target"))
            print(f"{n} ...", flush=True)
            model, _, secs = prune_copy(dense, calib_batches, rec["criterion"], rec["sparsity"], kwargs, a["seed"])
            scores[n], c = measure(model, rec, n)
            checks += c
            del model
            print(f"  {n}: pruned in {secs:.0f}s", flush=True)

    # ratios per block, pooled, spread
    table = {}
    for sp in sparsities:
        for k in keys:
            d = scores["dense"][k]
            f = scores[run_name("flap", "published", sp)][k]
            for m in PACKAGE_METHODS:
                x = scores[run_name(m, "recon", sp)][k]
                per = [ratio(x[b]["ppl"], d[b]["ppl"], f[b]["ppl"]) for b in range(n_blocks)]
                table[f"{m} {sp:g} {k}"] = {
                    "method": m, "sparsity": sp, "eval": k, "block_ratios": per,
                    "pooled_ratio": ratio(pooled_ppl(x), pooled_ppl(d), pooled_ppl(f)),
                    "rest_ratio": ratio(pooled_ppl(x[1:]), pooled_ppl(d[1:]), pooled_ppl(f[1:])),
                    "block_sd": statistics.stdev(per), "blocks_over_target": sum(r > TARGET_RATIO for r in per)}
    res = {"date": now(), "machine": machine(), "git_commit": git_commit(), "study_dir": str(out),
           "compare": str(old) if old else None, "block_tokens": args.block_tokens, "blocks": n_blocks,
           "eval_tokens": ev_tokens, "sparsities": sparsities, "threads": torch.get_num_threads(),
           "seconds": time.perf_counter() - t0, "checks": checks, "scores": scores, "ratios": table}
    write_json_atomic(out / "blocks.json", res)
    write_md(res, out / "blocks.md")
    bad = [c["what"] for c in checks if not c["ok"]]
    if bad:
        print(f"prune_study_blocks: {len(bad)} check(s) failed; see blocks.md", file=sys.stderr, flush=True)
        sys.exit(1)


def write_md(res: dict, path: Path) -> None:
    nb, bt = res["blocks"], res["block_tokens"]
    L = [f"# Target-check ratios per block of {bt} held-out tokens", "",
         f"Generated by `bench/prune_study_blocks.py` from the runs of `{res['study_dir']}` (pruned again with "
         f"their recorded arguments), {res['date']}, git {res['git_commit']}, {res['machine']}.", "",
         f"Each corpus' {res['eval_tokens']} held-out tokens are cut into {nb} disjoint blocks of {bt} (at "
         f"seq-len 128: {bt // 128} windows per block; at 1024: {bt // 1024}).  Block 0 is the evaluation set "
         f"of a study with {bt} evaluation tokens"
         + (f" (`{res['compare']}`)" if res["compare"] else "") + ".  Cell: increase of perplexity over dense "
         f"as a fraction of flap (published)'s, on that block; `all` = on all {res['eval_tokens']} tokens "
         f"(the study's number); `blocks 1-{nb - 1}` = on the tokens block 0 does not hold; `sd` = standard "
         f"deviation of the {nb} block ratios (the standard error of the `all` ratio is roughly sd / "
         f"sqrt({nb})).  Target <= {TARGET_RATIO}.", ""]
    for sp in res["sparsities"]:
        L += [f"## {sp:.0%}", "", "| method | eval | " + " | ".join(f"block {b}" for b in range(nb))
              + f" | blocks 1-{nb - 1} | all | sd | blocks over {TARGET_RATIO} |",
              "|---|---|" + "---:|" * (nb + 4)]
        for m in PACKAGE_METHODS:
            for r in (v for v in res["ratios"].values() if v["method"] == m and v["sparsity"] == sp):
                L.append(f"| {m} recon | {r['eval']} | " + " | ".join(f"{x:.2f}" for x in r["block_ratios"])
                         + f" | {r['rest_ratio']:.2f} | {r['pooled_ratio']:.2f} | {r['block_sd']:.2f} | "
                           f"{r['blocks_over_target']} of {nb} |")
        L.append("")
    L += ["## Checks", "", "| check | got | want | ok |", "|---|---:|---:|---|"]
    L += [f"| {c['what']} | {c['got']:.4f} | {c['want']:.4f} | {'yes' if c['ok'] else '**no**'} |"
          for c in res["checks"]]
    L += ["", f"Relative tolerance {PPL_RTOL:g} on perplexity (the older study ran at earlier commits; its "
              f"reconstruction statistics differ from today's in the 6th digit)."]
    bad = sorted({c["what"].split(" ")[0] for c in res["checks"] if not c["ok"]})
    if bad:
        L += ["", "**Failed checks**: " + ", ".join(f"`{b}`" for b in bad) + " -- the model pruned now is not the "
              "one the compared run JSON evaluated, so for these runs block 0 is *not* the older study's number "
              "and the difference between the two studies mixes evaluation noise with a change of the model."]
    L.append("")
    path.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
