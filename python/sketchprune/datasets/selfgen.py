"""Self-generated calibration data: sequences sampled from the (dense) model itself.

For data-free settings (no text that matches the model's training distribution at hand), the
model's own samples are a calibration set: each sequence starts from a uniformly random token
(special tokens excluded when given), then every next token is drawn from the model's
distribution at ``temperature`` restricted to the ``top_k`` most likely tokens.  Sampling uses
its own ``torch.Generator`` seeded with ``seed`` on the CPU (logits are moved there), so the same
model, seed and sizes give the same tokens, independent of the global RNG.

Cost: ``n_seqs x seq_len`` generated tokens in ``seq_len`` sequential steps of ``batch_size``
sequences with a KV cache -- about one forward pass over the same number of tokens plus the
per-step overhead, which dominates on a CPU.  Measured with SmolLM2-135M on a 2-core machine
shared with other jobs (load average ~8): 30 tokens/s at batch 4 with
``torch.set_num_threads(1)``, but only 2 tokens/s with 2 threads, because the many small
per-step ops then wait on descheduled OpenMP threads; 4096 calibration tokens take minutes, i.e.
several times a forward pass over the same tokens.
"""

from __future__ import annotations

import inspect

import torch

from .._progress import progress_bar

__all__ = ["self_generated"]


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


@torch.no_grad()
def self_generated(model, n_seqs: int, seq_len: int, seed: int = 0, temperature: float = 1.0,
                   top_k: int | None = 50, batch_size: int = 8, exclude_ids=(), progress: bool = False
                   ) -> torch.LongTensor:
    """(n_seqs, seq_len) token ids sampled from ``model`` (see the module doc).

    ``top_k``: ``None`` or 0 samples from the whole distribution.  ``exclude_ids``: token ids
    never used as first tokens (e.g. the tokenizer's special tokens).
    """
    n_seqs, seq_len, batch_size = int(n_seqs), int(seq_len), int(batch_size)
    if n_seqs < 1 or seq_len < 1 or batch_size < 1:
        raise ValueError(f"self-generated data: n_seqs, seq_len and batch_size must be >= 1, got "
                         f"{n_seqs}, {seq_len}, {batch_size}")
    if not temperature > 0:
        raise ValueError(f"self-generated data: temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"self-generated data: top_k must be >= 0 (0 = no restriction), got {top_k}")
    vocab = _vocab_size(model)
    allowed = torch.ones(vocab, dtype=torch.bool)
    ex = torch.as_tensor(list(exclude_ids), dtype=torch.long)
    allowed[ex[(ex >= 0) & (ex < vocab)]] = False
    first_pool = torch.nonzero(allowed).reshape(-1)
    if first_pool.numel() == 0:
        raise ValueError("self-generated data: every token is excluded as a first token")
    # the KV-cache argument is ``cache`` in recent transformers, ``past_key_values`` before
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    g = torch.Generator().manual_seed(int(seed))
    dev = next(model.parameters()).device
    out = torch.empty(n_seqs, seq_len, dtype=torch.long)
    out[:, 0] = first_pool[torch.randint(0, first_pool.numel(), (n_seqs,), generator=g)]
    was_training = model.training
    model.eval()
    bar = progress_bar(progress, total=n_seqs * seq_len, desc="self-generating calibration", unit="tok")
    try:
        for s in range(0, n_seqs, batch_size):
            rows = out[s:s + batch_size]
            step_in, past = rows[:, :1].to(dev), None
            if bar is not None:
                bar.update(rows.shape[0])
            for t in range(1, seq_len):
                res = model(input_ids=step_in, use_cache=True, **({} if past is None else {cache_arg: past}))
                past = getattr(res, "cache", None) if cache_arg == "cache" else res.past_key_values
                logits = res.logits[:, -1].float().cpu() / float(temperature)
                if top_k and top_k < logits.shape[-1]:
                    kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=g)
                rows[:, t] = nxt[:, 0]
                step_in = nxt.to(dev)
                if bar is not None:
                    bar.update(rows.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return out
