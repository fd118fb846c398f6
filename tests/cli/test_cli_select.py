import json
import subprocess
import sys

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
    assert not (tmp_path / "sel.json.tmp").exists()


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
