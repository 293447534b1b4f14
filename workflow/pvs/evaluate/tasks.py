"""Generate the local lm-eval tasks every model is scored on, from held-out text and (optionally) BLiMP.

    python -m pvs.evaluate.tasks --data results/data --out results/data/lmeval_tasks
    python -m pvs.evaluate.tasks --data results/data --out results/data/lmeval_tasks --blimp-dir ../shared/data/blimp

Tasks written into --out (one YAML + one jsonl each; ``data_files`` are absolute paths, so
``lm_eval.tasks.TaskManager(include_path=OUT)`` loads them offline from any working directory):

  heldout_mc      multiple choice: a context of 24 words from a held-out document; which of four
                  spans of 8 words continues it? The three distractors are spans of other
                  held-out documents of the same source (any other document when a source has only one).
                  Metrics acc and acc_norm (length-normalized); primary acc_norm.
  heldout_cloze   LAMBADA-like cloze: a passage of 32 words; predict its next word, a word that
                  already occurs in the passage (as LAMBADA's targets mostly do). Metrics acc (the target
                  is the greedy continuation, ``is_greedy``) and perplexity (exp of the mean target
                  log-likelihood); primary acc.
  blimp_<name>    one task per BLiMP phenomenon file (the first --blimp-limit pairs); the pair's two
                  sentences are scored without context and acc = the good sentence gets the higher total
                  log-likelihood (standard BLiMP scoring). Group ``blimp`` = unweighted mean acc.

``--hub-tasks task=metric ...`` (the workflow passes ``evaluate.hub_tasks``) checks, offline, that every
lm-eval registry task named there exists and reports that metric; a wrong name or metric fails here, before
any model is evaluated. ``--check-only`` runs just that check (no --data needed), e.g. before submitting:
``python -m pvs.evaluate.tasks --check-only --config configs/paper.yaml``.

``tasks.json`` maps every task name (and the group ``blimp``) to its primary metric. Examples are drawn
deterministically from --seed; the held-out documents are the validation documents (never trained on).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pvs.cli import doc_parser

log = logging.getLogger("pvs.evaluate.tasks")

CONTEXT_WORDS = 24     # multiple choice: words of context (lm-eval scores it once per choice: keep it short)
CHOICE_WORDS = 8       # multiple choice: words per choice
N_CHOICES = 4
CLOZE_WORDS = 32       # cloze: words of passage before the target word
MAX_CONTEXT_CHARS = 600
MAX_CHOICE_CHARS = 200
BLIMP_GROUP = "blimp"
CLOZE_TARGET = re.compile(r"([A-Za-z]{2,})[.,;:!?'\")\]]*")
WORD = re.compile(r"\S+")
LETTERS = re.compile(r"[A-Za-z]+")


@dataclass
class Doc:
    """A held-out document and the character spans of its whitespace-separated words."""
    source: str
    text: str
    words: list[tuple[int, int]]

    def span(self, first: int, last: int) -> str:
        """Original text from the start of word ``first`` to the end of word ``last`` (inclusive)."""
        return self.text[self.words[first][0]:self.words[last][1]]


def read_heldout(data_dir: str | Path) -> list[Doc]:
    path = Path(data_dir) / "heldout_docs.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"held-out documents {path} are missing: run the data stage (python -m pvs.data)")
    docs = []
    with open(path) as f:
        for line in f:
            if line.strip():
                record = json.loads(line)
                text = record["text"]
                docs.append(Doc(record["source"], text, [m.span() for m in WORD.finditer(text)]))
    return docs


# ---------------------------------------------------------------------------------------- multiple choice
def _distractor_pool(docs: list[Doc], index: int) -> list[int]:
    """Other documents long enough for a choice: same source first, else any other document."""
    long_enough = [j for j, d in enumerate(docs) if j != index and len(d.words) >= CHOICE_WORDS]
    same = [j for j in long_enough if docs[j].source == docs[index].source]
    return same or long_enough


def _distractors(docs: list[Doc], index: int, true: str, rng: np.random.Generator) -> list[str] | None:
    pool = _distractor_pool(docs, index)
    if not pool:
        return None
    found: list[str] = []
    for _ in range(50):
        doc = docs[pool[rng.integers(len(pool))]]
        first = int(rng.integers(len(doc.words) - CHOICE_WORDS + 1))
        span = doc.span(first, first + CHOICE_WORDS - 1)
        if span not in found and span != true and len(span) <= MAX_CHOICE_CHARS:
            found.append(span)
            if len(found) == N_CHOICES - 1:
                return found
    return None


def mc_examples(docs: list[Doc], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` multiple-choice examples from non-overlapping windows of the documents, sampled by ``rng``."""
    stride = CONTEXT_WORDS + CHOICE_WORDS
    cells = [(i, start) for i, d in enumerate(docs) for start in range(0, len(d.words) - stride + 1, stride)]
    examples = []
    for k in rng.permutation(len(cells)):
        i, start = cells[k]
        doc = docs[i]
        context = doc.span(start, start + CONTEXT_WORDS - 1)
        true = doc.span(start + CONTEXT_WORDS, start + stride - 1)
        if len(context) > MAX_CONTEXT_CHARS or len(true) > MAX_CHOICE_CHARS:
            continue
        distractors = _distractors(docs, i, true, rng)
        if distractors is None:
            continue
        label = int(rng.integers(N_CHOICES))
        choices = distractors[:label] + [true] + distractors[label:]
        examples.append({"context": context, "choices": choices, "label": label, "source": doc.source})
        if len(examples) == n:
            break
    return examples


