"""Read R lazy-load databases (``Rdata.rdb`` + ``Rdata.rdx``) with the standard library, no R needed.

An R package's ``data/`` folder may hold its datasets as a lazy-load database:

* ``Rdata.rdx``: gzip of one R-serialized list ``(variables, references, compressed)``; ``variables``
  maps each object name to ``(offset, length)`` of its blob in ``Rdata.rdb``.
* ``Rdata.rdb``: concatenated blobs. A blob is a 4-byte big-endian uncompressed length, then (for
  ``compressed`` = 1) a zlib stream; for 2 and 3 a one-byte method follows the length: ``Z`` bzip2,
  ``X`` xz (raw LZMA2), ``2`` zlib, ``0`` stored.
* The decompressed blob is R's XDR serialization (format ``X\\n``, versions 2 and 3).

The reader covers what datasets use: vectors (logical, integer, double, complex, character, raw, list),
attributes (names, class, ...), pairlists, symbols and references. R values come back as Python ones:
character vectors as ``list[str | None]`` (None = NA), other vectors as lists, lists as ``RList``.
Code objects (closures, byte code, environments' contents) are out of scope and raise ``RDataError``.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# SEXP type codes (R internals, "R Internals" manual section 1.1) and serialization pseudo-types.
NILSXP, SYMSXP, LISTSXP, CLOSXP, ENVSXP, PROMSXP, LANGSXP = 0, 1, 2, 3, 4, 5, 6
SPECIALSXP, BUILTINSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, CPLXSXP = 7, 8, 9, 10, 13, 14, 15
STRSXP, DOTSXP, VECSXP, EXPRSXP, EXTPTRSXP, WEAKREFSXP, RAWSXP, S4SXP = 16, 17, 19, 20, 22, 23, 24, 25
ALTREP_SXP, ATTRLISTSXP, ATTRLANGSXP, BASEENV_SXP, EMPTYENV_SXP = 238, 239, 240, 241, 242
PERSISTSXP, PACKAGESXP, NAMESPACESXP, BASENAMESPACE_SXP = 247, 248, 249, 250
MISSINGARG_SXP, UNBOUNDVALUE_SXP, GLOBALENV_SXP, NILVALUE_SXP, REFSXP = 251, 252, 253, 254, 255

VECTOR_KINDS = {LGLSXP: "logical", INTSXP: "integer", REALSXP: "double", CPLXSXP: "complex",
                STRSXP: "character", VECSXP: "list", EXPRSXP: "expression", RAWSXP: "raw", S4SXP: "S4"}
NA_INTEGER = -(2 ** 31)
PAIRLIST_TYPES = {LISTSXP, LANGSXP, CLOSXP, PROMSXP, DOTSXP, ATTRLISTSXP, ATTRLANGSXP}
SINGLETONS = {NILVALUE_SXP, EMPTYENV_SXP, BASEENV_SXP, GLOBALENV_SXP, UNBOUNDVALUE_SXP,
              MISSINGARG_SXP, BASENAMESPACE_SXP}


class RDataError(ValueError):
    """The file is not an R lazy-load database or holds something this reader does not decode."""


@dataclass
class RObject:
    """An R value with its attributes: ``value`` is the Python form, ``attributes`` a name -> value dict."""

    kind: str
    value: Any
    attributes: dict = field(default_factory=dict)


class RList(list):
    """An R list (VECSXP) or pairlist; ``names`` holds its element names when it has them."""

    names: list | None = None

    def as_dict(self) -> dict:
        if not self.names:
            raise RDataError("this R list has no names")
        return dict(zip(self.names, self))


class _XdrReader:
    """Decodes one R XDR serialization stream (big-endian ints and doubles)."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError("truncated R serialization stream")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.read_int()
        if n == -1:  # long vector: two more ints, upper and lower 32 bits
            upper, lower = self.read_int(), self.read_int()
            n = (upper << 32) + (lower & 0xFFFFFFFF)
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RDataError("not an R XDR serialization (expected format 'X')")
        version = self.read_int()
        self.read_int(), self.read_int()  # writer's R version, minimal reader version
        if version == 3:
            self.take(self.read_int())  # native encoding name, e.g. 'UTF-8'
        elif version != 2:
            raise RDataError(f"unsupported R serialization version {version}")

    def item(self) -> Any:
        flags = self.read_int()
        sexp, levels = flags & 0xFF, flags >> 12
        has_attr = bool(flags & (1 << 9))
        if sexp in SINGLETONS:
            return None
        if sexp == REFSXP:
            index = flags >> 8 or self.read_int()
            return self.refs[index - 1]
        if sexp in (PERSISTSXP, PACKAGESXP, NAMESPACESXP):
            value = RObject(kind={PERSISTSXP: "persist", PACKAGESXP: "package"}.get(sexp, "namespace"),
                            value=self._string_list())
            self.refs.append(value)
            return value
        if sexp == SYMSXP:
            value = RObject("symbol", self.item())
            self.refs.append(value)
            return value
        if sexp == ENVSXP:
            return self._environment()
        if sexp in PAIRLIST_TYPES:
            return self._pairlist(flags)
        if sexp == CHARSXP:
            return self._charsxp(levels)
        value = self._vector(sexp)
        attributes = self._attributes(self.item()) if has_attr else {}
        return _with_attributes(value, sexp, attributes)

    def _string_list(self) -> list:
        if self.read_int() != 0:
            raise RDataError("malformed persistent-name string list")
        return [self.item() for _ in range(self.read_int())]

    def _charsxp(self, levels: int) -> str | None:
        n = self.read_int()
        if n == -1:
            return None  # NA_character_
        raw = self.take(n)
        latin1 = bool(levels & (1 << 2))
        return raw.decode("latin-1" if latin1 else "utf-8", errors="replace")

    def _environment(self) -> RObject:
        env = RObject("environment", {})
        self.refs.append(env)  # registered before its contents, which may refer to it
        self.read_int()  # locked flag
        self.item()  # enclosing environment
        frame, hashtab, attributes = self.item(), self.item(), self.item()
        for binding in (frame, hashtab):
            for value in _flatten(binding):
                if isinstance(value, RList) and value.names:
                    env.value.update(value.as_dict())
        env.attributes = self._attributes(attributes)
        return env

    def _pairlist(self, flags: int) -> RList:
        """A pairlist read iteratively (CAR, then the CDR's flags), with each cell's tag as its name."""
        out, names = RList(), []
        while True:
            if flags & (1 << 9):
                self.item()  # attributes of the cell itself: unused
            tag = self.item() if flags & (1 << 10) else None
            names.append(tag.value if isinstance(tag, RObject) and tag.kind == "symbol" else None)
            out.append(self.item())
            flags = self.read_int()
            if flags & 0xFF not in PAIRLIST_TYPES:
                self.pos -= 4
                self.item()  # the terminating CDR (normally NULL)
                break
        out.names = names if any(n is not None for n in names) else None
        return out

    def _attributes(self, pairlist: Any) -> dict:
        if not isinstance(pairlist, RList) or not pairlist.names:
            return {}
        return dict(zip(pairlist.names, pairlist))

    def _vector(self, sexp: int) -> Any:
        if sexp in (LGLSXP, INTSXP):
            n = self.length()
            values = struct.unpack(f">{n}i", self.take(4 * n))
            values = [None if v == NA_INTEGER else v for v in values]
            return [None if v is None else bool(v) for v in values] if sexp == LGLSXP else values
        if sexp == REALSXP:
            n = self.length()
            return list(struct.unpack(f">{n}d", self.take(8 * n)))
        if sexp == CPLXSXP:
            n = self.length()
            parts = struct.unpack(f">{2 * n}d", self.take(16 * n))
            return [complex(parts[i], parts[i + 1]) for i in range(0, 2 * n, 2)]
        if sexp == STRSXP:
            return [self.item() for _ in range(self.length())]
        if sexp in (VECSXP, EXPRSXP):
            return RList(self.item() for _ in range(self.length()))
        if sexp == RAWSXP:
            return self.take(self.length())
        if sexp == S4SXP:
            return None
        if sexp == ALTREP_SXP:
            return self._altrep()
        raise RDataError(f"R object of SEXP type {sexp} is not supported by this reader (code, not data)")

    def _altrep(self) -> Any:
        info, state = self.item(), self.item()
        self.item()  # attributes: unused
        class_name = info[0].value if isinstance(info, RList) and isinstance(info[0], RObject) else "?"
        if class_name in ("compact_intseq", "compact_realseq"):
            n, start, step = (int(x) if class_name == "compact_intseq" else x for x in state[:3])
            return [start + i * step for i in range(int(n))]
        if class_name.startswith("wrap_"):
            return state[0]
        raise RDataError(f"ALTREP class {class_name!r} is not supported by this reader")


