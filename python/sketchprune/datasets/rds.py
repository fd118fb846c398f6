"""A minimal reader of R's binary serialization format and of R lazy-load databases.

Enough of R's ``serialize()`` (XDR, format versions 2 and 3) to read plain data -- character,
integer, logical, double, complex and raw vectors, lists, pairlists, attributes (names, class,
...), symbols and back-references -- as written into the ``.rdb`` / ``.rdx`` lazy-load databases
of installed R packages (``data/Rdata.rdb``, ``R/sysdata.rdb``).  Byte code, closures' bodies and
other language objects are kept as opaque :class:`RPairList` / marker values or, for byte code,
rejected with :class:`RFormatError`; no R installation is needed.

Format, as R writes it (``src/main/serialize.c``)::

    "X\\n" | int version | int writer R version | int min reader version
           | (version 3) int n, n bytes: native encoding name
    item  := int flags, then a type-specific payload
    flags := type (bits 0-7) | is-object (bit 8) | has-attributes (bit 9) | has-tag (bit 10)
             | "levels" (bits 12-31; for strings the encoding: 2 bytes, 4 latin1, 8 UTF-8, 64 ASCII)

All integers and doubles are big-endian (XDR).  Vectors: int length (-1 then two ints for long
vectors), then the elements (strings as one CHARSXP item each: int byte length, -1 = NA, then the
bytes); then, if flagged, the attributes as a pairlist item.  Pairlists: [attributes] [tag] car
cdr.  Symbols and environments enter a reference table that ``REFSXP`` items point back into.

A lazy-load database is a pair: ``NAME.rdx``, a compressed serialized list ``variables`` (name ->
integer (offset, length) into the ``.rdb``), ``references``, ``compressed``; and ``NAME.rdb``,
where each entry is a 4-byte big-endian uncompressed length followed by a zlib stream (for
``compressed = 2`` / ``3`` a type byte follows the length: ``'Z'`` zlib, ``'2'`` bzip2,
``'X'`` xz, ``'0'`` none).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from os import PathLike
from pathlib import Path

__all__ = ["RFormatError", "RVector", "RPairList", "RSymbol", "REnvironment", "unserialize",
           "read_lazyload_db", "lazyload_index"]


class RFormatError(ValueError):
    """The bytes are not R serialization this reader understands."""


class RSymbol(str):
    """An R symbol (a name)."""


class RVector(list):
    """An R vector: its elements as Python values plus ``rtype`` and ``attributes`` (a dict).

    Character elements are ``str`` (``None`` for NA); integers ``int`` (``None`` for NA);
    logicals ``bool`` (``None`` for NA); doubles ``float``; complex ``complex``; lists hold
    whatever their elements are.
    """

    def __init__(self, items, rtype: str, attributes: dict | None = None):
        super().__init__(items)
        self.rtype = rtype
        self.attributes = attributes or {}

    @property
    def names(self) -> list | None:
        return self.attributes.get("names")

    def as_dict(self) -> dict:
        """``{name: element}`` of a named vector or list."""
        names = self.names
        if names is None or len(names) != len(self):
            raise RFormatError(f"R {self.rtype} vector has no names")
        return dict(zip(names, self))


class RPairList(list):
    """A pairlist (or language object): a list of ``(tag or None, value)``."""

    def __init__(self, items, rtype: str = "pairlist", attributes: dict | None = None):
        super().__init__(items)
        self.rtype = rtype
        self.attributes = attributes or {}


class REnvironment:
    """An R environment: its frame as a dict (filled after the reference is registered)."""

    def __init__(self):
        self.frame: dict = {}
        self.enclosure = None
        self.attributes: dict = {}


class _Marker(str):
    """A special R value (``<globalenv>``, ``<missing arg>`` ...) kept by name."""


# type codes (serialize.c)
_NIL, _SYM, _LIST, _CLO, _ENV, _PROM, _LANG, _SPECIAL, _BUILTIN, _CHAR = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9
_LGL, _INT, _REAL, _CPLX, _STR, _DOT, _VEC, _EXPR, _BCODE, _EXTPTR, _WEAKREF, _RAW, _S4 = (
    10, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24, 25)
_REF, _NILVALUE, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 255, 254, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV, _ATTRLANG, _ATTRLIST, _ALTREP = (
    249, 248, 247, 242, 241, 240, 239, 238)
_PAIRS = {_LIST: "pairlist", _LANG: "language", _CLO: "closure", _PROM: "promise", _DOT: "...",
          _ATTRLANG: "language", _ATTRLIST: "pairlist"}
_MARKERS = {_GLOBALENV: "<globalenv>", _UNBOUND: "<unbound>", _MISSING: "<missing arg>",
            _BASENS: "<base namespace>", _EMPTYENV: "<emptyenv>", _BASEENV: "<baseenv>"}
_VECTOR_NAMES = {_LGL: "logical", _INT: "integer", _REAL: "double", _CPLX: "complex", _STR: "character",
                 _VEC: "list", _EXPR: "expression", _RAW: "raw"}
_NA_INT = -(2 ** 31)
_UTF8, _LATIN1, _BYTES, _ASCII = 8, 4, 2, 64


class _Reader:
    def __init__(self, data: bytes):
        self.buf = memoryview(data)
        self.pos = 0
        self.refs: list = []
        self.native = "utf-8"

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise RFormatError(f"R serialization truncated: need {n} bytes at offset {self.pos}, "
                               f"have {len(self.buf) - self.pos}")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        if n < 0:
            raise RFormatError(f"R serialization: negative vector length {n}")
        return n

    def header(self) -> None:
        fmt = bytes(self.take(2))
        if fmt != b"X\n":
            kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt, repr(fmt))
            raise RFormatError(f"R serialization: only the XDR binary format is supported, got {kind}")
        version = self.int()
        self.int(), self.int()  # writer's R version, minimal reader version
        if version == 3:
            self.native = bytes(self.take(self.int())).decode("ascii").lower() or "utf-8"
        elif version != 2:
            raise RFormatError(f"R serialization: unsupported format version {version}")

    def string(self, levels: int) -> str | None:
        n = self.int()
        if n == -1:
            return None
        raw = bytes(self.take(n))
        if levels & _BYTES:
            return raw.decode("latin-1")  # uninterpreted bytes: keep them one char per byte
        enc = "utf-8" if levels & (_UTF8 | _ASCII) else "latin-1" if levels & _LATIN1 else self.native
        try:
            return raw.decode(enc)
        except (LookupError, UnicodeDecodeError) as e:
            raise RFormatError(f"R serialization: string not decodable as {enc}: {e}") from None

    def attributes(self, has_attr: bool) -> dict:
        if not has_attr:
            return {}
        pl = self.item()
        if not isinstance(pl, RPairList):
            raise RFormatError("R serialization: attributes are not a pairlist")
        return {str(k): v for k, v in pl}

    def item(self):
        flags = self.int()
        t = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        levels = flags >> 12
        if t == _NILVALUE:
            return None
        if t in _MARKERS:
            return _Marker(_MARKERS[t])
        if t == _REF:
            i = flags >> 8 or self.int()
            if not 1 <= i <= len(self.refs):
                raise RFormatError(f"R serialization: reference {i} out of range ({len(self.refs)} known)")
            return self.refs[i - 1]
        if t in (_PERSIST, _NAMESPACE, _PACKAGE):
            if self.int() != 0:
                raise RFormatError("R serialization: names of a persistent/namespace reference expected")
            names = [self.item() for _ in range(self.int())]
            v = _Marker(f"<{'persistent' if t == _PERSIST else 'namespace'}: {' '.join(map(str, names))}>")
            self.refs.append(v)
            return v
        if t == _SYM:
            v = RSymbol(self.item() or "")
            self.refs.append(v)
            return v
        if t == _ENV:
            self.int()  # locked
            env = REnvironment()
            self.refs.append(env)
            env.enclosure = self.item()
            frame, hashtab = self.item(), self.item()
            for pl in (frame,) + tuple(hashtab if isinstance(hashtab, RVector) else ()):
                if isinstance(pl, RPairList):
                    env.frame.update({str(k): v for k, v in pl})
            a = self.item()  # an environment's attributes are always written (NULL when none)
            env.attributes = {str(k): v for k, v in a} if isinstance(a, RPairList) else {}
            return env
        if t in _PAIRS:
            return self.pairlist(flags)
        if t == _ALTREP:
            return self.altrep()
        if t == _BCODE:
            raise RFormatError("R serialization: byte code is not supported by this reader")
        value = self.payload(t, levels)
        attrs = self.attributes(has_attr)
        if isinstance(value, RVector):
            value.attributes = attrs
        return value

    def pairlist(self, flags: int) -> RPairList:
        t = flags & 0xFF
        items, attrs = [], None
        while True:
            a = self.attributes(bool(flags & (1 << 9)))
            attrs = a if attrs is None else attrs
            tag = self.item() if flags & (1 << 10) else None
            items.append((tag, self.item()))
            flags = self.int()
            if (flags & 0xFF) != t:  # the tail is not another cell of the same kind
                self.pos -= 4
                tail = self.item()
                if tail is not None:
                    items.append((None, tail))  # an improper tail (e.g. a closure body)
                return RPairList(items, _PAIRS[t], attrs)

    def altrep(self):
        info, state = self.item(), self.item()
        attrs = self.attributes(True)
        cls = str(info[0][1]) if isinstance(info, RPairList) and info else "?"
        if cls in ("compact_intseq", "compact_realseq"):
            n, start, step = (state[0], state[1], state[2])
            vals = [start + i * step for i in range(int(n))]
            if cls == "compact_intseq":
                return RVector([int(v) for v in vals], "integer", attrs)
            return RVector([float(v) for v in vals], "double", attrs)
        if cls.startswith("wrap_") and isinstance(state, RVector) and state:
            v = state[0]
            if isinstance(v, RVector) and attrs:
                v.attributes = attrs
            return v
        if cls == "deferred_string" and isinstance(state, RPairList) and state:
            src = state[0][1]
            return RVector([None if x is None else str(x) for x in src], "character", attrs)
        raise RFormatError(f"R serialization: unsupported ALTREP class {cls!r}")

    def payload(self, t: int, levels: int):
        if t == _NIL:
            return None
        if t == _CHAR:
            return self.string(levels)
        if t in (_SPECIAL, _BUILTIN):
            return _Marker(f"<builtin {bytes(self.take(self.int())).decode('ascii')}>")
        if t == _EXTPTR:
            v = _Marker("<external pointer>")
            self.refs.append(v)
            self.item(), self.item()
            return v
        if t == _WEAKREF:
            v = _Marker("<weak reference>")
            self.refs.append(v)
            return v
        if t == _S4:
            return RVector([], "S4")
        if t not in _VECTOR_NAMES:
            raise RFormatError(f"R serialization: unknown item type {t}")
        n = self.length()
        name = _VECTOR_NAMES[t]
        if t in (_INT, _LGL):
            vals = struct.unpack(f">{n}i", self.take(4 * n))
            if t == _INT:
                return RVector([None if v == _NA_INT else v for v in vals], name)
            return RVector([None if v == _NA_INT else bool(v) for v in vals], name)
        if t == _REAL:
            return RVector(list(struct.unpack(f">{n}d", self.take(8 * n))), name)
        if t == _CPLX:
            d = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return RVector([complex(d[2 * i], d[2 * i + 1]) for i in range(n)], name)
        if t == _RAW:
            return RVector(list(bytes(self.take(n))), name)
        return RVector([self.item() for _ in range(n)], name)  # character, list, expression


def unserialize(data: bytes):
    """Python values of one R object serialized in XDR format (see the module doc)."""
    r = _Reader(data)
    r.header()
    value = r.item()
    if r.pos != len(r.buf):
        raise RFormatError(f"R serialization: {len(r.buf) - r.pos} trailing bytes after the object")
    return value


def _maybe_decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:1] == b"\x78":
        try:
            return zlib.decompress(data)
        except zlib.error:
            pass
    return data


def lazyload_index(rdx_path: str | PathLike) -> tuple[dict, object]:
    """(``{name: (offset, length)}``, ``compressed`` flag) of a lazy-load database's ``.rdx``."""
    idx = unserialize(_maybe_decompress(Path(rdx_path).read_bytes()))
    if not isinstance(idx, RVector) or idx.rtype != "list":
        raise RFormatError(f"{rdx_path}: not a lazy-load index (expected a named list)")
    fields = idx.as_dict()
    if "variables" not in fields:
        raise RFormatError(f"{rdx_path}: lazy-load index has no 'variables'")
    variables = fields["variables"]
    entries = {} if not variables else {str(k): (int(v[0]), int(v[1])) for k, v in variables.as_dict().items()}
    comp = fields.get("compressed")
    comp = comp[0] if isinstance(comp, RVector) and comp else True
    return entries, comp


