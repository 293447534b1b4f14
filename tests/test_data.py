"""The data stage on real text: the pinned Debian books (fetched once per session with apt), local text
files and an in-memory Hugging Face dataset. Checks the readers, the splits and the token files."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydoc_data.topics import topics

from pvs.data import prepare as data_stage
from pvs.config import validate_config
from pvs.data.corpus import debian
from pvs.data.corpus.books import (DEBIAN_SOURCES, read_austen, read_henry_commentary, read_moby_dick,
                                   read_treasury_of_david, read_web_bible)
from pvs.data.corpus.rdata import LazyLoadDB
from pvs.data.corpus.sources import CorpusError, Document, rows_documents
from pvs.data.corpus.sword import ZTextModule, osis_to_text
from pvs.data.corpus.text import clean_text, cut_documents
from pvs.data.tokens import SPLITS, load_split, read_manifest

def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def split_documents(data_dir: Path, split: str) -> list[str]:
    """The documents of one token file, decoded (tokens between EOS separators)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(data_dir / "tokenizer")
    tokens = np.asarray(load_split(data_dir, split))
    eos = read_manifest(data_dir)["eos_id"]
    assert len(tokens) and tokens[-1] == eos
    docs = np.split(tokens, np.flatnonzero(tokens == eos) + 1)[:-1]
    return tokenizer.batch_decode([d[:-1].tolist() for d in docs], clean_up_tokenization_spaces=False)


