"""A Hugging Face dataset at scale: parallel, resumable tokenization into shards, then splits by token offset.

    python -m pvs.data.shards tokenize --config C --shard 3 --tokenizer DIR --out results/data/shards
    python -m pvs.data.shards assemble --config C --shards results/data/shards --tokenizer DIR --out results/data

Used when ``data.source: hf`` and ``data.hf.shards: K`` > 0 (the workflow runs K tokenize jobs, then one
assemble job). ``tokenize`` streams shard k of K of the dataset (``IterableDataset.shard`` over its files;
every K-th row when it has fewer files than K), tokenizes documents with the parent's tokenizer (EOS after
each) and appends them to ``k.partial.bin``; ``k.progress.json`` records rows and tokens done after every
batch, so a killed job resumes where it stopped. The finished shard is renamed to ``k.bin`` with ``k.json``.
At most ``data.hf.max_documents / K`` rows per shard.

``assemble`` reads the shards in order as one token stream and cuts it, at document boundaries, into
disjoint slices by token offset: val, calib, pretrain (the parent's), retrain (the children's), with
``data.splits`` as fractions of the tokens. It copies nothing: manifest.json records each split as ranges
of the shard files (``pvs.data.tokens.load_split`` reads them in place), next to the tokenizer and
heldout_docs.jsonl in the layout of ``pvs.data`` (manifest last). It reads the val split (for the held-out
documents) and, to find document boundaries and count documents, only the shards a cut falls in; whole
shards take their counts from the shard records. The shard folder must stay next to the data it serves.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pvs.cli import doc_parser
from pvs.config import ConfigError, load_config
from pvs.data.corpus.bpe import load_pretrained, token_dtype
from pvs.data.corpus.sources import CorpusError
from pvs.data.tokens import TokenView
from pvs.versions import library_versions

log = logging.getLogger("pvs.data.shards")
BATCH_ROWS = 256
ORDER = ("val", "calib", "dev", "pretrain", "retrain")     # slices of the stream, by token offset


def open_rows(hf: dict, shard: int, shards: int):
    """Shard ``shard`` of ``shards`` of the streamed dataset (split among its files when it has enough)."""
    import datasets

    try:
        rows = datasets.load_dataset(hf["name"], hf["subset"], split=hf["split"], streaming=True,
                                     token=os.environ.get("HF_TOKEN") or None)
    except Exception as e:  # datasets raises many types (network, missing config, auth)
        raise CorpusError(f"data.hf.name = {hf['name']!r}: cannot open the dataset: {type(e).__name__}: {e}") from e
    if getattr(rows, "num_shards", 0) >= shards:
        return rows.shard(num_shards=shards, index=shard)
    log.warning("the dataset has %s file shard(s) < %d jobs: each job reads the stream and keeps every %d-th row",
                getattr(rows, "num_shards", "?"), shards, shards)
    return itertools.islice(rows, shard, None, shards)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def tokenize_shard(cfg: dict, shard: int, tokenizer_dir: str, out: str | Path, max_rows_this_run: int | None = None) -> dict:
    """Tokenize one shard (resuming a partial one); returns its record, or {} when stopped early."""
    hf, out = cfg["data"]["hf"], Path(out)
    shards, text_field = hf["shards"], hf["text_field"]
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_pretrained(tokenizer_dir, str(out / "cache"))
    dtype = np.dtype(token_dtype(len(tokenizer)))
    partial, progress_path = out / f"{shard}.partial.bin", out / f"{shard}.progress.json"
    done = json.loads(progress_path.read_text()) if progress_path.exists() and partial.exists() else {"rows": 0, "tokens": 0}
    with open(partial, "ab") as f:
        f.truncate(done["tokens"] * dtype.itemsize)          # drop tokens written after the last record
    cap = hf["max_documents"] // shards
    rows = itertools.islice(open_rows(hf, shard, shards), done["rows"], cap)
    budget = cap - done["rows"] if max_rows_this_run is None else min(max_rows_this_run, cap - done["rows"])
    bar = tqdm(total=cap, initial=done["rows"], desc=f"shard {shard}/{shards}", file=sys.stderr, mininterval=10)
    with open(partial, "ab") as f:
        while budget > 0:
            batch = [row[text_field] for row in itertools.islice(rows, min(BATCH_ROWS, budget))]
            if not batch:
                break
            ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
            tokens = np.concatenate([np.append(np.asarray(x, dtype=np.int64), tokenizer.eos_token_id) for x in ids])
            f.write(tokens.astype(dtype).tobytes())
            f.flush()
            done = {"rows": done["rows"] + len(batch), "tokens": done["tokens"] + len(tokens)}
            _write_json(progress_path, done)
            budget -= len(batch)
            bar.update(len(batch))
    bar.close()
    if max_rows_this_run is not None and done["rows"] < cap and budget == 0:
        return {}
    digest, documents = hashlib.sha256(), 0
    whole = TokenView([np.memmap(partial, dtype=dtype, mode="r")]) if done["tokens"] else None
    for chunk in whole.chunks(0, len(whole)) if whole else ():      # in chunks: memory flat at any shard size
        digest.update(chunk.tobytes())
        documents += int((chunk == tokenizer.eos_token_id).sum())
    record = {"shard": shard, "shards": shards, "rows": done["rows"], "tokens": done["tokens"], "dtype": dtype.name,
              "documents": documents, "sha256": digest.hexdigest()}
    os.replace(partial, out / f"{shard}.bin")
    _write_json(out / f"{shard}.json", record)
    progress_path.unlink(missing_ok=True)
    return record


def cut(stream: TokenView, target: int, eos: int) -> int:
    """The first document boundary (just after an EOS) at or after ``target``."""
    position = target
    for chunk in stream.chunks(target, len(stream)):
        hits = np.flatnonzero(chunk == eos)
        if len(hits):
            return position + int(hits[0]) + 1
        position += len(chunk)
    return len(stream)


def split_record(stream: TokenView, a: int, b: int, files: list[str], records: list[dict], eos: int) -> dict:
    """Tokens [a, b) of the stream as shard ranges; documents counted from the records (read only at the ends)."""
    ranges, documents = [], 0
    for k, lo, hi in stream.pieces(a, b):
        ranges.append([files[k], lo, hi])
        if (lo, hi) == (0, records[k]["tokens"]) and "documents" in records[k]:
            documents += records[k]["documents"]
        else:
            first = int(stream.starts[k])
            documents += sum(int((chunk == eos).sum()) for chunk in stream.chunks(first + lo, first + hi))
    return {"ranges": ranges, "offset": [int(a), int(b)], "documents": documents, "tokens": int(b - a)}


def assemble(cfg: dict, shards_dir: str | Path, tokenizer_dir: str, out: str | Path) -> dict:
    """Split the shards' token stream into val / calib / pretrain / retrain by offset and write pvs.data's layout."""
    shards_dir, out, data = Path(shards_dir), Path(out), cfg["data"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    shard_records = [json.loads((shards_dir / f"{k}.json").read_text()) for k in range(data["hf"]["shards"])]
    records = [r for r in shard_records if r["tokens"]]                  # empty shards add nothing
    if not records:
        raise CorpusError(f"data.hf: the {len(shard_records)} shards in {shards_dir} hold no tokens")
    dtype = records[0]["dtype"]
    paths = [shards_dir / f"{r['shard']}.bin" for r in records]
    stream = TokenView([np.memmap(p, dtype=dtype, mode="r") for p in paths])
    files = [os.path.relpath(p.resolve(), out.resolve()) for p in paths]     # relative to the data directory
    tokenizer = load_pretrained(tokenizer_dir, str(out / "cache"))
    eos = tokenizer.eos_token_id
    fractions = data["splits"]
    bounds, start = {}, 0
    for name in ORDER[:-1]:
        share = fractions[name] if name in fractions else 1 - sum(fractions.values())
        end = cut(stream, start + int(share * len(stream)), eos)
        bounds[name], start = (start, end), end
    bounds["retrain"] = (start, len(stream))
    source = data["hf"]["name"].rstrip("/").split("/")[-1]
    splits = {}
    for name, (a, b) in bounds.items():
        record = split_record(stream, a, b, files, records, eos)
        splits[name] = {**record, "sources": {source: record["documents"]}}
    val = stream[slice(*bounds["val"])]
    docs = np.split(val, np.flatnonzero(val == eos) + 1)
    with open(out / ".heldout_docs.jsonl.tmp", "w", encoding="utf-8") as f:
        for doc in docs:
            if len(doc) > 1:
                f.write(json.dumps({"source": source, "text": tokenizer.decode(doc[:-1])}, ensure_ascii=False) + "\n")
    os.replace(out / ".heldout_docs.jsonl.tmp", out / "heldout_docs.jsonl")
    tokenizer.save_pretrained(out / "tokenizer")
    manifest = {"study": cfg["study"], "source": "hf", "dtype": dtype, "vocab_size": len(tokenizer), "eos_id": eos,
                "seed": cfg["seed"], "split_fractions": fractions, "split_by": "token offset (val, calib, dev, pretrain, retrain)",
                "tokenizer": {"pretrained": tokenizer_dir}, "sources": [{"name": source, "origin": {"hf": data["hf"]}}],
                "shards": shard_records, "splits": splits, "val_sources": {source: [0, splits["val"]["tokens"]]},
                "total_tokens": int(len(stream)), "versions": library_versions()}
    _write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.data.shards", __doc__)
    parser.add_argument("step", choices=["tokenize", "assemble"])
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--tokenizer", required=True, help="the parent's tokenizer: hub id or directory")
    parser.add_argument("--out", required=True, help="tokenize: the shard folder; assemble: the data folder")
    parser.add_argument("--shard", type=int, help="tokenize: which shard (0 .. data.hf.shards - 1)")
    parser.add_argument("--shards", help="assemble: the folder of finished shards")
    parser.add_argument("--max-rows-this-run", type=int, help="tokenize: stop after this many rows (tests resume)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.step == "tokenize":
            if args.shard is None or not 0 <= args.shard < cfg["data"]["hf"]["shards"]:
                parser.error(f"--shard must be in 0 .. data.hf.shards - 1 = {cfg['data']['hf']['shards'] - 1}")
            print(json.dumps(tokenize_shard(cfg, args.shard, args.tokenizer, args.out, args.max_rows_this_run)))
        else:
            if not args.shards:
                parser.error("assemble needs --shards")
            manifest = assemble(cfg, args.shards, args.tokenizer, args.out)
            print(json.dumps({k: v["tokens"] for k, v in manifest["splits"].items()}))
    except (ConfigError, CorpusError, FileNotFoundError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