def _entry_bytes(blob: bytes, compressed) -> bytes:
    if len(blob) < 4:
        raise RFormatError("lazy-load entry shorter than its 4-byte length header")
    n = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    if compressed is True or compressed == 1:
        out = zlib.decompress(body)
    elif compressed in (2, 3):
        kind, body = body[:1], body[1:]
        decode = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}.get(kind)
        if decode is None:
            raise RFormatError(f"lazy-load entry: unknown compression type {kind!r}")
        out = decode(body)
    elif compressed is False or compressed == 0:
        out = body
    else:
        raise RFormatError(f"lazy-load database: unknown 'compressed' value {compressed!r}")
    if len(out) != n:
        raise RFormatError(f"lazy-load entry: expected {n} bytes after decompression, got {len(out)}")
    return out


def read_lazyload_db(rdx_path: str | PathLike, rdb_path: str | PathLike | None = None,
                     names=None) -> dict:
    """``{name: value}`` of the objects in an R lazy-load database (``.rdx`` + ``.rdb``).

    ``names``: only these objects (default all); a missing name is an error.
    """
    rdx_path = Path(rdx_path)
    rdb_path = Path(rdb_path) if rdb_path is not None else rdx_path.with_suffix(".rdb")
    entries, comp = lazyload_index(rdx_path)
    wanted = list(entries) if names is None else list(names)
    missing = [n for n in wanted if n not in entries]
    if missing:
        raise KeyError(f"{rdx_path}: no objects named {missing}; it has {sorted(entries)}")
    out = {}
    with open(rdb_path, "rb") as f:
        for name in wanted:
            off, n = entries[name]
            f.seek(off)
            blob = f.read(n)
            if len(blob) != n:
                raise RFormatError(f"{rdb_path}: entry {name!r} runs past the end of the file")
            out[name] = unserialize(_entry_bytes(blob, comp))
    return out
