import pytest
import torch

import sketchprune as sp
from sketchprune import Budget, BudgetError, limit_memory
from sketchprune.budget import parse_bytes
from _helpers import randn, use_backend


@pytest.mark.parametrize("text,n", [("8GiB", 8 * 2**30), ("512 MB", 512 * 10**6), ("1.5e3", 1500), (4096, 4096),
                                    ("2kib", 2048)])
def test_parse(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["lots", "-1GiB", "8 parsecs"])
def test_parse_bad(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_plan_rows_and_error_message():
    b = Budget("1MiB")
    assert b.plan_rows("cpu", 1024, 10**9) == 1024
    assert b.plan_rows("cpu", 1024, 10) == 10
    with pytest.raises(BudgetError, match=r"needs at least 2.00 MiB .* budget of 1.00 MiB"):
        b.plan_rows("cpu", 2 * 2**20, 5, what="thing")


def test_accumulator_refuses_before_allocating():
    with pytest.raises(BudgetError, match="CovarianceAccumulator"):
        sp.CovarianceAccumulator(4096, budget="1MiB")


def _peak_cpu_alloc(fn) -> int:
    """Peak bytes allocated by torch on the CPU while running fn (from the profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def test_torch_backend_sketch_within_budget_same_result():
    g = randn(64, 20000)
    with use_backend("torch"):
        free = sp.sparse_sign_sketch(g, 64, 8, 3)
        budget = 2 * 2**20
        out = {}

        def run():
            with limit_memory(budget):
                out["v"] = sp.sparse_sign_sketch(g, 64, 8, 3)

        peak = _peak_cpu_alloc(run)
    # the same sums in another order (chunks of S's rows): float32 rounding relative to the largest entry
    # (an absolute 1e-5 failed on some draws: entries up to ~30 differ by ~1.5e-5)
    torch.testing.assert_close(out["v"], free, rtol=1e-5, atol=1e-5 * float(free.abs().max()))
    assert 0 < peak <= budget + 64 * 64 * 4, f"peak {peak} over budget {budget}"


def test_torch_backend_sketch_budget_too_small():
    with use_backend("torch"), limit_memory("1KiB"), pytest.raises(BudgetError, match="sparse_sign_sketch"):
        sp.sparse_sign_sketch(randn(64, 100), 64, 8)


def test_accumulator_small_budget_same_result_and_peak():
    d = 96
    xs = [randn(37, d) for _ in range(20)]
    ref = sp.CovarianceAccumulator(d)
    for x in xs:
        ref.update(x)
    stats = 4 * d * d + 8 * d
    budget = stats + 200 * (4 * d + 1)  # room for a 200-row staging buffer only
    out = {}

    def run():
        acc = sp.CovarianceAccumulator(d, budget=budget)
        for x in xs:
            acc.update(x)
        out["cov"] = acc.covariance()
        out["acc"] = acc

    peak = _peak_cpu_alloc(run)
    assert out["acc"]._stage_rows <= 200
    assert torch.allclose(out["cov"], ref.covariance(), rtol=1e-5, atol=1e-6)
    # the accumulator's own allocations (stats + staging) plus the result and small temporaries
    assert peak <= budget + 4 * d * d + 64 * 1024, f"peak {peak} > budget {budget}"


def test_cuda_accumulator_peak_under_budget():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    d = 1024
    xs = [randn(300, d, dtype=torch.bfloat16, device="cuda") for _ in range(30)]
    ref = sp.CovarianceAccumulator(d, device="cuda")
    for x in xs:
        ref.update(x)
    ref_cov = ref.covariance()
    budget = 4 * d * d + 8 * d + 2048 * (2 * d + 1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    acc = sp.CovarianceAccumulator(d, device="cuda", budget=budget)
    for x in xs:
        acc.update(x)
    acc.flush()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert torch.allclose(acc.covariance(), ref_cov, rtol=1e-4, atol=1e-5)
    # statistics + staging within the budget; small reductions (mean, count) on top
    assert peak <= budget + 64 * 1024, (peak, budget)
