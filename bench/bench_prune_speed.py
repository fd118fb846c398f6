"""Pruning time of SmolLM2-135M-Instruct against one plain forward pass over the same tokens.

Measured
--------
The embedded default model (fetched into the sketchprune cache on first use; skipped when it
cannot be had) pruned by 20% with least-squares reconstruction (sequential, the library's
defaults) on 32 x 512 = 16,384 Wikipedia calibration tokens, for ``criterion="greedy"`` and
``"sigma"``.  The baseline is one plain forward pass of the dense model over the same tokens in
the same batches (no hooks, no cache), timed right before and right after each pruning run; the
ratio is taken against the mean of the two, so a machine whose speed drifts during the run
(shared CPUs) is charged fairly.  Target (CPU): greedy with reconstruction at most 3x the
forward.

``extra_info``: prune_s, forward_s (before, after), ratio, calibration tokens, achieved
sparsity.  Options through the environment: ``SKETCHPRUNE_BENCH_PRUNE_SPEED_SEQS`` (default
32 sequences of 512 tokens), ``SKETCHPRUNE_BENCH_PRUNE_SPEED_CRITERIA`` (default
``greedy,sigma``).
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

pytest.importorskip("transformers")

SEQS = int(os.environ.get("SKETCHPRUNE_BENCH_PRUNE_SPEED_SEQS", "32"))
CRITERIA = os.environ.get("SKETCHPRUNE_BENCH_PRUNE_SPEED_CRITERIA", "greedy,sigma").split(",")
SEQ_LEN, BATCH = 512, 4


@pytest.fixture(scope="module")
def smollm2(device):
    from sketchprune.datasets import load_smollm2, token_batches, wikipedia_texts

    try:
        model, tok = load_smollm2()
        texts = wikipedia_texts()
    except Exception as e:  # offline first use: say so instead of failing the whole bench run
        pytest.skip(f"SmolLM2 / Wikipedia sample not available: {type(e).__name__}: {e}")
    ids = token_batches(tok, texts, SEQ_LEN, SEQS, split="calib", seed=0)
    return model.to(device).eval(), [b.to(device) for b in ids.split(BATCH)]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("criterion", CRITERIA)
def test_prune_vs_forward(benchmark, device, smollm2, criterion):
    from sketchprune.prune import prune_model

    dense, batches = smollm2

    def forward():
        _sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            for b in batches:
                dense(input_ids=b, use_cache=False)
        _sync(device)
        return time.perf_counter() - t

    forward()   # warm-up (allocator, kernels)
    info = {}

    def run():
        f0 = forward()
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        rep = prune_model(model, batches, sparsity=0.2, criterion=criterion, reconstruct=True, progress=False)
        _sync(device)
        tp = time.perf_counter() - t
        f1 = forward()
        info.update(prune_s=tp, forward_s=[f0, f1], ratio=tp / ((f0 + f1) / 2),
                    calibration_tokens=SEQS * SEQ_LEN, sparsity=rep["sparsity_achieved"],
                    threads=torch.get_num_threads())

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(op="prune_model", case=f"smollm2-135m 20% {criterion}+reconstruct "
                                f"{SEQS}x{SEQ_LEN}", impl="sketchprune", kind="sketchprune",
                                device=str(device), backend="native", median_s=info["prune_s"],
                                details=info)
    assert info["ratio"] > 0
