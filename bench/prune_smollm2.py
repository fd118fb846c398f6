"""Structured pruning of SmolLM2-135M-Instruct: held-out Wikipedia perplexity per criterion.

    python bench/prune_smollm2.py [OUT_DIR] [--sparsity 0.2] [--criteria sigma,wanda-sp,...]
                                  [--calib-seqs 32] [--seq-len 512] [--eval-seqs 8]
                                  [--sequential | --one-shot] [--reconstruct] [--recovery]
                                  [--variants one-shot,sequential,sequential+reconstruct,...]

Loads SmolLM2 (fetched into the sketchprune cache on first use), measures the dense model's
perplexity on held-out Wikipedia articles, then for each criterion and variant prunes a fresh
copy with ``prune_model`` (statistics from the calibration articles, disjoint from the held-out
ones) and measures held-out perplexity and parameter count.  A variant is ``one-shot`` or
``sequential``, optionally ``+reconstruct`` and ``+recovery`` (``--variants``; default: the one
given by the flags).  The pruning time is reported next to one plain dense forward over the same
calibration tokens (the faster of two, before and after the runs).  Writes
OUT_DIR/smollm2_prune.{json,md} with the per-layer reconstruction errors in the JSON (default
OUT_DIR: results/pruning/).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

from provenance import git_commit, machine
from prune_common import layer_records

ROOT = Path(__file__).resolve().parents[1]


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
         "| criterion | variant | params | block sparsity (attn / ffn) | held-out ppl | ppl / dense | prune s "
         "| prune / dense fwd | eval s |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    d = res["dense"]
    fwd = d.get("calib_forward_seconds")
    L.append(f"| dense | | {d['params']:,} | 0 | {d['perplexity']:.3f} | 1.000 | - | - | {d['eval_seconds']:.0f} |")
    for r in res["pruned"]:
        if "error" in r:
            L.append(f"| {r['criterion']} | {r.get('variant', '')} | error: {r['error']} | | | | | | |")
            continue
        ratio = f"{r['prune_seconds'] / fwd:.2f}" if fwd else "-"
        L.append(f"| {r['criterion']} | {r['variant']} | {r['params']:,} | {_sp(r['sparsity_achieved'])} | "
                 f"{r['perplexity']:.3f} | {r['perplexity'] / d['perplexity']:.3f} | {r['prune_seconds']:.0f} | "
                 f"{ratio} | {r['eval_seconds']:.0f} |")
    L += ["", f"Dense forward over the calibration tokens: {fwd:.1f} s (the faster of two)." if fwd else "",
          "No fine-tuning; one seed, one calibration draw.  `reconstruct`: least-squares refit of o_proj/down_proj "
          "over the kept units (toward the layer's own output on the pruned inputs, or with `--refit-target dense` "
          "the dense model's outputs); `recovery`: every Linear of a layer "
          "re-fit toward the dense outputs before it is scored; flap then skips its bias fold."]
    return "\n".join(L) + "\n"


VARIANT_PARTS = ("one-shot", "sequential", "reconstruct", "recovery")


def parse_variant(v: str) -> dict:
    parts = [p.strip() for p in v.split("+") if p.strip()]
    bad = [p for p in parts if p not in VARIANT_PARTS]
    if bad or not parts or parts[0] not in ("one-shot", "sequential"):
        raise SystemExit(f"bad variant {v!r}: use one-shot|sequential[+reconstruct][+recovery]")
    return {"sequential": parts[0] == "sequential", "reconstruct": "reconstruct" in parts,
            "recovery": "recovery" in parts}


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
    p.add_argument("--recovery", action="store_true",
                   help="sequential only: re-fit each layer's Linears toward the dense outputs before scoring it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sequential", dest="sequential", action="store_true", default=True,
                   help="prune layer by layer on the pruned model's activations (default)")
    g.add_argument("--one-shot", dest="sequential", action="store_false",
                   help="score every layer on the dense model's activations at once")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants, e.g. one-shot,sequential+reconstruct (overrides the flags)")
    p.add_argument("--stat-dtype", default="float64", choices=("float32", "float64"),
                   help="dtype of the streamed moments in sequential pruning")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--refit-target", default="local", choices=("dense", "local"),
                   help="sequential refits: the dense model's outputs or the layer's own unpruned output")
    p.add_argument("--token-weighting", default="none", choices=("none", "relative"),
                   help="sequential refits: weight tokens by 1/||dense target|| (massive activations)")
    p.add_argument("--recon", default="layer", choices=("layer", "block", "cross-block"),
                   help="sequential+reconstruct: also re-fit whole blocks (or block pairs) by Adam")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants:
        variants = [(v.strip(), parse_variant(v.strip())) for v in args.variants.split(",") if v.strip()]
    else:
        name = ("sequential" if args.sequential else "one-shot") + ("+reconstruct" if args.reconstruct else "") \
            + ("+recovery" if args.recovery else "")
        variants = [(name, parse_variant(name))]

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

    def dense_forward_seconds():
        t = time.perf_counter()
        with torch.no_grad():
            for b in calib_batches:
                dense(input_ids=b, use_cache=False)
        return time.perf_counter() - t

    fwd = [dense_forward_seconds()]
    t = time.perf_counter()
    ppl = perplexity(dense, held, chunk_size=args.batch_size)
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "git_commit": git_commit(), "args": vars(args),
           "dense": {"params": count(dense), "perplexity": ppl, "eval_seconds": time.perf_counter() - t},
           "pruned": []}
    print(f"dense: ppl {ppl:.3f}, {count(dense):,} params, calibration forward {fwd[0]:.1f}s", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def save(res):   # after every run, so a long study interrupted keeps what it measured
        res["dense"].setdefault("calib_forward_seconds", min(fwd))
        (out / "smollm2_prune.json").write_text(json.dumps(res, indent=1) + "\n")
        (out / "smollm2_prune.md").write_text(markdown(res))
    for crit in [c.strip() for c in args.criteria.split(",") if c.strip()]:
        for vname, v in variants:
            model = copy.deepcopy(dense)
            t = time.perf_counter()
            try:
                extra = {"flap_bias": "none"} if v["reconstruct"] or v["recovery"] else {}
                extra["stat_dtype"] = getattr(torch, args.stat_dtype)
                if v["sequential"]:
                    extra["token_weighting"] = args.token_weighting
                    extra["refit_target"] = args.refit_target
                    if v["reconstruct"]:
                        extra["recon"] = args.recon
                rep = prune_model(model, calib_batches, sparsity=args.sparsity, criterion=crit,
                                  head_mode=args.head_mode, seed=args.seed, progress=False, **v, **extra)
            except Exception as e:  # report and go on with the other criteria
                res["pruned"].append({"criterion": crit, "variant": vname, "error": f"{type(e).__name__}: {e}"})
                print(f"{crit} {vname}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            tp = time.perf_counter() - t
            t = time.perf_counter()
            ppl = perplexity(model, held, chunk_size=args.batch_size)
            r = {"criterion": crit, "variant": vname + ("" if rep.get("recon", "layer") == "layer" else
                                                        f" recon={rep['recon']}"), "params": count(model), "perplexity": ppl, "prune_seconds": tp,
                 "eval_seconds": time.perf_counter() - t, "sparsity_achieved": rep["sparsity_achieved"],
                 "params_before": rep["params_before"], "params_after": rep["params_after"],
                 "calibration_tokens": rep["calibration_tokens"], "prune_report_seconds": rep["seconds"],
                 "layers": layer_records(rep)}
            if not v["sequential"] and rep.get("reconstruction"):
                r["reconstruction"] = {str(i): x for i, x in rep["reconstruction"].items()}
            res["pruned"].append(r)
            print(f"{crit} {vname}: ppl {ppl:.3f}, {r['params']:,} params, prune {tp:.0f}s", flush=True)
            save(res)
            del model
    fwd.append(dense_forward_seconds())
    res["dense"]["calib_forward_seconds"] = min(fwd)   # final: the faster of the two
    res["dense"]["calib_forward_seconds_all"] = fwd
    save(res)
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
