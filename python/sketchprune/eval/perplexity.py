"""Token-weighted perplexity of a causal LM: exp(mean NLL over all next-token predictions)."""

from __future__ import annotations

import math
import sys
import time

import torch
import torch.nn.functional as F

__all__ = ["perplexity"]


@torch.no_grad()
def perplexity(model, batches, progress: bool = True, chunk_size: int = 1, return_nll: bool = False):
    """``batches``: a LongTensor (n, seq_len), or an iterable of such tensors or of dicts with
    ``input_ids`` (and optionally ``attention_mask``; masked positions are not predicted).
    Sequences are evaluated ``chunk_size`` at a time; every next-token prediction within a
    sequence counts once (seq_len - 1 per full sequence).  Returns the perplexity, or
    (perplexity, mean NLL, token count) with ``return_nll``."""
    if torch.is_tensor(batches):
        batches = [batches]
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    total_nll, total_tok, t0, done = 0.0, 0, time.perf_counter(), 0
    try:
        for b in batches:
            ids = b["input_ids"] if isinstance(b, dict) else b
            mask = b.get("attention_mask") if isinstance(b, dict) else None
            if ids.dim() == 1:
                ids = ids[None]
                mask = None if mask is None else mask[None]
            for s in range(0, ids.shape[0], chunk_size):
                x = ids[s:s + chunk_size].to(dev)
                m = None if mask is None else mask[s:s + chunk_size].to(dev)
                logits = model(input_ids=x, attention_mask=m).logits[:, :-1].float()
                tgt = x[:, 1:]
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="none")
                if m is not None:
                    valid = (m[:, 1:] * m[:, :-1]).reshape(-1).bool()
                    nll = nll[valid]
                total_nll += float(nll.double().sum())
                total_tok += nll.numel()
                done += x.shape[0]
                if progress:
                    print(f"\rperplexity: {done} seqs, {total_tok} tokens, running ppl "
                          f"{math.exp(total_nll / max(total_tok, 1)):.3f} ({time.perf_counter() - t0:.0f}s)",
                          end="", file=sys.stderr, flush=True)
    finally:
        if progress:
            print(file=sys.stderr, flush=True)
        model.train(was_training)
    if total_tok == 0:
        raise ValueError("perplexity: no tokens to predict")
    mean = total_nll / total_tok
    ppl = math.exp(mean)
    return (ppl, mean, total_tok) if return_nll else ppl
