"""Structured pruning of SmolLM2-135M-Instruct: held-out Wikipedia perplexity per criterion.

    python bench/prune_smollm2.py [OUT_DIR] [--sparsity 0.2] [--criteria sigma,wanda-sp,...]
                                  [--calib-seqs 32] [--seq-len 512] [--eval-seqs 8]

Loads SmolLM2 (fetched into the sketchprune cache on first use), measures the dense model's
perplexity on held-out Wikipedia articles, then for each criterion prunes a fresh copy with
``prune_model`` (statistics from the calibration articles, disjoint from the held-out ones) and
measures held-out perplexity and parameter count.  Writes OUT_DIR/smollm2_prune.{json,md}
(default OUT_DIR: results/pruning/).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_commit():
    try:
        c = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        return (c or "unknown") + ("+uncommitted" if dirty else "")
    except Exception:
        return "unknown"


def machine():
    try:
        from sketchprune.info import cpu_name
        cpu = cpu_name()
    except Exception:
        cpu = platform.processor() or "cpu"
    return (f"{cpu}, {torch.get_num_threads()} threads ({os.cpu_count()} cores), "
            f"{platform.system()} {platform.release()}, torch {torch.__version__}")


def _sp(a):
    if isinstance(a, dict):
        return f"{a.get('overall', float('nan')):.3f} ({a.get('attention', float('nan')):.3f} / {a.get('ffn', float('nan')):.3f})"
    return f"{a:.3f}"


def markdown(res):
    a = res["args"]
    L = ["# SmolLM2-135M-Instruct structured pruning: held-out Wikipedia perplexity", "",
         f"Date {res['date']}; machine: {res['machine']}; git {res['git_commit']}.", "",
         f"Sparsity {a['sparsity']} (of the attention + MLP block parameters, head_mode={a['head_mode']}); "
         f"calibration {a['calib_seqs']} x {a['seq_len']} tokens, evaluation {a['eval_seqs']} x {a['seq_len']} "
         f"tokens (disjoint article splits of the 106-article Wikipedia sample; seed {a['seed']}). "
         f"Model: Q4_1 GGUF dequantized to fp32 (so the dense baseline is the quantized model).", "",
         "| model | params | block sparsity (attn / ffn) | held-out ppl | ppl / dense | prune s | eval s |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    d = res["dense"]
    L.append(f"| dense | {d['params']:,} | 0 | {d['perplexity']:.3f} | 1.000 | - | {d['eval_seconds']:.0f} |")
    for r in res["pruned"]:
        if "error" in r:
            L.append(f"| {r['criterion']} | error: {r['error']} | | | | | |")
            continue
        L.append(f"| {r['criterion']} | {r['params']:,} | {_sp(r['sparsity_achieved'])} | {r['perplexity']:.3f} | "
                 f"{r['perplexity'] / d['perplexity']:.3f} | {r['prune_seconds']:.0f} | {r['eval_seconds']:.0f} |")
    L += ["", "No fine-tuning or reconstruction after pruning; one seed, one calibration draw."]
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", nargs="?", default=str(ROOT / "results" / "pruning"))
    p.add_argument("--sparsity", type=float, default=0.2)
    p.add_argument("--criteria", default="sigma,wanda-sp,flap,magnitude-l2,random")
    p.add_argument("--calib-seqs", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-seqs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--head-mode", default="query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reconstruct", action="store_true",
                   help="least-squares refit of down_proj/o_proj after pruning (flap then skips its bias fold)")
    args = p.parse_args(argv)

    from sketchprune.datasets import load_smollm2, token_batches, wikipedia_texts
    from sketchprune.eval import perplexity
    from sketchprune.prune import prune_model

    torch.manual_seed(args.seed)
    dense, tok = load_smollm2()
    texts = wikipedia_texts()
    calib = token_batches(tok, texts, args.seq_len, args.calib_seqs, split="calib", seed=args.seed)
    held = token_batches(tok, texts, args.seq_len, args.eval_seqs, split="heldout", seed=args.seed)
    calib_batches = list(calib.split(args.batch_size))

    def count(m):
        return sum(p.numel() for p in m.parameters())

    t = time.perf_counter()
    ppl = perplexity(dense, held, chunk_size=args.batch_size)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "git_commit": git_commit(), "args": vars(args),
           "dense": {"params": count(dense), "perplexity": ppl, "eval_seconds": time.perf_counter() - t},
           "pruned": []}
    print(f"dense: ppl {ppl:.3f}, {count(dense):,} params", flush=True)
    for crit in [c.strip() for c in args.criteria.split(",") if c.strip()]:
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        try:
            extra = {"reconstruct": True, "flap_bias": "none"} if args.reconstruct else {}
            rep = prune_model(model, calib_batches, sparsity=args.sparsity, criterion=crit,
                              head_mode=args.head_mode, seed=args.seed, progress=False, **extra)
        except Exception as e:  # report and go on with the other criteria
            res["pruned"].append({"criterion": crit, "error": f"{type(e).__name__}: {e}"})
            print(f"{crit}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        tp = time.perf_counter() - t
        t = time.perf_counter()
        ppl = perplexity(model, held, chunk_size=args.batch_size)
        r = {"criterion": crit, "params": count(model), "perplexity": ppl, "prune_seconds": tp,
             "eval_seconds": time.perf_counter() - t, "sparsity_achieved": rep["sparsity_achieved"],
             "params_before": rep["params_before"], "params_after": rep["params_after"],
             "calibration_tokens": rep["calibration_tokens"]}
        res["pruned"].append(r)
        print(f"{crit}: ppl {ppl:.3f}, {r['params']:,} params, prune {tp:.0f}s", flush=True)
        del model
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "smollm2_prune.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "smollm2_prune.md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
