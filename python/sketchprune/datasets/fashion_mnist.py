"""Fashion-MNIST (60k train + 10k test, 28 x 28 grey images, 10 classes, MIT licence) from the
Debian package ``dataset-fashion-mnist``.

First use: if the package is installed, its idx-ubyte.gz files are read from
``/usr/share/datasets/fashion-mnist``; otherwise the .deb is fetched with ``apt-get download``
into the cache (``$SKETCHPRUNE_CACHE``, default ``~/.cache/sketchprune``; see :mod:`.cache`),
unpacked with ``dpkg-deb -x``, and the four arrays are saved as ``fashion-mnist.npz`` there.
Later loads read the .npz.  Without a network (and without the package or the cached file) an
:class:`OfflineError` says so and how to provide the data.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .cache import FetchError, OfflineError, cache_dir, reading_cached, unique_tmp

__all__ = ["load_fashion_mnist", "read_idx", "CLASSES"]

PACKAGE = "dataset-fashion-mnist"
INSTALLED = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CACHE_NAME = "fashion-mnist.npz"
_OFFLINE_MARKERS = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Network is unreachable",
                    "Connection failed", "Could not connect", "No route to host", "Unable to connect")


def read_idx(data: bytes) -> np.ndarray:
    """Parse an (uncompressed) idx file: big-endian magic 0x0000 <type> <ndim>, dims, data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an idx file (bad magic)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
    if dtype is None:
        raise ValueError(f"idx: unknown data type code 0x{data[2]:02x}")
    nd = data[3]
    dims = struct.unpack(f">{nd}I", data[4:4 + 4 * nd])
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * nd)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"idx: {arr.size} values for dims {dims}")
    return arr.reshape(dims)


def _read_dir(d: Path) -> dict:
    out = {}
    for key, name in FILES.items():
        with gzip.open(d / name, "rb") as f:
            out[key] = read_idx(f.read())
    if out["train_images"].shape != (60000, 28, 28) or out["test_images"].shape != (10000, 28, 28):
        raise ValueError(f"Fashion-MNIST in {d} has unexpected shapes "
                         f"{out['train_images'].shape}, {out['test_images'].shape}")
    return out


def _fetch_deb(work: Path) -> Path:
    """Download the package's .deb with apt-get into ``work`` and unpack it; returns the data dir."""
    print(f"sketchprune: downloading the Debian package {PACKAGE} (about 31 MB, first use only) ...",
          file=sys.stderr, flush=True)
    tried = []
    for cmd in (["apt-get", "download", PACKAGE],
                ["apt-get", "-o", f"Dir::Cache={work}", "-o", f"Dir::State::Lists={work}/lists", "download", PACKAGE]):
        try:
            r = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise FetchError(f"sketchprune: Fashion-MNIST needs `apt-get` (Debian/Ubuntu) to fetch {PACKAGE}, "
                             f"or the file {cache_dir() / _CACHE_NAME}: {e}") from e
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if r.returncode == 0 and debs:
            break
        tried.append(((r.stdout or "") + (r.stderr or "")).strip())
    else:
        out = "\n".join(tried)
        tail = "\n".join(out.splitlines()[-6:])
        hint = (f"Install the package (apt-get install {PACKAGE}), or put {_CACHE_NAME} into {cache_dir()} "
                f"(or set SKETCHPRUNE_CACHE to a cache that has it).")
        if any(m in out for m in _OFFLINE_MARKERS):
            raise OfflineError(f"sketchprune: cannot download {PACKAGE}: the Debian archive is unreachable "
                               f"(offline?). {hint}\n{tail}")
        raise FetchError(f"sketchprune: `apt-get download {PACKAGE}` failed. {hint}\n{tail}")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(work / "root")], check=True, capture_output=True)
    hits = sorted((work / "root").rglob(FILES["train_images"]))
    if not hits:
        raise FetchError(f"sketchprune: {debs[-1].name} holds no {FILES['train_images']}")
    return hits[0].parent


def load_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) of the ``"train"`` (60k) or ``"test"`` (10k) split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = cache_dir() / _CACHE_NAME
    if not path.exists():
        if all((INSTALLED / f).exists() for f in FILES.values()):
            arrays = _read_dir(INSTALLED)
        else:
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                arrays = _read_dir(_fetch_deb(Path(tmp)))
        part = unique_tmp(path).with_suffix(".npz")   # np.savez adds .npz to other names
        try:
            np.savez(part, **arrays)
            os.replace(part, path)  # never a half-written cache file
        finally:
            part.unlink(missing_ok=True)
    with reading_cached(path, "Fashion-MNIST arrays"), np.load(path) as z:
        x = torch.from_numpy(np.array(z[f"{split}_images"]))
        y = torch.from_numpy(np.array(z[f"{split}_labels"]).astype(np.int64))
    return x, y
