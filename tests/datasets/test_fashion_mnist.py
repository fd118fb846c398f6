"""The Fashion-MNIST loader: idx parsing, the cache, and the offline / other-failure errors
(apt-get mocked; no download in these tests)."""

import gzip
import struct
import subprocess

import numpy as np
import pytest

from sketchprune.datasets import FetchError, OfflineError
from sketchprune.datasets import fashion_mnist as F


def _idx(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def test_read_idx_roundtrip_and_errors():
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(F.read_idx(_idx(a)), a)
    lab = np.array([3, 1, 4], np.uint8)
    assert np.array_equal(F.read_idx(_idx(lab)), lab)
    with pytest.raises(ValueError, match="bad magic"):
        F.read_idx(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="values for dims"):
        F.read_idx(_idx(a)[:-1])


def _fake_dir(d, n_train=60000, n_test=10000):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for key, name in F.FILES.items():
        n = n_train if key.startswith("train") else n_test
        arr = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) if key.endswith("images") else \
            (np.arange(n) % 10).astype(np.uint8)
        with gzip.open(d / name, "wb") as f:
            f.write(_idx(arr))


def test_load_from_installed_package_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(tmp_path / "cache"))
    _fake_dir(tmp_path / "installed")
    monkeypatch.setattr(F, "INSTALLED", tmp_path / "installed")
    monkeypatch.setattr(F.subprocess, "run", lambda *a, **k: pytest.fail("apt-get must not run"))
    x, y = F.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and str(x.dtype) == "torch.uint8" and y[:12].tolist() == [*range(10), 0, 1]
    assert (tmp_path / "cache" / "fashion-mnist.npz").exists()
    monkeypatch.setattr(F, "INSTALLED", tmp_path / "gone")  # now only the cache has it
    x2, _ = F.load_fashion_mnist("train")
    assert x2.shape == (60000, 28, 28)
    with pytest.raises(ValueError, match="split must be"):
        F.load_fashion_mnist("val")


def _apt(stderr, rc=100):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr=stderr)
    return run


def test_offline_and_other_failures(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(F, "INSTALLED", tmp_path / "none")
    monkeypatch.setattr(F.subprocess, "run", _apt("Err:1 http://deb.debian.org/debian bookworm/main "
                                                 "Temporary failure resolving 'deb.debian.org'"))
    with pytest.raises(OfflineError, match="unreachable"):
        F.load_fashion_mnist()
    monkeypatch.setattr(F.subprocess, "run", _apt("E: Unable to locate package dataset-fashion-mnist"))
    with pytest.raises(FetchError) as e:
        F.load_fashion_mnist()
    assert not isinstance(e.value, OfflineError) and "apt-get download" in str(e.value)
    assert not (tmp_path / "fashion-mnist.npz").exists()
