"""The memory plan of ``select``: the m x m work every method with a sketch does is budgeted."""

import json
import subprocess
import sys

import pytest
import torch

import sketchprune as sp
from sketchprune.select._plan import selection_workspace


def _sketch(N, m, seed=0):
    return torch.randn(N, m, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method, opts", [("uniform", {}), ("skmm", {}), ("skmm", {"formulation": "hinge"}),
                                          ("kcenter", {}), ("leverage", {})])
def test_a_budget_below_the_m_by_m_work_is_refused_before_it(method, opts, monkeypatch):
    import sketchprune.select.moment_matching as mm
    import sketchprune.select.skmm as skmm
    sk = _sketch(40, 400)
    calls = []
    real = mm.second_moment
    for mod in (mm, skmm):
        monkeypatch.setattr(mod, "second_moment", lambda x, *a: calls.append(x.shape) or real(x, *a))
    need = selection_workspace(40, 400, method, opts.get("formulation", "variance"))
    assert need == selection_workspace(40, 400, method, **opts)
    assert need > 8 * 400 * 400 * 4  # several m x m float64 matrices, whatever the method
    with pytest.raises(sp.BudgetError, match=f"{method} selection on the 40 x 400 sketch .*m x m float64"):
        sp.select(5, method, sk, budget=need - 1, **opts)
    with sp.limit_memory(need - 1), pytest.raises(sp.BudgetError, match="the budget of"):
        sp.select(5, method, sk, **opts)
    assert calls == []  # refused before the second moments
    sel = sp.select(5, method, sk, budget=need, **opts)
    assert sel.indices.numel() == 5 and calls


def test_class_balanced_and_relaxed_selections_are_planned():
    sk, labels = _sketch(60, 300), torch.arange(60) % 3
    # one class at a time (20 rows, the largest class) on a copy of its rows, then the pooled proxy
    need = selection_workspace(60, 300, "skmm", class_balanced=True, class_rows=20)
    assert need > selection_workspace(60, 300, "skmm")
    assert need < selection_workspace(60, 300, "skmm", class_balanced=True)  # class_rows defaults to N
    with pytest.raises(sp.BudgetError):
        sp.select(6, "skmm", sk, labels=labels, budget=need - 1)
    assert sp.select(6, "skmm", sk, labels=labels, budget=need).indices.numel() == 6
    # the relaxed variance solve (Frank-Wolfe with an exact line search) needs more than the greedy
    relaxed = selection_workspace(60, 300, "skmm", rounding="top")
    assert relaxed > selection_workspace(60, 300, "skmm")
    with pytest.raises(sp.BudgetError):
        sp.select(6, "skmm", sk, rounding="top", budget=relaxed - 1)
    assert sp.select(6, "skmm", sk, rounding="top", budget=relaxed).indices.numel() == 6
    # methods without a sketch allocate nothing of that kind: no check
    probs = torch.full((60, 4), 0.25)
    assert sp.select(6, "entropy", probs=probs, budget=1).indices.numel() == 6


_MEASURE = r"""
import json, sys, torch
torch.set_num_threads(1)
from sketchprune.select import select
from sketchprune.select._plan import selection_workspace
N, m, method, opts = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
g = torch.Generator().manual_seed(0)
select(5, method, torch.randn(50, 8, generator=g), **opts)  # load the code paths first
sk = torch.randn(N, m, generator=g)

def status():  # kB fields of /proc/self/status -> bytes
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out

before = status()
select(20, method, sk, **opts)
after = status()
# VmHWM, not getrusage's ru_maxrss: that one starts from the parent's resident size at fork (kept
# across exec).  Library code paged in on first use is file-backed (how much of it a process maps
# depends on what other processes left in the page cache): not the selection's, and still mapped.
extra = after["VmHWM"] - before["VmRSS"] - (after["RssFile"] - before["RssFile"])
print(json.dumps({"extra": extra,
                  "plan": selection_workspace(N, m, method, **opts)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("method, opts", [("uniform", {}), ("skmm", {}), ("skmm", {"rounding": "top"})])
def test_the_plan_bounds_the_measured_peak(method, opts):
    """Peak resident memory of a selection on a wide sketch (m^2 terms dominate) stays below the plan
    (about 6 m x m float64 matrices, where the CLI planned none)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, "200", "900", method, json.dumps(opts)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert 3 * 8 * 900 * 900 < d["extra"] <= d["plan"], d
