import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

from sketchprune.cli import main


def _proc(*args):
    """The real command in a fresh process (exit status, no traceback)."""
    return subprocess.run([sys.executable, "-m", "sketchprune.cli", "select", *map(str, args)],
                          capture_output=True, text=True)


class _Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def _cli(capsys):
    """In-process runs of ``sketchprune select`` (fast; the process path is tested separately)."""
    def run(*args):
        capsys.readouterr()
        rc = main(["select", *map(str, args)])
        out = capsys.readouterr()
        return _Result(rc, out.out, out.err)
    return run


def test_select_cli_writes_exactly_n_indices(tmp_path):
    _cli = _proc
    g = np.random.default_rng(0).standard_normal((300, 500)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    out = tmp_path / "sel.json"
    res = _cli("--grads", tmp_path / "g.npy", "--n", 40, "--sketch-dim", 32, "--seed", 3, "--budget", "1GiB",
               "--out", out, "--quiet")
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    assert len(set(d["indices"])) == 40 and max(d["indices"]) < 300
    assert d["method"] == "skmm" and d["n"] == 40 and d["seed"] == 3 and d["time_s"] > 0
    assert d["sketch"]["type"] == "sparse-sign" and d["sketch"]["m"] == 32 and d["sketch"]["k"] == 8
    assert d["sketch"]["seed"] == 3
    assert len(d["weights"]) == 40 and all(0 <= w <= 1 / 40 + 1e-12 for w in d["weights"])
    assert d["info"]["converged"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_select_cli_features_probe_and_labels(tmp_path, _cli):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.standard_normal((200, 12)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 4, 200))
    for extra in ([], ["--labels", tmp_path / "y.npy"], ["--labels", tmp_path / "y.npy", "--class-balanced"]):
        res = _cli("--features", tmp_path / "f.npy", "--n", 30, "--method", "kcenter", "--quiet", *extra)
        assert res.returncode == 0, res.stderr
        d = json.loads(res.stdout)
        assert len(set(d["indices"])) == 30 and d["weights"] is None
        assert d["sketch"]["source"] == "linear-probe"
        assert d["sketch"]["labels"] == ("given" if extra else "random")
    # paper formulation through the CLI
    res = _cli("--features", tmp_path / "f.npy", "--n", 30, "--formulation", "paper", "--m", 16, "--quiet")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["info"]["formulation"] == "paper"
    # variance formulation, greedy and relaxed
    for rd in ("greedy", "top"):
        res = _cli("--features", tmp_path / "f.npy", "--n", 30, "--formulation", "variance", "--rounding", rd,
                   "--eps", 0.1, "--m", 16, "--quiet")
        assert res.returncode == 0, res.stderr
        info = json.loads(res.stdout)["info"]
        assert info["formulation"] == "variance" and info["rounding"] == rd and info["eps"] == 0.1


def test_select_cli_default_m(tmp_path, _cli):
    g = np.random.default_rng(1).standard_normal((100, 50)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    res = _cli("--grads", tmp_path / "g.npy", "--n", 10, "--method", "kcenter")
    assert res.returncode == 0, res.stderr
    assert "intrinsic dimension" in res.stderr and len(json.loads(res.stdout)["indices"]) == 10


@pytest.mark.parametrize("args, message", [
    (["--n", 0], "--n must be in"),
    (["--n", 101], "--n must be in"),
    (["--n", 5, "--sketch-dim", 4, "--k", 8], "must be >= k"),
    (["--n", 5, "--formulation", "hinge", "--c", 1.0], "--c must be in (0, 1)"),
    (["--n", 5, "--budget", "1KiB", "--m", 16], "budget"),
    (["--n", 5, "--method", "magic"], "unknown method"),
    (["--n", 5, "--rounding", "greedy", "--formulation", "hinge"], "--rounding greedy needs --formulation variance"),
    (["--n", 5, "--formulation", "variance", "--eps", 0], "--eps must be positive"),
    (["--n", 5, "--method", "forgetting"], "needs correctness"),
])
def test_select_cli_bad_input(tmp_path, _cli, args, message):
    np.save(tmp_path / "g.npy", np.ones((100, 20), np.float32))
    res = _cli("--grads", tmp_path / "g.npy", "--quiet", *args)
    assert res.returncode != 0 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_select_cli_bad_files(tmp_path, _cli):
    g = np.random.default_rng(2).standard_normal((50, 10)).astype(np.float32)
    g[7, 3] = np.nan
    g[31, 0] = np.inf
    np.save(tmp_path / "bad.npy", g)
    res = _cli("--grads", tmp_path / "bad.npy", "--n", 5)
    assert res.returncode != 0 and "rows 7, 31" in res.stderr and "Traceback" not in res.stderr
    np.save(tmp_path / "g.npy", np.ones((50, 10), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(49, np.int64))
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--labels", tmp_path / "y.npy", "--class-balanced")
    assert res.returncode != 0 and "length N = 50" in res.stderr and "Traceback" not in res.stderr
    res = _proc("--grads", tmp_path / "nope.npy", "--n", 10)
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    res = _cli("--n", 10)
    assert res.returncode != 0 and "exactly one of --grads" in res.stderr


def test_select_cli_default_m_records_pilot_and_warns_when_saturated(tmp_path, _cli, monkeypatch):
    import sketchprune.cli_select as cs
    rng = np.random.default_rng(2)
    # low-rank gradients (rank 5) far below a 64-column pilot: a trustworthy estimate, no warning
    g = (rng.standard_normal((200, 5)) @ rng.standard_normal((5, 300))).astype(np.float32)
    np.save(tmp_path / "low.npy", g)
    monkeypatch.setattr(cs, "PILOT_M", 64)
    res = _cli("--grads", tmp_path / "low.npy", "--n", 10, "--method", "kcenter")
    assert res.returncode == 0, res.stderr
    pilot = json.loads(res.stdout)["sketch"]["pilot"]
    assert pilot["m"] == 64 and pilot["intrinsic_dimension"] <= 5 and not pilot["lower_bound"]
    assert "lower bound" not in res.stderr
    # isotropic gradients wider than the pilot: the estimate fills it -> warned (also with --quiet)
    np.save(tmp_path / "iso.npy", rng.standard_normal((200, 300)).astype(np.float32))
    res = _cli("--grads", tmp_path / "iso.npy", "--n", 10, "--method", "kcenter", "--quiet")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["sketch"]["pilot"]["lower_bound"] and d["sketch"]["pilot"]["intrinsic_dimension"] > 32
    assert "only a lower bound" in res.stderr and "--sketch-dim" in res.stderr
    assert d["sketch"]["m"] == 2 * d["sketch"]["pilot"]["intrinsic_dimension"]
    # an explicit m: no pilot
    res = _cli("--grads", tmp_path / "iso.npy", "--n", 10, "--method", "kcenter", "--m", 16, "--quiet")
    assert "pilot" not in json.loads(res.stdout)["sketch"]


def _no_traceback(res, *messages):
    """A one-line ``sketchprune select: error: ...`` with exit status 2 that names each message."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("sketchprune select: error: "), res.stderr
    assert all(m in lines[0] for m in messages), res.stderr


def test_select_cli_unreadable_files(tmp_path, _cli):
    import torch
    np.save(tmp_path / "g.npy", np.ones((20, 5), np.float32))
    (tmp_path / "junk.pt").write_bytes(b"not a pt")
    (tmp_path / "junk.npy").write_bytes(b"not an npy")
    torch.save({"a": torch.ones(20, 5)}, tmp_path / "dict.pt")
    for opt in ("--grads", "--labels", "--probs"):
        for bad in ("junk.pt", "junk.npy", "dict.pt"):
            src = [] if opt == "--grads" else ["--grads", tmp_path / "g.npy"]
            _no_traceback(_cli(*src, opt, tmp_path / bad, "--n", 5, "--quiet"), str(tmp_path / bad))


@pytest.mark.parametrize("labels, message", [
    (np.array(["a"] * 20), "integer class indices, got dtype <U1"),
    (np.array([{"a": 1}] * 20, dtype=object), "not a numeric .npy array (it holds Python objects)"),
    (np.full(20, np.inf), "integer class indices"),
    (np.full(20, 1.5), "integer class indices"),
])
def test_select_cli_bad_labels(tmp_path, _cli, labels, message):
    np.save(tmp_path / "g.npy", np.ones((20, 5), np.float32))
    np.save(tmp_path / "y.npy", labels, allow_pickle=True)
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--labels", tmp_path / "y.npy", "--n", 5, "--quiet"), message)


def test_select_cli_classes(tmp_path, _cli):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(40) % 4)
    f = ["--features", tmp_path / "f.npy", "--n", 5, "--m", 8, "--method", "kcenter", "--quiet"]
    for c in (-3, 0):
        _no_traceback(_cli(*f, "--classes", c), f"--classes must be >= 1, got {c}")
    _no_traceback(_cli(*f, "--classes", 3, "--labels", tmp_path / "y.npy"), "labels go up to 3 but --classes is 3")
    res = _cli(*f, "--classes", 4, "--labels", tmp_path / "y.npy")
    assert res.returncode == 0 and len(json.loads(res.stdout)["indices"]) == 5, res.stderr
    # with --grads there is no probe: --classes would be ignored, so it is refused
    np.save(tmp_path / "g.npy", np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32))
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 8, "--quiet", "--classes", 4),
                  "--classes sets the class count of the linear probe built from --features")


def test_select_cli_out_checked_first_and_never_replaced(tmp_path, _cli, monkeypatch):
    import os
    import sketchprune.cli_select as cs
    g = np.ones((20, 5), np.float32)
    g[3, 0] = np.nan  # the input is bad too: a bad --out must be found before the input is read
    np.save(tmp_path / "g.npy", g)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "target.json").write_text("keep")
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    for out, message in [(tmp_path / "dir", "is a directory"), (tmp_path / "link.json", "is a symlink"),
                         ("/dev/null", "is not a regular file"), (tmp_path / "no" / "x.json", "does not exist"),
                         (tmp_path / "file" / "x.json", "is not a directory")] + \
            ([("/proc/sketchprune.json", "cannot write --out")] if os.path.isdir("/proc") else []):
        _no_traceback(_cli("--grads", tmp_path / "g.npy", "--n", 5, "--quiet", "--out", out), message)
    assert (tmp_path / "target.json").read_text() == "keep" and (tmp_path / "link.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "g.npy", "link.json", "target.json"]
    assert not any((tmp_path / "dir").iterdir())
    # a failed write (disk full, ...) after the work: one line, no temporary file left, nothing written
    np.save(tmp_path / "g.npy", np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32))
    def full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cs.os, "replace", full)
    out = tmp_path / "sel.json"
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 8, "--quiet", "--out", out),
                  "cannot write --out", "No space left")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    out.write_text("old")  # an existing regular file is replaced
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 8, "--quiet", "--out", out)
    assert res.returncode == 0 and len(json.loads(out.read_text())["indices"]) == 5, res.stderr


def _strict(text):
    """json.loads that rejects NaN / Infinity."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite {c} in the JSON"))


def test_select_cli_strict_json_and_convergence_warnings(tmp_path, _cli):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g.npy", rng.standard_normal((60, 10)).astype(np.float32))
    np.save(tmp_path / "y.npy", np.arange(60) % 3)
    g = ["--grads", tmp_path / "g.npy", "--n", 12, "--m", 8, "--quiet"]
    # paper: gap NaN -> null, uncertified -> warned (also with --quiet), exit 0
    res = _cli(*g, "--formulation", "paper", "--out", tmp_path / "p.json")
    info = _strict((tmp_path / "p.json").read_text())["info"]
    assert res.returncode == 0 and info["duality_gap"] is None and info["converged"] is False
    assert "paper formulation did not converge" in res.stderr
    # relaxed variance stopped by --time-limit before --tol is met: gap vs tolerance, pooled ...
    res = _cli(*g, "--rounding", "sample", "--tol", 1e-12, "--time-limit", 1e-6)
    info = _strict(res.stdout)["info"]
    assert res.returncode == 0 and info["converged"] is False and info["tol"] == 1e-12
    assert len(res.stderr.strip().splitlines()) == 1
    assert "variance solver did not converge: duality gap" in res.stderr and "tolerance 1e-12" in res.stderr
    assert "stopped by --time-limit" in res.stderr
    # ... and per class (maxmin, class-balanced by the labels)
    res = _cli(*g, "--formulation", "maxmin", "--labels", tmp_path / "y.npy", "--tol", 1e-12, "--time-limit", 1e-6)
    assert res.returncode == 0 and not any(r["converged"] for r in _strict(res.stdout)["info"]["per_class"].values())
    assert "maxmin solver did not converge in 3 of 3 classes (0, 1, 2)" in res.stderr
    # converged: no warning
    res = _cli(*g, "--formulation", "maxmin")
    assert res.returncode == 0 and _strict(res.stdout)["info"]["converged"] and res.stderr == "", res.stderr


@pytest.mark.parametrize("args, message", [
    (["--tol", 0, "--formulation", "hinge"], "--tol must be a positive number"),
    (["--time-limit", -1, "--formulation", "hinge"], "--time-limit must be a positive number"),
    (["--tol", 1e-3], "--tol applies to the iterative SkMM solvers only"),  # greedy
    (["--time-limit", 1, "--formulation", "paper"], "--time-limit applies"),
    (["--tol", 1e-3, "--method", "kcenter"], "--tol applies"),
])
def test_select_cli_bad_solver_limits(tmp_path, _cli, args, message):
    np.save(tmp_path / "g.npy", np.ones((20, 5), np.float32))
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--n", 5, "--quiet", *args), message)


def test_select_cli_probs_memmap_quiet(tmp_path, _cli):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g.npy", rng.standard_normal((30, 6)).astype(np.float32))
    p = rng.random((30, 3))
    np.save(tmp_path / "p.npy", p / p.sum(1, keepdims=True))
    # a fresh process: torch warns about a non-writable array only once per process
    res = _proc("--grads", tmp_path / "g.npy", "--probs", tmp_path / "p.npy", "--method", "entropy", "--n", 5,
                "--m", 8, "--quiet")
    assert res.returncode == 0 and "not writable" not in res.stderr and res.stderr == "", res.stderr
    assert len(json.loads(res.stdout)["indices"]) == 5


@pytest.mark.parametrize("bad, message", [
    ("unnormalised", "probs rows must sum to 1"),
    ("negative", "probs must lie in [0, 1]"),
    ("nan", "--probs has NaN or Inf values in rows 2"),
])
def test_select_cli_bad_probs_before_the_sketch(tmp_path, _cli, monkeypatch, bad, message):
    import sketchprune.cli_select as cs
    rng = np.random.default_rng(0)
    np.save(tmp_path / "g.npy", rng.standard_normal((30, 6)).astype(np.float32))
    p = rng.random((30, 3))
    p /= p.sum(1, keepdims=True)
    if bad == "unnormalised":
        p *= 0.5
    elif bad == "negative":
        p[4] = [1.5, -0.25, -0.25]       # rows still sum to 1
    else:
        p[2, 1] = np.nan
    np.save(tmp_path / "p.npy", p)

    def no_sketch(*a, **k):
        raise AssertionError("the sketch was built before --probs was checked")
    monkeypatch.setattr("sketchprune.select.sketch_matrix", no_sketch)
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--probs", tmp_path / "p.npy", "--method", "entropy",
                       "--n", 5, "--m", 8, "--quiet"), message)


