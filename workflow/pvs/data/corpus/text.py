"""Text cleaning and cutting into documents, shared by every corpus source.

* ``clean_text``: Unicode NFC, no byte-order marks, control characters or ``<|endoftext|>``, ``\\n``
  line ends, no trailing spaces, paragraphs separated by exactly one blank line. With ``unwrap=True``
  (books typeset with hard line breaks) the lines of a paragraph are joined into one line, unless the
  paragraph is indented (verse, tables, letters keep their line breaks).
* ``strip_gutenberg``: the Project Gutenberg licence header and footer, when the markers are present.
* ``cut_documents``: a long text cut at paragraph breaks into documents of about ``doc_chars``
  characters; a paragraph longer than that is cut at line breaks, else sentence ends, else spaces.
"""
from __future__ import annotations

import re
import unicodedata

DOC_SEPARATOR = "<|endoftext|>"  # the token files' document separator never occurs inside a document
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff\u200b]")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # keeps the next paragraph's indentation
_SPACES = re.compile(r"[ \t\u00a0]+")
_SENTENCE_END = re.compile(r"(?<=[.!?;:”\"’)])\s+")
_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg).*$",
                            re.M | re.I)
_PRODUCED_BY = re.compile(r"^\s*(Produced by|This etext was prepared by)[^\n]*(\n[^\n]*\S[^\n]*)*\n", re.I)


def paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of a text (blocks separated by blank lines)."""
    return [p for p in (p.strip("\n") for p in _BLANK_LINES.split(text)) if p.strip()]


def _clean_paragraph(paragraph: str, unwrap: bool) -> str:
    lines = [line.rstrip() for line in paragraph.split("\n")]
    if unwrap and not any(line[:1] in (" ", "\t") for line in lines):
        return _SPACES.sub(" ", " ".join(line.strip() for line in lines)).strip()
    return "\n".join(lines).strip("\n")


def clean_text(text: str, unwrap: bool = False) -> str:
    """Normalized text with paragraphs kept (see the module docstring)."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CONTROL.sub("", text).replace(DOC_SEPARATOR, "")
    cleaned = (_clean_paragraph(p, unwrap) for p in paragraphs(text))
    return "\n\n".join(p for p in cleaned if p.strip())


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's START and END markers (unchanged when they are absent)."""
    text = text.replace("\r\n", "\n")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
        text = _PRODUCED_BY.sub("", text.lstrip("\r\n"), count=1)
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text


def _hard_cut(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at the last space before the limit where there is one."""
    pieces = []
    while len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        cut = cut if cut > limit // 2 else limit
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    return pieces + [text] if text else pieces


def _pack(units: list[str], sep: str, limit: int) -> list[str]:
    """Consecutive units joined by ``sep`` into pieces of at most ``limit`` characters (greedy)."""
    pieces, current = [], ""
    for unit in units:
        if current and len(current) + len(sep) + len(unit) > limit:
            pieces.append(current)
            current = unit
        else:
            current = f"{current}{sep}{unit}" if current else unit
    return pieces + [current] if current else pieces


def _split_long(text: str, limit: int) -> list[str]:
    """A paragraph longer than ``limit`` as pieces of at most ``limit``: cut at line breaks (code, verse),
    else at sentence ends, else at spaces."""
    if len(text) <= limit:
        return [text]
    if "\n" in text:
        units, sep = text.split("\n"), "\n"
    else:
        units, sep = _SENTENCE_END.split(text), " "
        if len(units) == 1:
            return _hard_cut(text, limit)
    return _pack([piece for unit in units for piece in _split_long(unit, limit)], sep, limit)


def cut_documents(text: str, doc_chars: int) -> list[str]:
    """Documents of about ``doc_chars`` characters, cut at paragraph breaks, paragraphs kept intact.

    A document grows paragraph by paragraph and is closed before it would pass ``doc_chars``; a last
    piece shorter than a quarter of ``doc_chars`` joins the document before it.
    """
    units = []
    for paragraph in paragraphs(text):
        units.extend(_split_long(paragraph, doc_chars))
    documents, current = [], []
    size = 0
    for unit in units:
        if current and size + 2 + len(unit) > doc_chars:
            documents.append("\n\n".join(current))
            current, size = [], 0
        current.append(unit)
        size += len(unit) + (2 if size else 0)
    if current:
        tail = "\n\n".join(current)
        if documents and len(tail) < doc_chars // 4:
            documents[-1] = f"{documents[-1]}\n\n{tail}"
        else:
            documents.append(tail)
    return documents
