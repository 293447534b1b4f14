"""Read a SWORD zText Bible or zCom commentary module (e.g. the World English Bible) into clean text.

A zText or zCom module holds each testament (``ot``, ``nt``) in three files, named after the module's
``BlockType`` (``b`` = BOOK: ``ot.bzz``, ``ot.bzs``, ``ot.bzv``; ``c`` = CHAPTER: ``ot.czz``, ...):

* ``.?zz``: zlib-compressed blocks, concatenated (about one block per book or per chapter);
* ``.?zs``: the block index, 12 bytes per block: little-endian uint32 offset into ``.?zz``,
  compressed size, uncompressed size (an empty file: the module has nothing for that testament);
* ``.?zv``: the entry index in versification order, 10 bytes per entry: uint32 block number, uint32
  offset inside the uncompressed block, uint16 size (size 0 = empty entry); the "4" drivers (zText4,
  zCom4) store the size as uint32, 12 bytes per entry. Entry 0 is the module header, 1 the testament
  header, then per book a book intro, and per chapter a chapter heading followed by its verses:
  Genesis 1:1 is entry 4 of ``ot``. A commentary note on a range of verses is one text that every
  verse of the range points to (a linked entry).

Entries are OSIS XML fragments. ``osis_to_text`` keeps the running text and turns the markup into
layout: paragraph markers, chapters, titles and line groups become blank lines, poetic lines become
line breaks, table rows paragraphs (their cells separated by a space); footnotes and Strong's numbers are
dropped (the text of a ``<reference>`` is kept).
"""
from __future__ import annotations

import html
import re
import struct
import unicodedata
import zlib
from pathlib import Path
from typing import Iterator

BLOCK_RECORD = struct.Struct("<III")  # offset, compressed size, uncompressed size
ENTRY_RECORD = struct.Struct("<IIH")  # block, offset in block, size
ENTRY_RECORD4 = struct.Struct("<III")  # the same with a uint32 size (zText4, zCom4)
TESTAMENTS = ("ot", "nt")

_NOTE = re.compile(r"<note\b[^>]*?(?:/>|>.*?</note>)", re.S)
_TAG = re.compile(r"<(/?)([A-Za-z]+)\b([^>]*?)(/?)>")
_ATTR = re.compile(r'([A-Za-z]+)="([^"]*)"')
_PLAIN = re.compile(r"</?w\b[^>]*>|<div type=\"x-milestone\"[^>]*>")  # no layout: drop fast
_BOOK_START = re.compile(r"<div\b[^>]*\btype=\"book\"[^>]*>")
_NOTE_MARK = "\x01"
# open or close = a paragraph break
BREAK_TAGS = {"chapter", "lg", "p", "title", "speaker", "list", "item", "head", "table", "row"}


class SwordError(ValueError):
    """The module files are missing or malformed."""


def _records(path: Path, record: struct.Struct) -> list[tuple]:
    data = path.read_bytes()
    if len(data) % record.size:
        raise SwordError(f"{path}: size {len(data)} is not a multiple of {record.size}-byte records")
    return list(record.iter_unpack(data))


