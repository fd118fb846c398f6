"""Pruning speed and memory on LLaMA-7B layer shapes.

Measured
--------
A Llama model built from a config with LLaMA-7B's layer shapes (hidden 4096, FFN 11008, 32
heads, 32 KV heads, vocabulary 32000) and random bf16 weights, 4 decoder layers, pruned at 20%
sparsity with ``criterion="greedy"`` and least-squares reconstruction on 128 x 2048 random
calibration tokens under a ``Budget("8GiB")`` (GPU).  On a CPU the same code runs at toy shapes
(hidden 256, FFN 688, 8 heads, 2 layers, 8 x 128 tokens) as a smoke run: its times say
nothing about the target; ``SKETCHPRUNE_BENCH_PRUNE_SHAPE=llama7b`` runs the LLaMA-7B shapes on the
CPU too (with the layer and token counts below; no budget, host memory).

``extra_info``: the total time, the time per decoder layer (total / layers: an upper bound, as
it also carries the one-off embedding pass), that per-layer time extrapolated to the 32 layers
of LLaMA-7B (target: under 3 minutes), the peak accelerator memory (``max_memory_allocated``
after a reset; target: under the budget) and the achieved sparsity.  On a GPU the model is kept in
host memory and pruned with ``device="cuda"`` (sequential on-loading: one decoder layer at a time on
the GPU), so the peak is that of one layer's work, as a real 7B model would need under 8 GiB;
``SKETCHPRUNE_BENCH_PRUNE_ONLOAD=0`` keeps the whole model on the GPU.

Options through the environment: ``SKETCHPRUNE_BENCH_PRUNE_CRITERION`` (default ``greedy``),
``SKETCHPRUNE_BENCH_PRUNE_LAYERS`` (default 4), ``SKETCHPRUNE_BENCH_PRUNE_TOKENS`` as
``batches x seq_len`` (default ``128x2048``).
"""

from __future__ import annotations

import os
import resource
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from sketchprune import Budget  # noqa: E402
from sketchprune.prune import prune_model  # noqa: E402

BUDGET = "8GiB"


def _shape(device):
    if device.type == "cuda" or os.environ.get("SKETCHPRUNE_BENCH_PRUNE_SHAPE", "") == "llama7b":
        layers = int(os.environ.get("SKETCHPRUNE_BENCH_PRUNE_LAYERS", "4"))
        b, s = (int(v) for v in os.environ.get("SKETCHPRUNE_BENCH_PRUNE_TOKENS", "128x2048").split("x"))
        return dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                    num_hidden_layers=layers, vocab_size=32000), b, s, torch.bfloat16
    return dict(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=8,
                num_hidden_layers=2, vocab_size=1000), 8, 128, torch.float32


def _model(cfg_kw, dtype, device):
    cfg = transformers.LlamaConfig(max_position_embeddings=4096, **cfg_kw)
    torch.manual_seed(0)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(dtype)
    return model.eval()


def test_prune_llama7b_shapes(benchmark, device):
    criterion = os.environ.get("SKETCHPRUNE_BENCH_PRUNE_CRITERION", "greedy")
    cfg_kw, n_batches, seq, dtype = _shape(device)
    model = _model(cfg_kw, dtype, device)
    # GPU: the model is kept in host memory and each decoder layer is moved to the GPU for its turn
    # (sequential on-loading), as for a real 7B model under an 8 GiB budget; the peak then counts
    # one layer, its statistics and one batch's activations.  SKETCHPRUNE_BENCH_PRUNE_ONLOAD=0
    # keeps the whole model on the GPU instead (its weights then count in the peak too).
    onload = device.type == "cuda" and os.environ.get("SKETCHPRUNE_BENCH_PRUNE_ONLOAD", "1") != "0"
    if onload:
        model.to("cpu")             # built on the GPU (fast initialisation), kept on the host
        torch.cuda.empty_cache()
    g = torch.Generator().manual_seed(1)
    # calibration batches live in host memory; the pipeline moves what it needs
    batches = [{"input_ids": torch.randint(0, cfg_kw["vocab_size"], (1, seq), generator=g)} for _ in range(n_batches)]
    budget = Budget(BUDGET) if device.type == "cuda" else None
    info = {}

    def run():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        report = prune_model(model, batches, sparsity=0.2, criterion=criterion, reconstruct=True, budget=budget,
                             progress=False, **({"device": device} if onload else {}))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - t0
        L = cfg_kw["num_hidden_layers"]
        # a 32-layer run pays the one-off parts (capturing the first layer's inputs, the model-wide
        # bookkeeping after the layers) once and the layer loop 32 times: extrapolate only the loop
        # (on-loading, statistics, criterion, refits, propagation), from its mean per layer
        loop = float(report["seconds"]["layers"])
        per_layer = [float(r["seconds"]) for r in report["layers"]]
        info.update(total_s=total, per_layer_s=loop / L, extrapolated_32_layers_s=total - loop + loop / L * 32,
                    one_off_s=total - loop, layer_seconds=per_layer,
                    extrapolated_naive_32_layers_s=total / L * 32,
                    peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                    peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # host, whole process
                    budget=BUDGET if budget is not None else None, onload=onload,
                    sparsity_achieved=report.get("sparsity_achieved"),
                    calibration_tokens=n_batches * seq, layers=L, criterion=criterion, dtype=str(dtype))

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info, details=dict(info), op="prune", case=f"llama7b-shapes L={info['layers']} {n_batches}x{seq}"
                                if cfg_kw["hidden_size"] == 4096 else f"toy L={info['layers']} {n_batches}x{seq}",
                                impl=f"{criterion}+reconstruct", kind="sketchprune", backend="sketchprune",
                                device=str(device), median_s=info["total_s"])
