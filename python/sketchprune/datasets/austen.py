"""Jane Austen's six novels (public domain), from the Debian package ``r-cran-janeaustenr``.

First use: ``apt-get download r-cran-janeaustenr`` into ``<cache>/debs`` (a ``.deb`` already there
is used as is, so a machine without apt can be given one by hand), ``dpkg-deb -x`` it into a
temporary folder, read the six character vectors (one element per printed line) from the
package's R lazy-load database ``data/Rdata.rdb`` / ``.rdx`` with the reader in
:mod:`sketchprune.datasets.rds` (no R needed), re-flow the hard-wrapped lines into paragraphs and
cache the texts as ``<cache>/austen_novels.json``.  Later calls read that file.

:func:`austen_texts` returns the novels cut into chapters (the front matter before a novel's
first chapter is its own piece): 275 documents, which the fixed document split of
:func:`sketchprune.datasets.split_texts` turns into disjoint calibration / evaluation sets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .cache import FetchError, OfflineError, cache_dir, read_json_cache, write_json_cache
from .rds import read_lazyload_db

__all__ = ["austen_novels", "austen_texts", "novels_from_package_dir", "reflow", "split_chapters", "NOVELS"]

PACKAGE = "r-cran-janeaustenr"
_CACHE_NAME = "austen_novels.json"
#: R object name -> title, in publication order
NOVELS = {"sensesensibility": "Sense and Sensibility", "prideprejudice": "Pride and Prejudice",
          "mansfieldpark": "Mansfield Park", "emma": "Emma", "northangerabbey": "Northanger Abbey",
          "persuasion": "Persuasion"}
_OFFLINE = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Network is unreachable",
            "Connection failed", "Connection timed out", "Unable to connect")
_CHAPTER = re.compile(r"^\s*chapter\s+(?:[0-9]+|[ivxlc]+)\b\.?", re.IGNORECASE)


def reflow(lines) -> str:
    """Hard-wrapped lines -> paragraphs (lines joined by spaces) separated by blank lines."""
    paras, cur = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            cur.append(line)
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def split_chapters(lines) -> list[str]:
    """A novel's lines -> [front matter, chapter 1, chapter 2, ...] as re-flowed text (the
    chapter heading starts its piece; empty pieces are dropped)."""
    pieces, cur = [], []
    for line in lines:
        if _CHAPTER.match(line or "") and cur:
            pieces.append(cur)
            cur = []
        cur.append(line)
    pieces.append(cur)
    return [t for t in (reflow(p) for p in pieces) if t]


def novels_from_package_dir(root: str | Path) -> dict[str, list[str]]:
    """``{title: lines}`` from an extracted package (the folder holding ``usr/`` or the R
    library folder ``janeaustenr/`` itself)."""
    root = Path(root)
    hits = sorted(root.rglob("janeaustenr/data/Rdata.rdx")) or sorted(root.glob("data/Rdata.rdx"))
    if not hits:
        raise FetchError(f"sketchprune: {root} holds no janeaustenr/data/Rdata.rdx (not the {PACKAGE} package?)")
    objs = read_lazyload_db(hits[0], names=list(NOVELS))
    out = {}
    for name, title in NOVELS.items():
        v = objs[name]
        if getattr(v, "rtype", None) != "character":
            raise FetchError(f"sketchprune: {hits[0]}: {name} is not a character vector")
        out[title] = [s or "" for s in v]
    return out


def _find_deb(dest: Path) -> Path | None:
    hits = sorted(dest.glob(f"{PACKAGE}_*.deb"))
    return hits[-1] if hits else None


def _download_deb(dest: Path) -> Path:
    deb = _find_deb(dest)
    if deb is not None:
        return deb
    if shutil.which("apt-get") is None:
        raise FetchError(f"sketchprune: the Austen texts come from the Debian package {PACKAGE}, and apt-get "
                         f"is not available here: put {PACKAGE}_*.deb into {dest} by hand")
    print(f"sketchprune: downloading the Debian package {PACKAGE} into {dest} (first use only) ...",
          file=sys.stderr, flush=True)
    r = subprocess.run(["apt-get", "download", PACKAGE], cwd=dest, capture_output=True, text=True)
    out = (r.stdout or "") + (r.stderr or "")
    deb = _find_deb(dest)
    if r.returncode == 0 and deb is not None:
        return deb
    tail = "\n".join(out.strip().splitlines()[-6:])
    if any(m in out for m in _OFFLINE):
        raise OfflineError(f"sketchprune: cannot download {PACKAGE}: the Debian mirror is unreachable "
                           f"(offline?). Put {PACKAGE}_*.deb into {dest} by hand, or set SKETCHPRUNE_CACHE "
                           f"to a cache that has {_CACHE_NAME}.\n{tail}")
    if "Unable to locate package" in out or "has no installation candidate" in out:
        raise FetchError(f"sketchprune: apt does not know {PACKAGE}: run `apt-get update` first "
                         f"(or put {PACKAGE}_*.deb into {dest}).\n{tail}")
    raise FetchError(f"sketchprune: `apt-get download {PACKAGE}` failed (exit {r.returncode}):\n{tail}")


def _extract(deb: Path) -> dict[str, list[str]]:
    if shutil.which("dpkg-deb") is None:
        raise FetchError(f"sketchprune: dpkg-deb is needed to unpack {deb.name}")
    with tempfile.TemporaryDirectory(prefix="janeaustenr-") as tmp:
        r = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise FetchError(f"sketchprune: `dpkg-deb -x {deb}` failed (a damaged download? delete it and run "
                             f"again to fetch it afresh): {r.stderr.strip()}")
        return novels_from_package_dir(tmp)


def _chapters() -> dict[str, list[str]]:
    """``{title: [front matter, chapter 1, ...]}``, fetched and cached on first use."""
    path = cache_dir() / _CACHE_NAME
    chapters = read_json_cache(path, "chapters")
    if chapters is not None:
        return chapters
    dest = cache_dir() / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    deb = _download_deb(dest)
    lines = _extract(deb)
    print(f"sketchprune: extracted Jane Austen's novels from {deb.name} into {path}", file=sys.stderr, flush=True)
    data = {"source": f"{deb.name}:janeaustenr/data/Rdata.rdb",
            "chapters": {t: split_chapters(v) for t, v in lines.items()}}
    write_json_cache(path, data)
    return data["chapters"]


def austen_novels() -> dict[str, str]:
    """``{title: text}`` of the six novels, re-flowed into paragraphs."""
    return {t: "\n\n".join(c) for t, c in _chapters().items()}


def austen_texts() -> list[str]:
    """The novels cut into chapters, in publication order (front matter pieces included)."""
    return [c for chapters in _chapters().values() for c in chapters]