@pytest.fixture(scope="session")
def deb_cache(tmp_path_factory) -> Path:
    """One download of the pinned packages (all of ``DEBIAN_SOURCES``) per test session."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("the Debian corpus needs apt-get and dpkg-deb")
    cache = tmp_path_factory.mktemp("downloads")
    for source in DEBIAN_SOURCES.values():
        debian.fetch_and_extract(source.package, cache)
    return cache


def _root(cache: Path, name: str) -> Path:
    return debian.fetch_and_extract(DEBIAN_SOURCES[name].package, cache)[1]


@pytest.fixture(scope="session")
def debian_data(deb_cache, tmp_path_factory) -> Path:
    """The default corpus (three books, vocab 4096) prepared once."""
    out = tmp_path_factory.mktemp("data")
    data_stage.prepare(validate_config({"data": {"source": "debian"}}), out, deb_cache)
    return out


# ---- readers on the real packages -------------------------------------------------------------------

def test_r_reader_reads_the_austen_novels(deb_cache):
    db = LazyLoadDB(_root(deb_cache, "austen") / "usr/lib/R/site-library/janeaustenr/data/Rdata")
    assert db.names() == ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                          "sensesensibility"]
    lines = db.character("prideprejudice")
    assert lines[0] == "PRIDE AND PREJUDICE" and len(lines) > 10_000
    assert "It is a truth universally acknowledged, that a single man in possession" in lines[:20]
    novels = dict(read_austen(_root(deb_cache, "austen")))
    first = novels["prideprejudice"].split("\n\n")[3]
    assert first == ("It is a truth universally acknowledged, that a single man in possession of a good "
                     "fortune, must be in want of a wife.")
    assert novels["emma"].startswith("EMMA\n\nBy Jane Austen")


def test_r_reader_finds_moby_dick(deb_cache):
    root = _root(deb_cache, "moby_dick")
    assert "mobydick" in LazyLoadDB(root / "usr/lib/R/site-library/tokenizers/data/Rdata").names()
    [(name, text)] = list(read_moby_dick(root))
    paragraphs = text.split("\n\n")
    assert any(p.startswith("Call me Ishmael. Some years ago--never mind how long precisely") for p in paragraphs)
    assert text.startswith("MOBY DICK; OR THE WHALE") and text.endswith("only found another orphan.")
    assert "Gutenberg License" not in text and "\r" not in text and len(text) > 1_000_000


def test_sword_reader_reads_the_world_english_bible(deb_cache):
    root = _root(deb_cache, "web_bible")
    module = ZTextModule(root / "usr/share/sword/modules/texts/ztext/engWEB2015eb")
    assert osis_to_text(module.entry("ot", 4)) == "In the beginning, God created the heavens and the earth."
    books = dict(read_web_bible(root))
    assert {"Gen", "Ps", "Tob", "Matt", "John", "Rev"} <= set(books) and len(books) > 70
    assert "For God so loved the world, that he gave his only born Son, that whoever believes" in books["John"]
    assert not any("<" in text or ">" in text for text in books.values())
    assert "Blessed is the man who doesn’t walk in the counsel of the wicked,\nnor stand" in books["Ps"]


def test_sword_reader_reads_matthew_henrys_commentary(deb_cache):
    root = _root(deb_cache, "henry_commentary")
    module = ZTextModule(root / "usr/share/sword/modules/comments/zcom/mhcc")
    assert osis_to_text(module.entry("ot", 4)).startswith("Genesis\n\nGenesis is a name taken from the Greek")
    books = dict(read_henry_commentary(root))
    assert list(books)[:2] == ["Gen", "Exod"] and list(books)[-1] == "Rev" and len(books) == 66
    assert "Chapter Outline\n\nGod creates heaven and earth. (1-2)" in books["Gen"]
    assert books["Rev"].endswith("world without end. Amen.")
    assert not any("<" in text or ">" in text for text in books.values())
    paragraphs = [p for text in books.values() for p in text.split("\n\n") if len(p) > 200]
    assert len(paragraphs) == len(set(paragraphs))  # a note on a verse range (a linked entry) comes once
    assert 3_500_000 < sum(map(len, books.values())) < 4_500_000


def test_sword_reader_reads_the_treasury_of_david(deb_cache):
    root = _root(deb_cache, "treasury_of_david")
    [(name, text)] = list(read_treasury_of_david(root))  # CHAPTER blocks (.czv), 12-byte entries, no nt
    assert name == "Ps" and text.startswith("Preface\n\nMy Preface shall at least possess the virtue of brevity")
    assert 'Verse 1. "BLESSED" —see how this Book of Psalms opens with a benediction' in text
    assert text.endswith("perfect in its charity. —J.F. HALLELUJAH!")
    assert "<" not in text and 11_000_000 < len(text) < 12_500_000  # no markup left (one ">" is the source's)


def test_every_source_has_a_licence_and_the_schema_names_every_source():
    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    items = schema["properties"]["data"]["properties"]["debian_sources"]["items"]
    assert items["enum"] == list(DEBIAN_SOURCES)
    for source in DEBIAN_SOURCES.values():
        assert source.licence.id in {"public-domain", "MIT"} and len(source.licence.statement) > 20


def test_osis_markup_becomes_layout():
    osis = ('<chapter n="1" sID="X.1"/><w lemma="strong:H1">God</w><note placement="foot">a note</note>'
            '<w>created</w> light<note>n</note>. <div sID="p1" type="x-p"/>Next &amp; last '
            '<lg sID="a"/><l sID="b"/>line one<l eID="b"/> <l sID="c"/>line two<l eID="c"/><lg eID="a"/>')
    assert osis_to_text(osis) == "God created light.\n\nNext & last\n\nline one\nline two"


# ---- cleaning and cutting ----------------------------------------------------------------------------

def test_clean_text_keeps_paragraphs_and_indentation():
    raw = "\ufeffA hard\r\nwrapped  line.\r\n\r\n\r\n   \n    indented\n    verse\n\ndef f():\n\n    return 1  \n"
    assert clean_text(raw, unwrap=True) == "A hard wrapped line.\n\n    indented\n    verse\n\ndef f():\n\n    return 1"
    assert clean_text(raw) == "A hard\nwrapped  line.\n\n    indented\n    verse\n\ndef f():\n\n    return 1"
    assert clean_text("a<|endoftext|>b\x00") == "ab"


def test_cut_documents_cuts_at_paragraphs_near_the_size():
    text = "\n\n".join(v for _, v in sorted(topics.items()))
    docs = cut_documents(clean_text(text), 1000)
    assert len(docs) > 100
    assert max(len(d) for d in docs) <= 1000 + 1000 // 4 + 2  # a short tail may join the last document
    assert np.median([len(d) for d in docs]) > 600
    kept = {p for d in docs for p in d.split("\n\n")}
    short = [p for p in clean_text(text).split("\n\n") if len(p) <= 1000]
    assert all(p in kept for p in short)  # a paragraph is cut only when longer than a document


# ---- the default corpus, end to end ------------------------------------------------------------------

def test_default_corpus_is_large_enough_and_manifest_matches_files(debian_data):
    manifest = read_manifest(debian_data)
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 4096 and manifest["eos_id"] == 0
    assert manifest["total_tokens"] >= 2_500_000
    assert {s["name"] for s in manifest["sources"]} == {"austen", "web_bible", "moby_dick"}
    for record in manifest["sources"]:
        assert record["deb_sha256"] == DEBIAN_SOURCES[record["name"]].package.sha256
        assert record["licence"] == DEBIAN_SOURCES[record["name"]].licence.record() and record["licence"]["id"]
    for split in SPLITS:
        raw = (debian_data / f"{split}.bin").read_bytes()
        record = manifest["splits"][split]
        assert record["tokens"] == len(raw) // 2 and record["sha256"] == hashlib.sha256(raw).hexdigest()
        assert record["documents"] == sum(record["sources"].values())
    assert manifest["total_tokens"] == sum(r["tokens"] for r in manifest["splits"].values())
    assert manifest["splits"]["retrain"]["documents"] > manifest["splits"]["val"]["documents"] > 100
    assert manifest["versions"]["tokenizers"] and manifest["seconds"] > 0


def test_splits_are_disjoint_documents(debian_data):
    manifest = read_manifest(debian_data)
    hashes = {}
    for split in SPLITS:
        docs = split_documents(debian_data, split)
        assert len(docs) == manifest["splits"][split]["documents"]
        hashes[split] = {_sha(d) for d in docs}
        assert len(hashes[split]) == len(docs)  # deduplicated inside the split too
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not hashes[a] & hashes[b], f"{a} and {b} share documents"


def test_val_is_grouped_by_source_and_matches_heldout_docs(debian_data):
    manifest = read_manifest(debian_data)
    heldout = [json.loads(line) for line in (debian_data / "heldout_docs.jsonl").read_text().splitlines()]
    assert [d["text"] for d in heldout] == split_documents(debian_data, "val")
    ranges = manifest["val_sources"]
    assert list(ranges) == ["austen", "web_bible", "moby_dick"]
    bounds = [tuple(r) for r in ranges.values()]
    assert bounds[0][0] == 0 and bounds[-1][1] == manifest["splits"]["val"]["tokens"]
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sources = [d["source"] for d in heldout]
    assert sources == sorted(sources, key=list(ranges).index)


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(debian_data):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(debian_data / "tokenizer")
    assert tokenizer.convert_ids_to_tokens(0) == "<|endoftext|>"
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == tokenizer.pad_token_id == 0
    for text in ["Call me Ishmael.", "  two spaces,\ttab\n\n\nthree newlines  ", "naïve café Ελληνικά 日本語 🐳",
                 "“Curly quotes” — and ‘dashes’…", "x" * 3000]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert 0 not in ids and tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text


def test_rerun_uses_the_cache_and_is_deterministic(debian_data, deb_cache, tmp_path, monkeypatch):
    def no_apt(args, cwd):
        raise AssertionError(f"apt-get {args} called although the packages are cached")

    monkeypatch.setattr(debian, "run_apt", no_apt)
    (tmp_path / "pretrain.bin").write_bytes(b"stale partial file")  # as an interrupted run would leave
    again = data_stage.prepare(validate_config({"data": {"source": "debian"}}), tmp_path, deb_cache)
    first = read_manifest(debian_data)
    assert {k: v["sha256"] for k, v in again["splits"].items()} == {k: v["sha256"] for k, v in first["splits"].items()}
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_corpus_names_data_source(tmp_path, monkeypatch, capsys):
    calls = []

    def failing_apt(args, cwd):
        calls.append(args[0])
        if args[0] == "update":  # lists refreshed, yet the package is still not there
            return subprocess.CompletedProcess(["apt-get", *args], 0, "", "")
        return subprocess.CompletedProcess(["apt-get", *args], 100, "", "E: Unable to locate package")

    monkeypatch.setattr(debian, "run_apt", failing_apt)
    cfg = validate_config({"data": {"source": "debian", "debian_sources": ["moby_dick"]}})
    with pytest.raises(CorpusError, match=r"data\.source = 'debian'.*data\.local_text\.paths"):
        data_stage.prepare(cfg, tmp_path / "out", tmp_path / "empty_cache")
    assert calls == ["download", "update", "download"]
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"debian_sources": ["moby_dick"]}}))
    assert data_stage.main(["--config", str(config_file), "--out", str(tmp_path / "o"),
                            "--cache", str(tmp_path / "c")]) == 2
    assert "data.source" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


# ---- other sources -----------------------------------------------------------------------------------

@pytest.fixture()
def text_files(tmp_path) -> list[str]:
    prose = "\n\n".join(v for _, v in sorted(topics.items())[:120])
    code = (Path(subprocess.__file__)).read_text()[:120_000]
    (tmp_path / "prose.txt").write_text(prose)
    (tmp_path / "code.py.txt").write_text(code)
    (tmp_path / "excerpt.txt").write_text(prose[:20_000])  # the same opening: duplicate documents to drop
    return [str(tmp_path / name) for name in ("prose.txt", "code.py.txt", "excerpt.txt")]


def test_local_text_source(text_files, tmp_path):
    cfg = validate_config({"seed": 3, "data": {"source": "local_text", "local_text": {"paths": text_files},
                                               "vocab_size": 512, "doc_chars": 800}})
    manifest = data_stage.prepare(cfg, tmp_path / "out", tmp_path / "cache")
    assert [s["name"] for s in manifest["sources"]] == ["prose", "code.py", "excerpt"]
    excerpt = manifest["sources"][2]
    assert excerpt["documents"] > 20 and excerpt["distinct_documents"] <= 1  # only its cut-off last document
    assert manifest["documents"]["duplicates_dropped"] == sum(s["documents"] - s["distinct_documents"]
                                                              for s in manifest["sources"])
    assert list(manifest["val_sources"]) == [s for s in ("prose", "code.py", "excerpt") if s in manifest["val_sources"]]
    assert manifest["vocab_size"] == 512 and manifest["source"] == "local_text"
    docs = [d for s in SPLITS for d in split_documents(tmp_path / "out", s)]
    assert any("\n    def " in d for d in docs)  # code keeps its indentation
    assert len({_sha(d) for d in docs}) == len(docs) == manifest["documents"]["distinct"]


def test_local_text_missing_path_names_the_key(text_files, tmp_path):
    cfg = validate_config({"data": {"source": "local_text", "local_text": {"paths": [text_files[0], "nope.txt"]}}})
    with pytest.raises(CorpusError, match=r"data\.local_text\.paths\[1\] = 'nope.txt'"):
        data_stage.prepare(cfg, tmp_path / "out", tmp_path / "cache")


def test_hf_rows_from_a_local_dataset():
    import datasets

    texts = [v for _, v in sorted(topics.items()) if len(v) > 500][:60]
    rows = datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))})
    docs, [record] = rows_documents(rows, "text", 40, 1000, "topics")
    assert record["records"] == 40 and {d.source for d in docs} == {"topics"}
    assert "".join(d.text for d in docs).count(texts[0][:200].split("\n")[0]) >= 1
    with pytest.raises(CorpusError, match="data.hf.text_field = 'body'"):
        rows_documents(rows, "body", 40, 1000, "topics")


def test_hf_source_streams_through_load_dataset(tmp_path, monkeypatch):
    import datasets

    texts = [v for _, v in sorted(topics.items()) if len(v) > 300]
    seen = {}

    def fake_load_dataset(name, subset, split, streaming, token):
        seen.update(name=name, subset=subset, split=split, streaming=streaming)
        return datasets.Dataset.from_dict({"content": texts})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    hf = {"name": "org/some-corpus", "subset": "en", "split": "train", "text_field": "content", "max_documents": 50}
    cfg = validate_config({"data": {"source": "hf", "hf": hf, "vocab_size": 400, "doc_chars": 1000}})
    manifest = data_stage.prepare(cfg, tmp_path, tmp_path / "cache")
    assert seen == {"name": "org/some-corpus", "subset": "en", "split": "train", "streaming": True}
    assert manifest["sources"][0]["name"] == "some-corpus-en" and manifest["sources"][0]["records"] == 50
    assert manifest["sources"][0]["hf"]["name"] == "org/some-corpus"


def test_existing_tokenizer_is_used_as_is(debian_data, text_files, tmp_path):
    cfg = validate_config({"data": {"source": "local_text", "local_text": {"paths": text_files}}})
    manifest = data_stage.prepare(cfg, tmp_path, tmp_path / "cache", str(debian_data / "tokenizer"))
    assert manifest["tokenizer"] == {"pretrained": str(debian_data / "tokenizer")}
    assert manifest["vocab_size"] == 4096
    original = json.loads((debian_data / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert json.loads((tmp_path / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"] == original


def test_assign_splits_fractions_seed_and_grouping():
    docs = [Document("a" if i % 3 else "b", f"document {i}") for i in range(1000)]
    fractions = {"val": 0.05, "calib": 0.02, "retrain": 0.3, "dev": 0.02}
    splits = data_stage.assign_splits(docs, fractions, seed=1, source="local_text")
    assert {k: len(v) for k, v in splits.items()} == {"pretrain": 610, "retrain": 300, "calib": 20, "val": 50,
                                                      "dev": 20}
    val_sources = [d.source for d in splits["val"]]
    assert val_sources == sorted(val_sources, key=["b", "a"].index)  # grouped, in corpus order (doc 0 is b)
    assert splits == data_stage.assign_splits(docs, fractions, seed=1, source="local_text")
    assert splits != data_stage.assign_splits(docs, fractions, seed=2, source="local_text")
    with pytest.raises(CorpusError, match="data.source = 'local_text'"):
        data_stage.assign_splits(docs[:3], fractions, seed=1, source="local_text")


def test_dev_split_is_disjoint_from_every_other_split(tmp_path):
    """The development split (LR sweep) shares no document and no token window with any other split.
    The corpus is seeded random words (real text repeats passages across documents, e.g. the pydoc topics)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=rng.integers(2, 9))) for _ in range(3000)]
    paragraphs = [" ".join(rng.choice(words, size=60)) + "." for _ in range(600)]
    (tmp_path / "words.txt").write_text("\n\n".join(paragraphs))
    cfg = validate_config({"seed": 5, "data": {"source": "local_text",
                                               "local_text": {"paths": [str(tmp_path / "words.txt")]},
                                               "vocab_size": 512, "doc_chars": 800,
                                               "splits": {"val": 0.05, "calib": 0.03, "retrain": 0.3, "dev": 0.1}}})
    out = tmp_path / "out"
    manifest = data_stage.prepare(cfg, out, tmp_path / "cache")
    assert (out / "dev.bin").exists() and manifest["splits"]["dev"]["documents"] >= 3
    assert manifest["split_fractions"]["dev"] == 0.1
    docs = {s: split_documents(out, s) for s in SPLITS}
    dev = {_sha(d) for d in docs["dev"]}
    for split in SPLITS:
        if split != "dev":
            assert not dev & {_sha(d) for d in docs[split]}, f"a dev document is also in {split}"
    seq = 64   # long enough that no two distinct documents share one by chance
    dev_tokens = np.asarray(load_split(out, "dev"))
    windows = {dev_tokens[i:i + seq].tobytes() for i in range(0, len(dev_tokens) - seq, seq)}
    for split in SPLITS:
        if split == "dev":
            continue
        tokens = np.asarray(load_split(out, split))
        other = {tokens[i:i + seq].tobytes() for i in range(len(tokens) - seq + 1)}   # every offset
        assert not windows & other, f"a dev window of {seq} tokens appears in {split}"
