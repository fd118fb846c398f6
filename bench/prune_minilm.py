"""Structured pruning of the all-MiniLM-L6-v2 sentence encoder (BERT): embedding fidelity per criterion.

    python bench/prune_minilm.py OUT_DIR [--sparsity 0.2,0.4] [--criteria magnitude-l2,wanda-sp,flap,sigma]
                                 [--calib 64] [--eval 256] [--max-len 128]

Calibration passages come from the calibration split of the Wikipedia sample, evaluation
passages from the disjoint held-out split (:func:`sketchprune.datasets.split_texts`); a passage
is a paragraph of at least 30 words, cut to ``--max-len`` tokens.  For each criterion and
sparsity a fresh copy of the model is pruned with ``prune_model`` (default options) and compared
with the dense model on the held-out passages:

* ``cosine``: mean cosine between the dense and the pruned embedding of the same passage;
* ``nn@1``: the fraction of passages whose nearest other passage is the same under both models;
* ``spearman``: the rank correlation of all pairwise similarities, dense vs pruned.

Writes OUT_DIR/minilm_prune.{json,md}.
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

ROOT = Path(__file__).resolve().parents[1]


def passages(texts, n, min_words=30):
    out = []
    for t in texts:
        for para in t.split("\n"):
            if len(para.split()) >= min_words:
                out.append(para.strip())
                if len(out) == n:
                    return out
    raise ValueError(f"only {len(out)} paragraphs of >= {min_words} words, need {n}")


def batches(tok, texts, max_len, bs=16):
    return [dict(tok(texts[i:i + bs], padding=True, truncation=True, max_length=max_len, return_tensors="pt"))
            for i in range(0, len(texts), bs)]


def embed_all(model, bts):
    from sketchprune.datasets.minilm import sentence_embeddings
    return torch.cat([sentence_embeddings(model, b) for b in bts])


def _ranks(x):
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
    return r


def compare(dense, pruned):
    n = dense.shape[0]
    cos = (dense * pruned).sum(1)
    sd, sp = dense @ dense.T, pruned @ pruned.T
    eye = torch.eye(n, dtype=torch.bool)
    nn_d = sd.masked_fill(eye, -2).argmax(1)
    nn_p = sp.masked_fill(eye, -2).argmax(1)
    iu = torch.triu_indices(n, n, 1)
    a, b = _ranks(sd[iu[0], iu[1]].double()), _ranks(sp[iu[0], iu[1]].double())
    a, b = a - a.mean(), b - b.mean()
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()), "nn@1": float((nn_d == nn_p).float().mean()),
            "spearman": float((a @ b) / (a.norm() * b.norm()))}


def markdown(res):
    a = res["args"]
    L = ["# all-MiniLM-L6-v2 structured pruning: embedding fidelity on held-out Wikipedia passages", "",
         f"Date {res['date']}; machine: {res['machine']}; git {res['git_commit']}.", "",
         f"{a['calib']} calibration / {a['eval']} held-out passages (disjoint articles), max {a['max_len']} tokens; "
         "`prune_model` defaults (head_mode=query, uniform allocation); sparsity = fraction of the attention + FFN "
         "block parameters removed.  cosine: dense vs pruned embedding of the same passage (mean, min); nn@1: "
         "same nearest neighbour; spearman: rank correlation of all pairwise similarities.", "",
         f"Dense parameters: {res['dense_params']}.", "",
         "| sparsity | criterion | params | cosine | cosine min | nn@1 | spearman | seconds |",
         "|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        L.append(f"| {r['sparsity']} | {r['criterion']} | {r['params_after']} | {r['cosine']:.3f} | "
                 f"{r['cosine_min']:.3f} | {r['nn@1']:.3f} | {r['spearman']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(L) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--sparsity", default="0.2,0.4")
    p.add_argument("--criteria", default="magnitude-l2,wanda-sp,flap,sigma")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--max-len", type=int, default=128)
    args = p.parse_args(argv)
    from sketchprune.datasets import split_texts, wikipedia_texts
    from sketchprune.datasets.minilm import load_minilm
    from sketchprune.prune import prune_model

    model, tok = load_minilm()
    texts = wikipedia_texts()
    calib = batches(tok, passages(split_texts(texts, "calib"), args.calib), args.max_len)
    held = batches(tok, passages(split_texts(texts, "heldout"), args.eval), args.max_len)
    dense = embed_all(model, held)
    runs = []
    for sp in [float(s) for s in args.sparsity.split(",")]:
        for crit in args.criteria.split(","):
            m = copy.deepcopy(model)
            t0 = time.perf_counter()
            rep = prune_model(m, calib, sparsity=sp, criterion=crit, progress=sys.stderr.isatty(),
                              flap_bias="existing")
            dt = time.perf_counter() - t0
            r = {"sparsity": sp, "criterion": crit, "params_after": rep["params_after"], "seconds": dt,
                 **compare(dense, embed_all(m, held))}
            runs.append(r)
            print(json.dumps(r), flush=True)
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "git_commit": git_commit(), "args": vars(args),
           "dense_params": sum(p.numel() for p in model.parameters()), "runs": runs}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "minilm_prune.json").write_text(json.dumps(res, indent=1))
    (out / "minilm_prune.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