def test_check_plan_fits_the_budget():
    from sketchprune.cli_select import CHECK_BLOCK_ENTRIES, _check_plan
    for N, r, avail in ((4000, 20000, 8 << 20), (100, 10**7, 1 << 20), (10, 5, 1 << 30), (9000, 100, 10**9)):
        rows, cols = _check_plan(N, r, avail)
        assert 1 <= rows <= N and 1 <= cols <= r and rows * cols <= min(avail, CHECK_BLOCK_ENTRIES)
        assert cols == r or rows == 1  # whole rows, or column blocks of one row
    assert _check_plan(4000, 20000, 8 << 20) == ((8 << 20) // 20000, 20000)


def test_select_cli_nan_check_scans_within_the_budget(tmp_path, _cli, monkeypatch):
    """The NaN/Inf scan of --grads flags at most --budget entries at a time (no N x r temporary),
    and still names the bad rows."""
    g = np.random.default_rng(0).standard_normal((300, 700)).astype(np.float32)
    g[[7, 299], [650, 3]] = [np.nan, np.inf]
    np.save(tmp_path / "g.npy", g)
    seen = []
    real = np.isfinite

    def spy(a, *args, **kw):
        seen.append(a.size)
        return real(a, *args, **kw)
    monkeypatch.setattr(np, "isfinite", spy)
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 8, "--budget", "64KiB", "--quiet",
               "--method", "uniform")
    monkeypatch.undo()
    assert res.returncode == 2 and "--grads has NaN or Inf values in rows 7, 299" in res.stderr, res.stderr
    assert seen and max(seen) <= 64 * 1024 and sum(seen) == g.size