# ---------------------------------------------------------------------------------------------- cloze
def _cloze_candidates(doc: Doc) -> list[tuple[int, str]]:
    """(word index, target) where the word follows a single space and occurs in the CLOZE_WORDS before it."""
    letters = [[run.lower() for run in LETTERS.findall(doc.text, a, b)] for a, b in doc.words]
    window = Counter(run for runs in letters[:CLOZE_WORDS] for run in runs)
    candidates = []
    for j in range(CLOZE_WORDS, len(doc.words)):
        a, b = doc.words[j]
        match = CLOZE_TARGET.fullmatch(doc.text, a, b)
        if match and doc.text[doc.words[j - 1][1]:a] == " " and window[match.group(1).lower()]:
            candidates.append((j, match.group(1)))
        window.update(letters[j])
        window.subtract(letters[j - CLOZE_WORDS])
    return candidates


def cloze_examples(docs: list[Doc], n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` cloze examples, taken in random order, no two passages of one document overlapping."""
    candidates = [(i, j, target) for i, d in enumerate(docs) for j, target in _cloze_candidates(d)]
    taken: dict[int, list[int]] = {}
    examples = []
    for k in rng.permutation(len(candidates)):
        i, j, target = candidates[k]
        doc = docs[i]
        if any(abs(j - other) <= CLOZE_WORDS for other in taken.get(i, [])):
            continue
        context = doc.span(j - CLOZE_WORDS, j - 1)
        if len(context) > MAX_CONTEXT_CHARS:
            continue
        taken.setdefault(i, []).append(j)
        examples.append({"context": context, "target": target, "source": doc.source})
        if len(examples) == n:
            break
    return examples


# ---------------------------------------------------------------------------------------------- BLiMP
def blimp_files(blimp_dir: Path, subtasks: list[str]) -> list[Path]:
    """The phenomenon files to use (all ``*.jsonl`` when ``subtasks`` is empty); unknown names are errors."""
    available = {p.stem: p for p in sorted(blimp_dir.glob("*.jsonl"))}
    if not subtasks:
        return list(available.values())
    unknown = [s for s in subtasks if s not in available]
    if unknown:
        raise ValueError(f"BLiMP phenomena {unknown} not found in {blimp_dir} (known: {', '.join(available)})")
    return [available[s] for s in subtasks]


def blimp_examples(path: Path, limit: int | None) -> list[dict]:
    """The first ``limit`` minimal pairs of one phenomenon file, as two-way choices (good first)."""
    examples = []
    with open(path) as f:
        for line in f:
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                pair = json.loads(line)
                examples.append({"choices": [pair["sentence_good"], pair["sentence_bad"]], "label": 0,
                                 "pairID": str(pair.get("pairID", len(examples)))})
    return examples


# ------------------------------------------------------------------------------------------ task files
def _data_source(data_file: Path) -> dict:
    return {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file.resolve())}},
            "test_split": "test", "num_fewshot": 0}


def mc_task(name: str, data_file: Path) -> dict:
    return {"task": name, **_data_source(data_file), "output_type": "multiple_choice",
            "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


def cloze_task(name: str, data_file: Path) -> dict:
    return {"task": name, **_data_source(data_file), "output_type": "loglikelihood",
            "doc_to_text": "context", "doc_to_target": "{{' ' + target}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False}],
            "metadata": {"version": 1.0}}


def blimp_task(name: str, data_file: Path) -> dict:
    """No context, no delimiter: each sentence is scored as a whole document after the separator token."""
    return {"task": name, **_data_source(data_file), "output_type": "multiple_choice",
            "doc_to_text": "", "target_delimiter": "", "doc_to_choice": "choices", "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": 1.0}}


def blimp_group(tasks: list[str]) -> dict:
    return {"group": BLIMP_GROUP, "task": tasks,
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": False}],
            "metadata": {"version": 1.0}}


def write_task(out: Path, config: dict, examples: list[dict] | None = None) -> None:
    """``NAME.yaml`` (and its ``NAME.jsonl`` data) in ``out``."""
    name = config["group"] if "group" in config else config["task"]
    if examples is not None:
        with open(out / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
    with open(out / f"{name}.yaml", "w") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)


def write_local_tasks(docs: list[Doc], out: Path, n: int, seed: int) -> dict[str, str]:
    tasks = {}
    for name, make, build, metric, stream in [("heldout_mc", mc_examples, mc_task, "acc_norm", 0),
                                              ("heldout_cloze", cloze_examples, cloze_task, "acc", 1)]:
        examples = make(docs, n, np.random.default_rng([seed, stream]))
        if not examples:
            raise ValueError(f"{name}: no examples could be built from the held-out documents (too short?)")
        if len(examples) < n:
            log.warning("%s: only %d of %d examples could be built from the held-out documents",
                        name, len(examples), n)
        write_task(out, build(name, out / f"{name}.jsonl"), examples)
        tasks[name] = metric
        log.info("%s: %d examples", name, len(examples))
    return tasks


def write_blimp_tasks(blimp_dir: Path | None, out: Path, subtasks: list[str], limit: int | None) -> dict[str, str]:
    if blimp_dir is None or not blimp_dir.is_dir():
        log.info("BLiMP skipped: %s", "no --blimp-dir given" if blimp_dir is None else f"{blimp_dir} does not exist")
        return {}
    sub = out / "blimp"
    sub.mkdir(exist_ok=True)
    tasks = {}
    for path in blimp_files(blimp_dir, subtasks):
        name = f"blimp_{path.stem}"
        write_task(sub, blimp_task(name, sub / f"{name}.jsonl"), blimp_examples(path, limit))
        tasks[name] = "acc"
    write_task(sub, blimp_group(list(tasks)))
    tasks[BLIMP_GROUP] = "acc"
    log.info("BLiMP: %d phenomena x <= %s pairs from %s", len(tasks) - 1, limit or "all", blimp_dir)
    return tasks


def check_hub_tasks(hub_tasks: dict[str, str], task_manager=None) -> None:
    """Every ``evaluate.hub_tasks`` entry names an lm-eval task or group and one of its metrics.

    Offline: lm-eval ships its task YAMLs, so only its index is read (about 10 s), no dataset. Tags (e.g.
    ai2_arc) are refused: a tag reports no metric of its own, list its tasks instead."""
    import difflib

    if not hub_tasks:
        return
    if task_manager is None:
        from lm_eval.tasks import TaskManager

        task_manager = TaskManager()
    index, problems = task_manager.task_index, []
    for name, metric in hub_tasks.items():
        entry = index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, list(index), n=3)
            problems.append(f"evaluate.hub_tasks.{name}: no lm-eval task or group of that name"
                            + (f" (close: {', '.join(close)})" if close else ""))
            continue
        kind = entry.kind.name.lower()
        if kind == "tag":
            members = sorted(n for n, e in index.items() if name in (getattr(e, "tags", None) or ()))
            problems.append(f"evaluate.hub_tasks.{name}: a tag of lm-eval tasks, not a task; list its tasks: "
                            f"{', '.join(members)}")
            continue
        listed = (entry.cfg or {}).get("metric_list" if kind == "task" else "aggregate_metric_list")
        metrics = [m["metric"] for m in listed or []]
        if metrics and metric not in metrics:
            problems.append(f"evaluate.hub_tasks.{name} = {metric!r}: lm-eval's {name} reports {', '.join(metrics)}")
    if problems:
        raise ValueError("; ".join(problems))


def _task_metric(text: str) -> tuple[str, str]:
    if text.count("=") != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected task=metric, e.g. arc_easy=acc_norm")
    task, metric = text.split("=")
    return task, metric


def generate(data_dir: str | Path, out: str | Path, examples: int, seed: int, blimp_dir: str | Path | None,
             blimp_subtasks: list[str], blimp_limit: int | None) -> dict[str, str]:
    """Write every task into ``out`` and ``out/tasks.json``; returns {task or group: primary metric}."""
    out = Path(out)
    docs = read_heldout(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = write_local_tasks(docs, out, examples, seed)
    tasks.update(write_blimp_tasks(Path(blimp_dir) if blimp_dir else None, out, blimp_subtasks, blimp_limit))
    (out / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n")
    return tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pvs.config import validate_config

    defaults = validate_config({})["evaluate"]
    parser = doc_parser("python -m pvs.evaluate.tasks", __doc__)
    parser.add_argument("--data", help="prepared data directory holding heldout_docs.jsonl (required unless "
                                       "--check-only)")
    parser.add_argument("--out", help="directory to write the task YAMLs, jsonl data and tasks.json (required "
                                      "unless --check-only)")
    parser.add_argument("--hub-tasks", nargs="*", type=_task_metric, default=[], metavar="TASK=METRIC",
                        help="lm-eval registry tasks and their metrics to check (evaluate.hub_tasks)")
    parser.add_argument("--config", help="study config (YAML): --hub-tasks default to its evaluate.hub_tasks")
    parser.add_argument("--check-only", action="store_true", help="only check --hub-tasks; write nothing")
    parser.add_argument("--examples", type=int, default=defaults["local_task_examples"],
                        help="examples per generated local task (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the example sampling (default: %(default)s)")
    parser.add_argument("--blimp-dir", help="directory of BLiMP phenomenon jsonl files; absent or missing = no BLiMP")
    parser.add_argument("--blimp-subtasks", nargs="*", default=defaults["blimp_subtasks"],
                        help="BLiMP phenomena (file stems) to use; give the flag with no names for all "
                             "(default: %(default)s)")
    parser.add_argument("--blimp-limit", type=lambda s: None if s in ("null", "None", "all") else int(s),
                        default=defaults["blimp_limit"],
                        help="minimal pairs per phenomenon, 'all' for every pair (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.config and not args.hub_tasks:
        from pvs.config import ConfigError, load_config

        try:
            args.hub_tasks = list(load_config(args.config)["evaluate"]["hub_tasks"].items())
        except ConfigError as e:
            parser.error(str(e))
    if not args.check_only and not (args.data and args.out):
        parser.error("--data and --out are required (unless --check-only)")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[evaltasks] %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        check_hub_tasks(dict(args.hub_tasks))
        if args.hub_tasks:
            log.info("hub tasks found in lm-eval's registry with their metrics: %s",
                     ", ".join(f"{t}={m}" for t, m in args.hub_tasks))
        if args.check_only:
            return 0
        tasks = generate(args.data, args.out, args.examples, args.seed, args.blimp_dir, args.blimp_subtasks,
                         args.blimp_limit)
    except (FileNotFoundError, ValueError) as e:
        print(f"pvs.evaluate.tasks: error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %d tasks to %s", len(tasks), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
