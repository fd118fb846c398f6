"""The package's one progress-bar policy: quiet unless asked for and stderr is a terminal."""

import sys

import pytest

from sketchprune._progress import progress_bar, track


class _Tty:
    def __init__(self, tty):
        self.tty, self.text = tty, []

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text.append(s)

    def flush(self):
        pass


def test_quiet_when_disabled_or_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Tty(False))
    assert progress_bar(True, total=3) is None
    items = [1, 2, 3]
    assert track(items, True, "x") is items
    monkeypatch.setattr(sys, "stderr", _Tty(True))
    assert progress_bar(False, total=3) is None
    assert track(items, False, "x") is items


def test_bar_on_a_terminal_yields_every_item(monkeypatch):
    pytest.importorskip("tqdm")  # optional: without it there are no bars (tested above)
    err = _Tty(True)
    monkeypatch.setattr(sys, "stderr", err)
    assert list(track(range(5), True, "counting")) == [0, 1, 2, 3, 4]
    assert any("counting" in t for t in err.text)