def test_select_cli_c_message(tmp_path, _cli):
    np.save(tmp_path / "g.npy", np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32))
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--quiet", "--formulation", "hinge", "--c", 0)
    assert res.returncode == 2 and "--c must be in (0, 1) for the hinge formulation, got 0.0" in res.stderr
    assert "c >= 1" not in res.stderr
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--quiet", "--formulation", "hinge", "--c", 1)
    assert res.returncode == 2 and "with c >= 1 uniform weights already satisfy" in res.stderr


def test_select_cli_budget_counts_the_m_by_m_work(tmp_path, _cli, monkeypatch):
    """Every method makes m x m float64 moments and eigendecompositions (the variance proxy; SkMM's
    moment problem): a budget too small for them is a one-line error before the sketch is made."""
    import sketchprune.select as S
    np.save(tmp_path / "g.npy", np.random.default_rng(0).standard_normal((50, 600)).astype(np.float32))
    made = []
    real = S.sketch_matrix
    monkeypatch.setattr(S, "sketch_matrix", lambda *a, **kw: made.append(a[1]) or real(*a, **kw))
    for method in ("skmm", "uniform", "kcenter"):
        # 500 x 500 float64 is 2 MB: far more than 4 MiB with the eigensolver's copies, although the
        # sketch itself (50 x 500 float32, 100 KB) and its rows' copies would fit
        res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 500, "--budget", "4MiB", "--quiet",
                   "--method", method)
        _no_traceback(res, f"the {method} selection on the 50 x 500 sketch (the float32 sketch itself, m x m float64",
                      "the budget of 4.00 MiB", "or use smaller inputs, or a smaller --sketch-dim")
    assert made == []
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 500, "--budget", "64MiB", "--quiet")
    assert res.returncode == 0 and made == [500], res.stderr
    # the default m: the pilot sketch's eigenvalue solve is planned too
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--budget", "2MiB", "--quiet", "--method", "uniform")
    _no_traceback(res, "the pilot sketch (50 x 600, float32, with the eigenvalues of its m x m second moment) needs")


