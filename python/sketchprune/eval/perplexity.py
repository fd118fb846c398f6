"""Next-token evaluation of a causal LM: perplexity and top-1 accuracy over the same predictions.

Every next-token prediction within a sequence counts once (``seq_len - 1`` per full sequence;
with an ``attention_mask`` only predictions whose input and target positions are both real
tokens).  Perplexity is ``exp`` of the mean negative log-likelihood over all predictions (token
weighted, not averaged per sequence); top-1 accuracy is the fraction of predictions whose
highest logit is the target token.  Logits are upcast to float32 before the softmax.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._numbers import as_int
from .._progress import progress_bar

__all__ = ["perplexity", "evaluate", "NextTokenScores"]


@dataclass
class NextTokenScores:
    nll_sum: float = 0.0
    correct: int = 0
    predictions: int = 0
    sequences: int = 0
    input_tokens: int = 0
    seconds: float = 0.0

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.predictions

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)

    @property
    def top1(self) -> float:
        return self.correct / self.predictions


def _as_batches(batches):
    if torch.is_tensor(batches) or isinstance(batches, Mapping):
        return [batches]
    return batches


def _count_tokens(batches) -> int | None:
    try:
        return sum(int((b["input_ids"] if isinstance(b, Mapping) else b).numel()) for b in batches)
    except TypeError:
        return None


@torch.no_grad()
def score_next_tokens(model, batches, progress: bool = False, chunk_size: int = 1) -> NextTokenScores:
    """Stream ``batches`` through ``model`` and accumulate the NLL, top-1 hits and counts.

    ``batches``: a LongTensor (n, seq_len) or (seq_len,), or an iterable of such tensors or of dicts
    with ``input_ids`` (and optionally ``attention_mask``).  Sequences go through the model
    ``chunk_size`` at a time, without a KV cache.  ``progress``: a bar over input tokens.
    """
    if as_int(chunk_size) is None or chunk_size < 1:
        raise ValueError(f"sketchprune.eval: chunk_size must be a positive integer, got {chunk_size!r}")
    chunk_size = as_int(chunk_size)
    batches = _as_batches(batches)
    if not isinstance(batches, (list, tuple)):
        batches = list(batches)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = NextTokenScores()
    bar = progress_bar(progress, total=_count_tokens(batches), desc="evaluating", unit="tok")
    t0 = time.perf_counter()
    try:
        for b in batches:
            ids = b["input_ids"] if isinstance(b, Mapping) else b
            mask = b.get("attention_mask") if isinstance(b, Mapping) else None
            if ids.dim() == 1:
                ids = ids[None]
                mask = None if mask is None else mask[None]
            for s in range(0, ids.shape[0], chunk_size):
                x = ids[s:s + chunk_size].to(dev)
                m = None if mask is None else mask[s:s + chunk_size].to(dev)
                logits = model(input_ids=x, attention_mask=m, use_cache=False).logits[:, :-1].float()
                logits = logits.reshape(-1, logits.shape[-1])
                tgt = x[:, 1:].reshape(-1)
                if m is not None:
                    valid = (m[:, 1:] * m[:, :-1]).reshape(-1).bool()
                    logits, tgt = logits[valid], tgt[valid]
                nll = F.cross_entropy(logits, tgt, reduction="none")
                out.nll_sum += float(nll.double().sum())
                out.correct += int((logits.argmax(dim=-1) == tgt).sum())
                out.predictions += int(tgt.numel())
                out.sequences += int(x.shape[0])
                out.input_tokens += int(x.numel() if m is None else (m != 0).sum())
                if bar is not None:
                    bar.update(int(x.numel()))
                    bar.set_postfix(ppl=f"{math.exp(out.nll_sum / max(out.predictions, 1)):.3f}")
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    out.seconds = time.perf_counter() - t0
    if out.predictions == 0:
        raise ValueError("sketchprune.eval: no tokens to predict (every sequence needs at least 2 tokens)")
    return out


def perplexity(model, batches, progress: bool = True, chunk_size: int = 1, return_nll: bool = False):
    """Token-weighted perplexity of ``model`` on ``batches`` (see :func:`score_next_tokens`).

    Returns the perplexity, or (perplexity, mean NLL, number of predictions) with ``return_nll``.
    """
    s = score_next_tokens(model, batches, progress=progress, chunk_size=chunk_size)
    return (s.perplexity, s.mean_nll, s.predictions) if return_nll else s.perplexity


def evaluate(model, batches, progress: bool = False, chunk_size: int = 1) -> dict:
    """``{"ppl", "top1", "nll", "tokens", "predicted_tokens", "sequences", "seq_len", "time_s"}``
    of ``model`` on ``batches``: perplexity and top-1 next-token accuracy over the same
    predictions; ``tokens`` counts the input tokens, ``predicted_tokens`` the predictions scored
    (``seq_len - 1`` per sequence); ``seq_len`` is the longest sequence seen."""
    batches = _as_batches(batches)
    if not isinstance(batches, (list, tuple)):
        batches = list(batches)
    seq_len = max((int((b["input_ids"] if isinstance(b, Mapping) else b).shape[-1]) for b in batches), default=0)
    s = score_next_tokens(model, batches, progress=progress, chunk_size=chunk_size)
    return {"ppl": s.perplexity, "top1": s.top1, "nll": s.mean_nll, "tokens": s.input_tokens,
            "predicted_tokens": s.predictions, "sequences": s.sequences, "seq_len": seq_len,
            "time_s": s.seconds}