def _flatten(value: Any):
    """The bindings of an environment frame (a pairlist) or hash table (a list of pairlists)."""
    if isinstance(value, RList):
        yield value
        for item in value:
            if isinstance(item, RList):
                yield item


def _with_attributes(value: Any, sexp: int, attributes: dict) -> Any:
    names = attributes.get("names")
    if isinstance(value, RList):
        value.names = names
        return value
    if attributes and set(attributes) - {"names"}:
        return RObject(kind=VECTOR_KINDS.get(sexp, str(sexp)), value=value, attributes=attributes)
    return value


def unserialize(data: bytes) -> Any:
    """Decode one R XDR serialization (as written by ``serialize()`` / ``saveRDS``, uncompressed)."""
    reader = _XdrReader(data)
    reader.header()
    return reader.item()


def decompress_blob(blob: bytes, method: int) -> bytes:
    """One ``.rdb`` blob -> serialized bytes; ``method`` is the index's ``compressed`` value (1, 2 or 3)."""
    size = struct.unpack(">I", blob[:4])[0]
    if method in (0, False):
        return blob[4:]
    if method in (1, True):
        out = zlib.decompress(blob[4:])
    else:
        kind, payload = blob[4:5], blob[5:]
        if kind == b"Z":
            out = bz2.decompress(payload)
        elif kind == b"X":
            filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
            out = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters).decompress(payload)
        elif kind == b"2":
            out = zlib.decompress(payload)
        elif kind == b"0":
            out = payload
        else:
            raise RDataError(f"unknown R lazy-load compression method {kind!r}")
    if len(out) != size:
        raise RDataError(f"R lazy-load blob decompressed to {len(out)} bytes, its header says {size}")
    return out


