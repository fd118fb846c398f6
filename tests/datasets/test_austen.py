"""The R serialization / lazy-load reader on blobs built here byte by byte (XDR, as R writes them),
the Austen text shaping, offline handling, and (slow) the real Debian package."""

import gzip
import struct
import subprocess
import zlib

import pytest

from sketchprune.datasets import austen, rds
from sketchprune.datasets.cache import FetchError, OfflineError

# ---- a small R serializer (format version 3), written from the format description ------------

STR, VEC, INT, LGL, REAL, CHAR, SYM, LIST, REF, NIL = 16, 19, 13, 10, 14, 9, 1, 2, 255, 254
HAS_ATTR, HAS_TAG = 1 << 9, 1 << 10
UTF8, LATIN1, ASCII = 8 << 12, 4 << 12, 64 << 12


class W:
    def __init__(self, version=3):
        self.b = bytearray(b"X\n")
        self.syms = []
        self.int(version), self.int(0x040301), self.int(0x030500)
        if version == 3:
            self.int(5)
            self.b += b"UTF-8"

    def int(self, v):
        self.b += struct.pack(">i", v)

    def charsxp(self, s, enc=UTF8):
        if s is None:
            self.int(CHAR)
            self.int(-1)
            return
        raw = s.encode("latin-1" if enc == LATIN1 else "utf-8")
        self.int(CHAR | (ASCII if raw.isascii() else enc))
        self.int(len(raw))
        self.b += raw

    def sym(self, name):
        if name in self.syms:  # later uses are back-references into the table
            self.int(REF | ((self.syms.index(name) + 1) << 8))
            return
        self.syms.append(name)
        self.int(SYM)
        self.charsxp(name)

    def attrs(self, attrs):
        for k, (writer, v) in attrs.items():
            self.int(LIST | HAS_TAG)
            self.sym(k)
            writer(v)
        self.int(NIL)

    def strsxp(self, items, attrs=None, enc=UTF8):
        self.int(STR | (HAS_ATTR if attrs else 0))
        self.int(len(items))
        for s in items:
            self.charsxp(s, enc)
        if attrs:
            self.attrs(attrs)

    def intsxp(self, items):
        self.int(INT)
        self.int(len(items))
        for v in items:
            self.int(v)

    def named_list(self, entries):
        """entries: list of (name, writer, value)."""
        self.int(VEC | HAS_ATTR)
        self.int(len(entries))
        for _, writer, v in entries:
            writer(v)
        self.attrs({"names": (self.strsxp, [n for n, _, _ in entries])})


def lazyload_db(tmp_path, objects, stem="Rdata"):
    """Write {name: writer-callback} as NAME.rdx (gzip) + NAME.rdb (length + zlib per entry)."""
    rdb, index = bytearray(), []
    for name, write in objects.items():
        w = W()
        write(w)
        payload = bytes(w.b)
        blob = struct.pack(">I", len(payload)) + zlib.compress(payload)
        index.append((name, len(rdb), len(blob)))
        rdb += blob
    (tmp_path / f"{stem}.rdb").write_bytes(bytes(rdb))
    w = W(version=2)
    w.named_list([
        ("variables", lambda _: w.named_list([(n, w.intsxp, [off, ln]) for n, off, ln in index]), None),
        ("references", lambda _: w.int(NIL), None),
        ("compressed", lambda _: (w.int(LGL), w.int(1), w.int(1)), None),
    ])
    (tmp_path / f"{stem}.rdx").write_bytes(gzip.compress(bytes(w.b)))
    return tmp_path / f"{stem}.rdx"


# ---- the reader --------------------------------------------------------------------------------

def test_character_vector_with_na_encodings_and_names():
    w = W()
    w.strsxp(["first line", "", None, "caf\u00e9 \u2014 na\u00efve"],
             attrs={"names": (w.strsxp, ["a", "b", "c", "d"]), "class": (w.strsxp, ["lines"])})
    v = rds.unserialize(bytes(w.b))
    assert isinstance(v, rds.RVector) and v.rtype == "character"
    assert list(v) == ["first line", "", None, "caf\u00e9 \u2014 na\u00efve"]
    assert v.names == ["a", "b", "c", "d"] and v.attributes["class"] == ["lines"]
    assert v.as_dict()["d"].startswith("caf")


def test_latin1_strings_and_symbol_back_references():
    w = W()
    w.named_list([("x", lambda v: w.strsxp(v, enc=LATIN1), ["\u00e9t\u00e9"]),
                  ("y", lambda v: w.strsxp(v, attrs={"names": (w.strsxp, ["k"])}), ["v"])])
    assert b"\xe9t\xe9" in w.b  # really stored as latin-1 bytes
    v = rds.unserialize(bytes(w.b))
    d = v.as_dict()
    assert d["x"] == ["\u00e9t\u00e9"] and d["y"].names == ["k"]
    assert w.syms == ["names"]  # the second "names" was written as a reference and resolved