def test_select_cli_sketch_dim_above_the_gradient_width_is_capped(tmp_path, _cli):
    """As the default m, an explicit m is at most r: a wider sketch reduces nothing (and its m x m
    work grows with m); the CLI says so and records the m asked for."""
    g = np.random.default_rng(0).standard_normal((60, 20)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 300, "--quiet", "--method", "kcenter")
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["sketch"]["m"] == 20 and d["sketch"]["m_requested"] == 300
    assert "warning: --sketch-dim 300 exceeds the gradient width r = 20" in res.stderr
    assert "using m = 20" in res.stderr
    same = json.loads(_cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 20, "--quiet", "--method",
                           "kcenter").stdout)
    assert same["indices"] == d["indices"] and "m_requested" not in same["sketch"]
    # r below k: m = k, as the default m (m < k is refused)
    res = _cli("--grads", tmp_path / "g.npy", "--n", 5, "--m", 64, "--k", 32, "--quiet", "--method", "kcenter")
    assert res.returncode == 0 and json.loads(res.stdout)["sketch"]["m"] == 32, res.stderr
    # the probe's gradient width (--features): C d + C
    np.save(tmp_path / "f.npy", g[:, :3])
    res = _cli("--features", tmp_path / "f.npy", "--classes", 2, "--n", 5, "--m", 100, "--quiet",
               "--method", "kcenter")
    assert res.returncode == 0 and json.loads(res.stdout)["sketch"]["m"] == 8, res.stderr
    assert "gradient width r = 8" in res.stderr