class ZTextModule:
    """One zText or zCom module directory (the folder holding ``ot.bzs``, ``nt.bzv``, ...).

    ``block_type`` is the first letter of the files' extension (``b`` or ``c``); ``wide_sizes`` reads
    12-byte entries (the zText4 and zCom4 drivers: check the file sizes, a ``.conf`` may name the driver
    wrongly); ``linked_once`` reads a linked entry only once (for commentaries; off for the World English
    Bible, whose few linked verses are read as before so that its text does not change).
    """

    def __init__(self, path: str | Path, block_type: str = "b", wide_sizes: bool = False,
                 linked_once: bool = False):
        self.path = Path(path)
        self._ext, self.linked_once = block_type, linked_once
        self.testaments = [t for t in TESTAMENTS if (self.path / f"{t}.{block_type}zv").exists()
                           and self._file(t, "s").stat().st_size > 0]
        if not self.testaments:
            raise SwordError(f"{self.path} holds no zText module (no ot.{block_type}zv or nt.{block_type}zv "
                             f"with blocks)")
        record = ENTRY_RECORD4 if wide_sizes else ENTRY_RECORD
        self._blocks = {t: _records(self._file(t, "s"), BLOCK_RECORD) for t in self.testaments}
        self._index = {t: _records(self._file(t, "v"), record) for t in self.testaments}
        self._cache: tuple[tuple[str, int], bytes] | None = None

    def _file(self, testament: str, kind: str) -> Path:
        return self.path / f"{testament}.{self._ext}z{kind}"

    def _block(self, testament: str, number: int) -> bytes:
        """One decompressed block (the last one is kept: entries are read in block order)."""
        if self._cache and self._cache[0] == (testament, number):
            return self._cache[1]
        offset, size, usize = self._blocks[testament][number]
        with open(self._file(testament, "z"), "rb") as f:
            f.seek(offset)
            raw = zlib.decompress(f.read(size))
        if len(raw) != usize:
            raise SwordError(f"{testament} block {number}: {len(raw)} bytes, index says {usize}")
        self._cache = ((testament, number), raw)
        return raw

    def entry(self, testament: str, index: int) -> str:
        """The raw OSIS of one entry ('' when empty); ``entry('ot', 4)`` is Genesis 1:1."""
        block, offset, size = self._index[testament][index]
        if size == 0:
            return ""
        return self._block(testament, block)[offset:offset + size].decode("utf-8")

    def entries(self, testament: str) -> Iterator[str]:
        """The raw OSIS of every entry of a testament, in versification order; with ``linked_once`` a
        linked entry (the text of an earlier one: a commentary note on a verse range) only the first time."""
        seen = set()
        for index, record in enumerate(self._index[testament]):
            if self.linked_once and record[2] and record in seen:
                continue
            seen.add(record)
            yield self.entry(testament, index)

    def books(self) -> Iterator[tuple[str, str]]:
        """(OSIS book id, clean text) for every book, in order; front matter comes as 'front'."""
        for testament in self.testaments:
            osis = " ".join(self.entries(testament))
            for name, part in split_books(osis):
                text = osis_to_text(part)
                if text:
                    yield name, text


def split_books(osis: str) -> list[tuple[str, str]]:
    """Cut a testament's OSIS at each ``<div type="book" osisID=...>`` start."""
    parts, name, start = [], "front", 0
    for match in _BOOK_START.finditer(osis):
        values = dict(_ATTR.findall(match.group(0)))
        if "eID" not in values:
            parts.append((name, osis[start:match.start()]))
            name, start = values.get("osisID", "book"), match.start()
    parts.append((name, osis[start:]))
    return [(n, p) for n, p in parts if p.strip()]


def _layout(match: re.Match) -> str:
    """What one OSIS tag becomes in plain text."""
    closing, tag, attrs, _ = match.groups()
    values = dict(_ATTR.findall(attrs))
    if tag in BREAK_TAGS or (tag == "div" and values.get("type") in ("x-p", "book", "introduction", "front")):
        return "\n\n"
    if tag == "lb":
        return "\n\n" if values.get("type") == "x-p" else "\n"
    if tag == "l" and not closing and "eID" not in values:
        return "\n"
    if tag == "cell" and closing:
        return "\t"
    return ""


def osis_to_text(osis: str) -> str:
    """Plain text of an OSIS fragment: markup dropped, paragraphs separated by one blank line.

    A footnote glued between two words (``God<note>..</note><w>created``) leaves a space behind.
    """
    text = _PLAIN.sub("", _NOTE.sub(_NOTE_MARK, osis))
    text = _TAG.sub(_layout, text)
    text = unicodedata.normalize("NFC", html.unescape(text))
    text = re.sub(rf"(?<=\S){_NOTE_MARK}+(?=[\w“‘(])", " ", text).replace(_NOTE_MARK, "")
    lines = [re.sub(r"[ \t\u00a0]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
