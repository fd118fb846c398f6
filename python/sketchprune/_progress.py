"""Progress bars for long work: one policy for the whole package.

A bar is shown only when asked for (``progress=True``, the default of the long-running calls),
``tqdm`` is importable and stderr is a terminal, so logs, pipes and CI stay quiet.
"""

from __future__ import annotations

import sys


def progress_bar(enabled: bool, **kwargs):
    """A ``tqdm`` bar on stderr (``kwargs``: total, desc, unit, ...) or ``None`` when quiet."""
    if not (enabled and sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is optional
        return None
    return tqdm(**kwargs)


def track(iterable, enabled: bool, desc: str):
    """``iterable`` wrapped in a bar (see :func:`progress_bar`), or as is when quiet."""
    total = len(iterable) if hasattr(iterable, "__len__") else None
    bar = progress_bar(enabled, total=total, desc=desc)
    if bar is None:
        return iterable
    return _tracked(iterable, bar)


def _tracked(iterable, bar):
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()