def test_numeric_vectors():
    w = W()
    w.int(REAL)
    w.int(2)
    w.b += struct.pack(">2d", 1.5, -2.25)
    assert rds.unserialize(bytes(w.b)) == [1.5, -2.25]
    w = W()
    w.int(LGL)
    w.int(3)
    for x in (1, 0, -2 ** 31):
        w.int(x)
    assert rds.unserialize(bytes(w.b)) == [True, False, None]


def test_bad_inputs_are_named():
    with pytest.raises(rds.RFormatError, match="XDR"):
        rds.unserialize(b"A\n3\n")
    w = W()
    w.strsxp(["abc"])
    with pytest.raises(rds.RFormatError, match="truncated"):
        rds.unserialize(bytes(w.b[:-2]))
    with pytest.raises(rds.RFormatError, match="trailing"):
        rds.unserialize(bytes(w.b) + b"\0\0\0\0")
    w = W()
    w.int(21)  # byte code
    with pytest.raises(rds.RFormatError, match="byte code"):
        rds.unserialize(bytes(w.b))


def test_lazyload_db_roundtrip(tmp_path):
    texts = {"emma": ["EMMA", "", "By Jane Austen"], "persuasion": ["Persuasion", None, "x" * 5000]}
    rdx = lazyload_db(tmp_path, {k: (lambda v: lambda w: w.strsxp(v))(v) for k, v in texts.items()})
    entries, comp = rds.lazyload_index(rdx)
    assert set(entries) == set(texts) and comp is True
    got = rds.read_lazyload_db(rdx)
    assert {k: list(v) for k, v in got.items()} == texts
    assert list(rds.read_lazyload_db(rdx, names=["emma"])) == ["emma"]
    with pytest.raises(KeyError, match="sense"):
        rds.read_lazyload_db(rdx, names=["sense"])


# ---- Austen text shaping -----------------------------------------------------------------------

def _novel(title, chapters):
    lines = [title, "", "by Jane Austen", "", ""]
    for i in range(1, chapters + 1):
        lines += [f"CHAPTER {i}", "", f"Line one of chapter {i},", "wrapped here.", "", "Second paragraph.", ""]
    return lines


def test_novels_from_package_dir_reflows_and_splits_chapters(tmp_path):
    data = tmp_path / "usr/lib/R/site-library/janeaustenr/data"
    data.mkdir(parents=True)
    novels = {name: _novel(title, 3 + k) for k, (name, title) in enumerate(austen.NOVELS.items())}
    lazyload_db(data, {k: (lambda v: lambda w: w.strsxp(v))(v) for k, v in novels.items()})
    got = austen.novels_from_package_dir(tmp_path)
    assert list(got) == list(austen.NOVELS.values())
    emma = got["Emma"]
    assert emma == novels["emma"]
    chapters = austen.split_chapters(emma)
    assert chapters[0] == "Emma\n\nby Jane Austen"
    assert chapters[1] == "CHAPTER 1\n\nLine one of chapter 1, wrapped here.\n\nSecond paragraph."
    assert len(chapters) == 1 + 6  # front matter + the 6 chapters written for Emma (4th novel)


def test_missing_database_is_named(tmp_path):
    with pytest.raises(FetchError, match="Rdata.rdx"):
        austen.novels_from_package_dir(tmp_path)


def test_offline_download_is_an_offline_error(tmp_path, monkeypatch):
    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "Err:1 http://deb.debian.org/debian bookworm/main\n"
                                                         "  Temporary failure resolving 'deb.debian.org'\n")
    monkeypatch.setattr(austen.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(austen.subprocess, "run", fake_run)
    with pytest.raises(OfflineError, match="unreachable"):
        austen._download_deb(tmp_path)

    def unknown(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package r-cran-janeaustenr\n")
    monkeypatch.setattr(austen.subprocess, "run", unknown)
    with pytest.raises(FetchError, match="apt-get update"):
        austen._download_deb(tmp_path)


def test_a_deb_already_in_the_cache_is_used_without_apt(tmp_path, monkeypatch):
    deb = tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb"
    deb.write_bytes(b"")
    monkeypatch.setattr(austen.subprocess, "run", lambda *a, **k: pytest.fail("apt-get should not run"))
    assert austen._download_deb(tmp_path) == deb


@pytest.mark.slow
def test_real_package():
    try:
        texts = austen.austen_texts()
    except (OfflineError, FetchError) as e:
        pytest.skip(f"the Debian package cannot be fetched here: {e}")
    novels = austen.austen_novels()
    assert list(novels) == list(austen.NOVELS.values())
    words = sum(len(t.split()) for t in novels.values())
    assert 700_000 < words < 730_000  # 717k words in the six novels
    assert len(texts) == 275
    assert novels["Pride and Prejudice"].split("\n\n")[3].startswith("It is a truth universally acknowledged")