def test_select_cli_refuses_long_double_and_complex(tmp_path, _cli):
    g = np.random.default_rng(0).standard_normal((30, 6))
    np.save(tmp_path / "g.npy", g.astype(np.float32))
    np.save(tmp_path / "g128.npy", g.astype(np.longdouble))
    np.save(tmp_path / "gc.npy", g.astype(np.complex64))
    np.save(tmp_path / "y128.npy", (np.arange(30) % 2).astype(np.longdouble))
    for opt, f in (("--grads", "g128.npy"), ("--features", "g128.npy")):
        _no_traceback(_cli(opt, tmp_path / f, "--n", 5, "--quiet"),
                      f"{opt} has unsupported dtype {np.dtype(np.longdouble)}", "save it as float64 or float32")
    _no_traceback(_cli("--grads", tmp_path / "gc.npy", "--n", 5, "--quiet"), "--grads has unsupported dtype complex64")
    _no_traceback(_cli("--grads", tmp_path / "g.npy", "--labels", tmp_path / "y128.npy", "--n", 5, "--quiet"),
                  "--labels has unsupported dtype")
    # probabilities are converted to float64 by numpy: long double ones are read
    np.save(tmp_path / "p128.npy", np.full((30, 4), 0.25, dtype=np.longdouble))
    res = _cli("--grads", tmp_path / "g.npy", "--probs", tmp_path / "p128.npy", "--method", "entropy", "--n", 5,
               "--m", 8, "--quiet")
    assert res.returncode == 0, res.stderr


