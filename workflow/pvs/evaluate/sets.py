"""Evaluation data from the Hugging Face hub, fetched once, so that every evaluation job runs offline.

    python -m pvs.evaluate.sets --config configs/paper.yaml --data results/paper/data --out results/paper/data/evalsets

The workflow runs this as the local rule ``eval_sets`` (on the submitting host, which has network) when
``evaluate.perplexity_datasets`` or ``evaluate.hub_tasks`` is set; the GPU jobs then read only files.

Perplexity sets: for each ``evaluate.perplexity_datasets`` entry NAME, the dataset is streamed, each
non-empty text is tokenized with the data directory's tokenizer (the parent's) followed by the document
separator (manifest ``eos_id``), and the first ``evaluate.perplexity_max_tokens`` tokens are written to
NAME.bin, with NAME.json (the spec, tokens, documents, sha256). Every model is scored on the same tokens.

Hub tasks: each ``evaluate.hub_tasks`` task is built once by lm-eval, which downloads its dataset into the
Hugging Face cache (``HF_HOME``: put it on a file system the GPU nodes share); hub_tasks.json records
each task's evaluation documents. index.json (written last) lists both, with library versions.
The token comes from ``HF_TOKEN`` in the environment, never from a file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pvs.cli import doc_parser
from pvs.config import ConfigError, load_config
from pvs.data.corpus.bpe import token_dtype
from pvs.modeling import load_tokenizer, write_json
from pvs.data.tokens import read_manifest
from pvs.versions import library_versions

log = logging.getLogger("pvs.evaluate.sets")


class FetchError(RuntimeError):
    """A dataset could not be fetched; the message names the config key."""


def perplexity_tokens(spec: dict, tokenizer, separator_id: int, max_tokens: int) -> tuple[np.ndarray, int]:
    """The first ``max_tokens`` tokens of the dataset's texts, each followed by the separator; and the documents."""
    import datasets

    rows = datasets.load_dataset(spec["name"], spec.get("subset"), split=spec.get("split", "test"), streaming=True,
                                 token=os.environ.get("HF_TOKEN") or None)
    ids: list[int] = []
    documents = 0
    bar = tqdm(total=max_tokens, desc=spec["name"], file=sys.stderr, mininterval=5, unit="tok")
    for row in rows:
        text = row[spec.get("text_field", "text")]
        if text and text.strip():
            new = tokenizer(text, add_special_tokens=False)["input_ids"] + [separator_id]
            ids += new
            documents += 1
            bar.update(len(new))
        if len(ids) >= max_tokens:
            break
    bar.close()
    return np.asarray(ids[:max_tokens], dtype=np.int64), documents


def fetch_perplexity_set(name: str, spec: dict, tokenizer, separator_id: int, max_tokens: int, out: Path) -> dict:
    """Write ``out/NAME.bin`` and ``out/NAME.json``; returns the record."""
    try:
        tokens, documents = perplexity_tokens(spec, tokenizer, separator_id, max_tokens)
    except Exception as e:  # datasets raises many types (network, missing config, auth, missing field)
        raise FetchError(f"evaluate.perplexity_datasets.{name} ({spec['name']!r}): cannot read it: "
                         f"{type(e).__name__}: {e}") from e
    if len(tokens) == 0:
        raise FetchError(f"evaluate.perplexity_datasets.{name} ({spec['name']!r}): no text in field "
                         f"{spec.get('text_field', 'text')!r}")
    data = tokens.astype(token_dtype(len(tokenizer))).tobytes()
    (out / f"{name}.bin").write_bytes(data)
    record = {"spec": spec, "tokens": int(len(tokens)), "documents": documents,
              "dtype": token_dtype(len(tokenizer)), "sha256": hashlib.sha256(data).hexdigest()}
    write_json(out / f"{name}.json", record)
    log.info("perplexity set %s: %d documents, %d tokens", name, documents, len(tokens))
    return record


def fetch_hub_tasks(hub_tasks: dict[str, str], task_manager=None) -> dict[str, dict]:
    """Build every hub task once (lm-eval downloads its dataset into the HF cache); {task: its record}."""
    from pvs.evaluate.tasks import check_hub_tasks

    if not hub_tasks:
        return {}
    if task_manager is None:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager()
    check_hub_tasks(hub_tasks, task_manager)
    records = {}
    for name, metric in hub_tasks.items():
        try:
            loaded = task_manager.load([name])["tasks"]
        except Exception as e:  # network, auth, a dataset script: name the task
            raise FetchError(f"evaluate.hub_tasks.{name}: lm-eval cannot build it (its dataset downloads from the "
                             f"hub; offline needs a filled HF cache): {type(e).__name__}: {e}") from e
        records[name] = {"metric": metric,
                         "documents": {task: len(list(t.eval_docs)) for task, t in loaded.items()}}
        log.info("hub task %s: %s evaluation documents", name, records[name]["documents"])
    return records


def fetch(cfg: dict, data_dir: str | Path, out: str | Path, task_manager=None) -> dict:
    """Every perplexity set and hub task of ``cfg["evaluate"]`` into ``out``; returns index.json's content."""
    data_dir, out, evaluate = Path(data_dir), Path(out), cfg["evaluate"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)
    tokenizer = load_tokenizer(data_dir / "tokenizer")
    separator_id = read_manifest(data_dir).get("eos_id", tokenizer.eos_token_id)
    perplexity = {name: fetch_perplexity_set(name, spec, tokenizer, separator_id, evaluate["perplexity_max_tokens"], out)
                  for name, spec in evaluate["perplexity_datasets"].items()}
    hub = fetch_hub_tasks(evaluate["hub_tasks"], task_manager)
    write_json(out / "hub_tasks.json", hub)
    index = {"perplexity_sets": perplexity, "hub_tasks": hub, "separator_id": separator_id,
             "hf_home": os.environ.get("HF_HOME", "~/.cache/huggingface (default)"), "versions": library_versions()}
    write_json(out / "index.json", index)
    return index


def read_perplexity_set(eval_sets: str | Path, name: str) -> np.ndarray:
    """The tokens of one fetched perplexity set (int64); names the missing file and the rule that writes it."""
    path = Path(eval_sets) / f"{name}.bin"
    record_path = Path(eval_sets) / f"{name}.json"
    if not path.exists() or not record_path.exists():
        raise FileNotFoundError(f"perplexity set {path} is missing: run python -m pvs.evaluate.sets (rule eval_sets) "
                                f"for evaluate.perplexity_datasets.{name}")
    record = json.loads(record_path.read_text())
    return np.fromfile(path, dtype=record["dtype"]).astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.evaluate.sets", __doc__)
    parser.add_argument("--config", required=True, help="study config (YAML): its evaluate section says what to fetch")
    parser.add_argument("--data", required=True, help="prepared data directory (tokenizer/, manifest.json)")
    parser.add_argument("--out", required=True, help="directory for NAME.bin/NAME.json, hub_tasks.json, index.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="[evalsets] %(message)s")
    try:
        index = fetch(load_config(args.config), args.data, args.out)
    except (ConfigError, FetchError, FileNotFoundError, ValueError) as e:
        print(f"pvs.evaluate.sets: error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %d perplexity sets and %d hub tasks to %s", len(index["perplexity_sets"]),
             len(index["hub_tasks"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
