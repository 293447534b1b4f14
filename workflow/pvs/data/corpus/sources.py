"""Documents from the configured corpus source (``data.source``): debian, local_text or hf.

Every collector returns ``(documents, sources)``: ``documents`` is a list of ``Document(source, text)``
cut to about ``data.doc_chars`` characters, ``sources`` one ``dict`` per source for the manifest (name,
where the text came from, a Debian source's licence, characters, documents). Problems raise
``CorpusError`` naming the config key.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from itertools import islice
from pathlib import Path
from typing import Iterable, NamedTuple

from tqdm import tqdm

from pvs.data.corpus.books import DEBIAN_SOURCES
from pvs.data.corpus.debian import DebianFetchError, fetch_and_extract
from pvs.data.corpus.text import clean_text, cut_documents, strip_gutenberg

log = logging.getLogger(__name__)

FALLBACK_HINT = ("point the config at other text: data.source: local_text with data.local_text.paths "
                 "(UTF-8 files), or data.source: hf with data.hf.name (needs network)")


class CorpusError(ValueError):
    """The configured corpus cannot be read; the message names the config key and value."""


class Document(NamedTuple):
    source: str
    text: str


def source_name(label: str) -> str:
    """A short name usable in metric keys and file names (``ppl/<name>``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "text"


def _source_record(name: str, texts: Iterable[str], doc_chars: int, **origin) -> tuple[list[Document], dict]:
    documents, characters = [], 0
    for text in texts:
        characters += len(text)
        documents.extend(Document(name, d) for d in cut_documents(text, doc_chars))
    return documents, {"name": name, **origin, "characters": characters, "documents": len(documents)}


def debian_documents(names: list[str], cache_dir: str | Path, doc_chars: int) -> tuple[list[Document], list[dict]]:
    """The pinned Debian books named in ``data.debian_sources``, downloaded into ``cache_dir`` once."""
    documents, records = [], []
    for name in tqdm(names, desc="debian sources", unit="source"):
        source = DEBIAN_SOURCES[name]
        try:
            deb, root = fetch_and_extract(source.package, cache_dir)
        except DebianFetchError as e:
            raise CorpusError(f"data.source = 'debian': cannot get {source.package.spec} for "
                              f"data.debian_sources '{name}': {e}. To build the corpus without apt, "
                              f"{FALLBACK_HINT}") from e
        texts = [text for _, text in source.read(root)]
        docs, record = _source_record(name, texts, doc_chars, package=source.package.name,
                                      version=source.package.version, deb_sha256=source.package.sha256,
                                      deb_file=deb.name, licence=source.licence.record())
        log.info("%s: %d characters, %d documents (%s)", name, record["characters"], len(docs), deb.name)
        documents += docs
        records.append(record)
    return documents, records


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_documents(paths: list[str], doc_chars: int) -> tuple[list[Document], list[dict]]:
    """Each UTF-8 file in ``data.local_text.paths`` is one source, named after the file."""
    documents, records, used = [], [], set()
    for i, raw in enumerate(paths):
        path = Path(raw)
        key = f"data.local_text.paths[{i}] = {raw!r}"
        if not path.is_file():
            raise CorpusError(f"{key}: no such file (relative paths start at {os.getcwd()})")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CorpusError(f"{key}: not UTF-8 text ({e})") from e
        name = source_name(path.stem)
        name = name if name not in used else source_name(str(path))
        used.add(name)
        text = clean_text(strip_gutenberg(text))
        if not text:
            raise CorpusError(f"{key}: the file holds no text")
        docs, record = _source_record(name, [text], doc_chars, path=str(path), sha256=_file_sha256(path))
        log.info("%s: %d characters, %d documents (%s)", name, record["characters"], len(docs), path)
        documents += docs
        records.append(record)
    return documents, records


def rows_documents(rows: Iterable[dict], text_field: str, max_documents: int, doc_chars: int,
                   name: str, origin: dict | None = None) -> tuple[list[Document], list[dict]]:
    """Documents from any iterable of records (a streamed HF dataset, a local ``datasets.Dataset``).

    Reads at most ``max_documents`` records; each record's ``text_field`` is cleaned and cut.
    """
    texts = []
    for i, row in enumerate(tqdm(islice(rows, max_documents), desc=f"reading {name}", unit="doc",
                                 total=max_documents)):
        if text_field not in row:
            raise CorpusError(f"data.hf.text_field = {text_field!r}: record {i} has no such column "
                              f"(columns: {', '.join(sorted(row))})")
        text = clean_text(row[text_field] or "")
        if text:
            texts.append(text)
    if not texts:
        raise CorpusError(f"data.hf.name = {name!r}: the dataset gave no text in column {text_field!r}")
    documents, record = _source_record(name, texts, doc_chars, **(origin or {}), records=len(texts))
    log.info("%s: %d records, %d characters, %d documents", name, len(texts), record["characters"], len(documents))
    return documents, [record]


def hf_documents(hf: dict, doc_chars: int) -> tuple[list[Document], list[dict]]:
    """Stream ``data.hf`` (name, subset, split, text_field, max_documents); HF_TOKEN from the environment."""
    import datasets

    spec = {k: hf[k] for k in ("name", "subset", "split", "text_field", "max_documents")}
    try:
        rows = datasets.load_dataset(hf["name"], hf["subset"], split=hf["split"], streaming=True,
                                     token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:  # datasets raises many types (network, missing config, auth)
        raise CorpusError(f"data.hf.name = {hf['name']!r} (subset {hf['subset']!r}, split {hf['split']!r}): "
                          f"cannot open the dataset: {type(e).__name__}: {e}") from e
    name = source_name(hf["name"].rstrip("/").split("/")[-1] + (f"-{hf['subset']}" if hf["subset"] else ""))
    return rows_documents(rows, hf["text_field"], hf["max_documents"], doc_chars, name, {"hf": spec})


def collect_documents(data_cfg: dict, cache_dir: str | Path) -> tuple[list[Document], list[dict]]:
    """The documents of ``data.source`` in source order (not yet shuffled or deduplicated)."""
    source, doc_chars = data_cfg["source"], data_cfg["doc_chars"]
    if source == "debian":
        return debian_documents(data_cfg["debian_sources"], cache_dir, doc_chars)
    if source == "local_text":
        if not data_cfg["local_text"]["paths"]:
            raise CorpusError("data.local_text.paths = []: required when data.source is 'local_text'")
        return local_documents(data_cfg["local_text"]["paths"], doc_chars)
    if source == "hf":
        return hf_documents(data_cfg["hf"], doc_chars)
    raise CorpusError(f"data.source = {source!r}: unknown source (known: debian, local_text, hf)")