class LazyLoadDB:
    """An R lazy-load database: ``LazyLoadDB(prefix).names()`` and ``.get(name)``.

    ``prefix`` is the path without extension, e.g. ``.../janeaustenr/data/Rdata``.
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        index_path = self.prefix.with_suffix(".rdx")
        try:
            index = unserialize(gzip.decompress(index_path.read_bytes())).as_dict()
        except (OSError, EOFError, zlib.error, RDataError) as e:
            raise RDataError(f"{index_path} is not a readable R lazy-load index: {e}") from e
        self.variables = index["variables"].as_dict()
        compressed = index.get("compressed", [True])
        self.method = int(compressed[0]) if isinstance(compressed, list) else int(compressed)

    def names(self) -> list[str]:
        return sorted(self.variables)

    def get(self, name: str) -> Any:
        if name not in self.variables:
            raise KeyError(f"{name!r} is not in {self.prefix}.rdb (it holds: {', '.join(self.names())})")
        offset, length = self.variables[name]
        with open(self.prefix.with_suffix(".rdb"), "rb") as f:
            f.seek(offset)
            blob = f.read(length)
        return unserialize(decompress_blob(blob, self.method))

    def character(self, name: str) -> list[str | None]:
        """A character vector by name (its attributes, if any, dropped)."""
        value = self.get(name)
        value = value.value if isinstance(value, RObject) else value
        if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
            raise RDataError(f"{name!r} in {self.prefix}.rdb is not a character vector")
        return value
