import json
import subprocess
import sys

import numpy as np


def test_select_cli_writes_exactly_n_indices(tmp_path):
    g = np.random.default_rng(0).standard_normal((300, 500)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    out = tmp_path / "sel.json"
    res = subprocess.run([sys.executable, "-m", "sketchprune.cli", "select", "--grads", str(tmp_path / "g.npy"),
                          "--n", "40", "--m", "32", "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    d = json.loads(out.read_text())
    assert len(set(d["indices"])) == 40 and d["sketch"]["m"] == 32 and d["info"]["method"] == "skmm"
    assert d["info"]["converged"]


def test_select_cli_default_m_and_errors(tmp_path):
    g = np.random.default_rng(1).standard_normal((100, 50)).astype(np.float32)
    np.save(tmp_path / "g.npy", g)
    res = subprocess.run([sys.executable, "-m", "sketchprune.cli", "select", "--grads", str(tmp_path / "g.npy"),
                          "--n", "10", "--method", "kcenter", "--quiet"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "intrinsic dimension" in res.stderr and len(json.loads(res.stdout)["indices"]) == 10
    bad = subprocess.run([sys.executable, "-m", "sketchprune.cli", "select", "--grads", str(tmp_path / "nope.npy"),
                          "--n", "10"], capture_output=True, text=True)
    assert bad.returncode != 0 and "does not exist" in bad.stderr