def test_select_cli_reads_big_endian_npy(tmp_path, _cli):
    """Big-endian .npy files are valid: --grads (memory-mapped, converted block by block), --features
    and --labels give the same selection as the native files."""
    rng = np.random.default_rng(0)
    g = rng.standard_normal((80, 30)).astype(np.float32)
    y = rng.integers(0, 3, 80)
    for name, a in (("g", g), ("y", y)):
        np.save(tmp_path / f"{name}.npy", a)
        np.save(tmp_path / f"{name}_be.npy", a.astype(a.dtype.newbyteorder(">")))
    assert np.load(tmp_path / "g_be.npy", mmap_mode="r").dtype.str == ">f4"
    for opt in ("--grads", "--features"):
        for lab in ([], ["--labels"]):
            args = lambda sfx: [opt, tmp_path / f"g{sfx}.npy", "--n", 10, "--m", 16, "--quiet",  # noqa: E731
                                *([lab[0], tmp_path / f"y{sfx}.npy"] if lab else [])]
            ref, be = _cli(*args("")), _cli(*args("_be"))
            assert ref.returncode == 0 and be.returncode == 0, be.stderr
            assert json.loads(be.stdout)["indices"] == json.loads(ref.stdout)["indices"]


class _Thing:
    """A Python object that weights-only loading refuses."""


def test_select_cli_garbage_npy_never_suggests_unpickling(tmp_path, _cli):
    import torch
    np.save(tmp_path / "g.npy", np.ones((20, 5), np.float32))
    (tmp_path / "text.npy").write_bytes(b"hello, not an array")
    (tmp_path / "header.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    (tmp_path / "text.pt").write_bytes(b"not a zip or pickle at all")  # torch: 'weights_only set to False ...'
    torch.save({"a": _Thing()}, tmp_path / "obj.pt")
    for f, why in (("text.npy", "not a numeric .npy array (it does not start with the .npy header)"),
                   ("header.npy", "not a numeric .npy array"),
                   ("obj.npy", "not a numeric .npy array (it holds Python objects)"),
                   ("text.pt", "not a tensor file"), ("obj.pt", "not a tensor file")):
        for opt in ("--grads", "--labels"):
            src = [] if opt == "--grads" else ["--grads", tmp_path / "g.npy"]
            res = _cli(*src, opt, tmp_path / f, "--n", 5, "--quiet")
            _no_traceback(res, f"{tmp_path / f}: {why}")
            assert "pickle" not in res.stderr and "weights_only" not in res.stderr, res.stderr


def test_select_cli_labels_beyond_int64_and_huge_probes(tmp_path, _cli):
    np.save(tmp_path / "g.npy", np.random.default_rng(0).standard_normal((20, 5)).astype(np.float32))
    np.save(tmp_path / "yu.npy", np.full(20, 2**63 + 5, dtype=np.uint64))
    np.save(tmp_path / "yf.npy", np.full(20, 1e30))
    np.save(tmp_path / "ybig.npy", np.full(20, 10**12))
    for f in ("yu.npy", "yf.npy"):
        _no_traceback(_cli("--grads", tmp_path / "g.npy", "--labels", tmp_path / f, "--n", 5, "--quiet"),
                      "labels must be integer class indices below 2**63")
    # a label of 10^12 asks the probe for 10^12 classes: refused by the budget, not by the allocator
    _no_traceback(_cli("--features", tmp_path / "g.npy", "--labels", tmp_path / "ybig.npy", "--n", 5, "--quiet"),
                  "linear_probe_sketch (20 x 5 features, 1000000000001 classes, m = ", "needs at least")
