"""Score one model: validation loss and per-source perplexity on val.bin, then lm-eval on the local tasks.

    python -m pvs.evaluate --model results/models/retrain/sparsegpt/r0.5/N300k --data results/data \\
        --tasks results/data/lmeval_tasks --out results/eval/retrain/sparsegpt/r0.5/N300k.json \\
        --meta arm=retrain method=sparsegpt ratio=0.5 budget=300k train_tokens=300000 seed=0

Metrics (OUT.json "metrics", one flat name -> float each):
  val_loss        mean next-token NLL (nats) over --val-windows windows of train.seq_len tokens spread evenly
                  over val.bin (pvs.data.tokens.spread_windows; the same windows for every model)
  val_ppl         exp(val_loss)
  ppl/<source>    exp(mean NLL of the tokens of those windows whose target lies in the source's range of
                  manifest["val_sources"]); a source no window reaches gets one window of its own
  lmeval/<task>   the task's primary metric from TASK_DIR/tasks.json, as a fraction (BLiMP phenomena and
                  the group "blimp", the unweighted mean acc over the phenomena, included)
  lmeval/avg      unweighted mean over the top-level entries: every task that is not a BLiMP phenomenon
                  (heldout_mc acc_norm, heldout_cloze acc) plus the BLiMP group aggregate counted once
                  (and the hub tasks of evaluate.hub_tasks, when configured)
  ppl/<name>      for each dataset of evaluate.perplexity_datasets (WikiText, C4, ... at scale): exp(mean NLL)
                  over the non-overlapping windows of --eval-sets/NAME.bin (its documents joined by the
                  separator, evaluate.perplexity_max_tokens tokens, fetched once by python -m pvs.evaluate.sets)

OUT.json "curve": the model's learning curve, [[tokens, val_loss], ...] from the records of its training run's
metrics.jsonl that carry a val_loss (the trainer's validation windows, every train.eval_every_tokens); null for
a model without one (the one-shot pruned child). The report's F0 reads it (pvs.report.parent_check).

lm-eval (0.4.13, Python API, zero-shot, offline): the loaded model is wrapped in HFLM with
prefix_token_id = the document separator the model was trained with (<|endoftext|>, manifest["eos_id"]).
HFLM's own default would be the tokenizer's BOS, and it only prefixes empty contexts (BLiMP); here every
request is conditioned on the separator, the analogue of the BOS that Llama-3 tokenizers put before
each lm-eval context in the paper's evaluation. Tokenizer special tokens are never added.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # before transformers / datasets / lm-eval are imported:
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")     # evaluation reads files and the HF cache (pvs.evaluate.sets fills it)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pvs.cli import doc_parser
from pvs.config import ConfigError, load_config, validate_config  # noqa: E402
from pvs.evaluate.sets import read_perplexity_set  # noqa: E402
from pvs.evaluate.tasks import check_hub_tasks  # noqa: E402
from pvs.modeling import (count_params, load_masks, load_model, load_tokenizer, pick_device,  # noqa: E402
                          shape_of, write_json)
from pvs.data.tokens import load_split, read_manifest, spread_windows  # noqa: E402
from pvs.versions import library_versions  # noqa: E402

log = logging.getLogger("pvs.evaluate")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


# ------------------------------------------------------------------------------------------ inputs
def _require(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} is missing")


def check_inputs(model_dir: Path, data_dir: Path, task_dir: Path | None) -> None:
    """Fail early, naming the first missing file of the model, data and task directories."""
    _require(model_dir / "config.json", "model config")
    if not any((model_dir / name).exists() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"model weights {model_dir / WEIGHT_FILES[0]} are missing")
    _require(data_dir / "manifest.json", "data manifest")
    load_split(data_dir, "val")                  # names the missing token file (val.bin, or a shard)
    if task_dir is not None:
        _require(task_dir / "tasks.json", "task list (python -m pvs.evaluate.tasks)")


def tokenizer_dir(model_dir: Path, data_dir: Path) -> Path:
    """The model's own tokenizer, else the data directory's (the one every model was trained with)."""
    if any((model_dir / name).exists() for name in TOKENIZER_FILES):
        return model_dir
    _require(data_dir / "tokenizer" / "tokenizer_config.json", "tokenizer")
    return data_dir / "tokenizer"


def parse_meta(items: list[str]) -> dict:
    """``key=value`` pairs; integers and floats become numbers, 'null' / 'None' becomes None."""
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or key == "path":
            raise ValueError(f"--meta {item!r}: expected key=value with a key other than 'path'")
        meta[key] = _parse_value(value)
    return meta


def _parse_value(value: str):
    if value in ("null", "None"):
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def read_json_or_none(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def learning_curve(model_dir: Path) -> list[list[float]] | None:
    """[[tokens, val_loss], ...] from MODEL/metrics.jsonl (records with both keys, in file order); None without it."""
    path = Path(model_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [[int(r["tokens"]), float(r["val_loss"])] for r in records if "tokens" in r and "val_loss" in r]


# -------------------------------------------------------------------------------------- validation
@torch.inference_mode()
def token_nll(model, windows: np.ndarray, batch_size: int, device: torch.device, desc: str = "val") -> torch.Tensor:
    """Next-token NLL (nats) of every position but the first, (windows, seq_len - 1), float32 on CPU."""
    out = []
    for i in tqdm(range(0, len(windows), batch_size), desc=desc, file=sys.stderr, mininterval=2, leave=False):
        x = torch.from_numpy(windows[i:i + batch_size]).to(device)
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="none")
        out.append(nll.view(len(x), -1).cpu())
    return torch.cat(out)


def validation(model, data_dir: Path, seq_len: int, count: int | None, batch_size: int,
               device: torch.device) -> tuple[dict, dict]:
    """val_loss, val_ppl and ppl/<source> (metrics) plus the token accounting behind them (detail)."""
    val = load_split(data_dir, "val")
    positions = spread_windows(np.arange(len(val), dtype=np.int64), seq_len, count)
    nll = token_nll(model, np.asarray(val[positions], dtype=np.int64), batch_size, device)
    targets = torch.from_numpy(positions[:, 1:])
    loss = nll.mean().item()
    metrics = {"val_loss": loss, "val_ppl": math.exp(loss)}
    detail = {"windows": len(positions), "seq_len": seq_len, "tokens": nll.numel(), "sources": {}}
    covered = torch.zeros_like(targets, dtype=torch.bool)
    for source, (a, b) in read_manifest(data_dir).get("val_sources", {}).items():
        inside = (targets >= a) & (targets < b)
        covered |= inside
        source_nll = nll[inside] if inside.any() else _own_window(model, val, a, b, seq_len, device)
        if source_nll is None:
            log.warning("source %s: range [%d, %d) is too short to score", source, a, b)
            continue
        metrics[f"ppl/{source}"] = math.exp(source_nll.mean().item())
        detail["sources"][source] = {"range": [a, b], "tokens": source_nll.numel(),
                                     "loss": source_nll.mean().item(), "own_window": not bool(inside.any())}
    detail["uncovered_tokens"] = int((~covered).sum())
    if detail["sources"] and detail["uncovered_tokens"]:
        log.warning("%d scored tokens lie in no val_sources range", detail["uncovered_tokens"])
    return metrics, detail


def tokens_perplexity(model, tokens: np.ndarray, seq_len: int, batch_size: int, device: torch.device,
                      name: str) -> tuple[float, int]:
    """exp(mean NLL) over the non-overlapping windows of ``seq_len`` that ``tokens`` holds; and the tokens scored."""
    count = len(tokens) // seq_len
    if count == 0:
        raise ValueError(f"perplexity set {name!r}: {len(tokens)} tokens, fewer than one window of {seq_len}")
    nll = token_nll(model, tokens[:count * seq_len].reshape(count, seq_len), batch_size, device, desc=name)
    return math.exp(nll.mean().item()), nll.numel()


def _own_window(model, val: np.ndarray, a: int, b: int, seq_len: int, device: torch.device) -> torch.Tensor | None:
    """NLL of one window at the start of [a, b), for a source too small for the spread windows to reach."""
    length = min(seq_len, b - a)
    if length < 2:
        return None
    window = np.asarray(val[a:a + length], dtype=np.int64)[None]
    return token_nll(model, window, 1, device, desc="val (small source)").flatten()


# ------------------------------------------------------------------------------------------ lm-eval
def separator_lm(model, tokenizer, batch_size: int, separator_id: int):
    """An lm-eval HFLM over the loaded model whose every scored request starts with ``separator_id``."""
    from lm_eval.models.huggingface import HFLM

    class SeparatorHFLM(HFLM):
        """Empty contexts already get prefix_token_id (HFLM.loglikelihood); this adds it to non-empty ones."""

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            context_enc, continuation_enc = super()._encode_pair(context, continuation)
            return [self.prefix_token_id] + context_enc, continuation_enc

    return SeparatorHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                         prefix_token_id=separator_id, add_bos_token=False)


def top_level_tasks(task_manager, primary: dict[str, str], task_dir: Path) -> list[str]:
    """Names to hand to lm-eval: groups and the tasks that are in no listed group."""
    missing = [name for name in primary if name not in task_manager.all_tasks]
    if missing:
        raise FileNotFoundError(f"tasks {missing} are neither in {task_dir / 'tasks.json'} (with a YAML under "
                                f"{task_dir}) nor lm-eval registry tasks (evaluate.hub_tasks)")
    members = {t for g in primary if g in task_manager.all_groups for t in task_manager.task_index[g].cfg["task"]}
    return [name for name in primary if name not in members]


def _numbers(entry: dict) -> dict:
    """lm-eval's ``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.5}``."""
    out = {}
    for key, value in entry.items():
        metric = key.split(",")[0]
        if isinstance(value, (int, float)) and not metric.endswith("_stderr") and metric != "sample_len":
            out[metric] = float(value)
    return out


class _DropNotes(logging.Filter):
    """Hide lm-eval's notes that passing a loaded model (as intended here) ignores some of its arguments."""

    NOTES = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOTES)


def quiet_lm_eval() -> None:
    """lm-eval logs warnings only (its INFO lines repeat every task), without the two notes above."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").addFilter(_DropNotes())


def run_lmeval(model, tokenizer, task_dir: Path, batch_size: int, limit: int | None,
               separator_id: int, hub_tasks: dict[str, str] | None = None) -> tuple[dict, dict]:
    """lmeval/<task> and lmeval/avg (metrics) plus every number lm-eval reported per task (detail).

    The tasks are the local ones of ``task_dir/tasks.json`` plus ``hub_tasks`` ({lm-eval task name: metric},
    zero-shot; their datasets come from the hub, so they need network or a filled HF cache)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    quiet_lm_eval()
    primary = {**json.loads((task_dir / "tasks.json").read_text()), **(hub_tasks or {})}
    task_manager = TaskManager(include_path=str(task_dir), include_defaults=bool(hub_tasks))
    check_hub_tasks(hub_tasks or {}, task_manager)
    top = top_level_tasks(task_manager, primary, task_dir)
    lm = separator_lm(model, tokenizer, batch_size, separator_id)
    results = simple_evaluate(model=lm, tasks=top, task_manager=task_manager, limit=limit, bootstrap_iters=0,
                              log_samples=False, num_fewshot=0)
    reported = {**results.get("results", {}), **results.get("groups", {})}
    counts = results.get("n-samples", {})
    detail = {}
    for name in primary:
        detail[name] = _numbers(reported.get(name, {}))
        if name in counts:
            detail[name]["n_samples"] = int(counts[name]["effective"])
    metrics = {}
    for name, metric in primary.items():
        if metric not in detail[name]:
            raise KeyError(f"lm-eval reported no {metric!r} for {name} (got {sorted(detail[name])})")
        metrics[f"lmeval/{name}"] = detail[name][metric]
    metrics["lmeval/avg"] = float(np.mean([metrics[f"lmeval/{name}"] for name in top]))
    return metrics, detail


# ---------------------------------------------------------------------------------------------- main
def evaluate(args: argparse.Namespace, cfg: dict) -> dict:
    t0 = time.time()
    model_dir, data_dir = Path(args.model), Path(args.data)
    run_lm = cfg["evaluate"]["lmeval"] and not args.no_lmeval
    task_dir = Path(args.tasks) if run_lm else None
    check_inputs(model_dir, data_dir, task_dir)
    meta = parse_meta(args.meta)
    torch.set_num_threads(args.threads or cfg["threads_per_job"])
    device = pick_device(args.device or cfg["device"])
    batch_size = args.batch_size or cfg["evaluate"]["batch_size"]
    windows = args.val_windows if args.val_windows is not None else cfg["evaluate"]["val_windows"]
    seq_len = cfg["train"]["seq_len"]

    model = load_model(model_dir, device, getattr(torch, cfg["evaluate"]["dtype"])).eval()
    tokenizer = load_tokenizer(tokenizer_dir(model_dir, data_dir))
    masks = load_masks(model_dir)
    separator_id = read_manifest(data_dir).get("eos_id", tokenizer.eos_token_id)
    metrics, val_detail = validation(model, data_dir, seq_len, windows, batch_size, device)
    log.info("val_loss %.4f (ppl %.2f) on %d windows x %d tokens, %.1fs", metrics["val_loss"],
             metrics["val_ppl"], val_detail["windows"], seq_len, time.time() - t0)
    for name, spec in cfg["evaluate"]["perplexity_datasets"].items():
        if not args.eval_sets:
            raise FileNotFoundError(f"evaluate.perplexity_datasets.{name} is configured but no --eval-sets directory "
                                    f"was given (python -m pvs.evaluate.sets writes it)")
        tokens = read_perplexity_set(args.eval_sets, name)
        metrics[f"ppl/{name}"], scored = tokens_perplexity(model, tokens, seq_len, batch_size, device, name)
        val_detail[f"ppl/{name}"] = {"tokens": scored, **spec}
        log.info("ppl/%s %.2f on %d tokens", name, metrics[f"ppl/{name}"], scored)
    detail = {}
    if run_lm:
        lm_metrics, detail = run_lmeval(model, tokenizer, task_dir, batch_size, args.limit, separator_id,
                                        cfg["evaluate"]["hub_tasks"])
        metrics.update(lm_metrics)
        log.info("lm-eval avg %.4f over %s, %.1fs", lm_metrics["lmeval/avg"], task_dir, time.time() - t0)
    train_meta = read_json_or_none(model_dir / "train_meta.json")
    if meta.get("train_tokens") is None and train_meta and "tokens" in train_meta:
        meta["train_tokens"] = train_meta["tokens"]   # S_F: its budget was computed when it trained
    return {
        "study": cfg["study"],
        "model": {"path": str(model_dir), **meta},
        "params": count_params(model, masks),
        "shape": shape_of(model.config),
        "metrics": metrics,
        "curve": learning_curve(model_dir),
        "lmeval_detail": detail,
        "val_detail": val_detail,
        "settings": {"tasks": str(task_dir) if task_dir else None, "val_windows": windows, "seq_len": seq_len,
                     "batch_size": batch_size, "limit": args.limit, "device": str(device),
                     "threads": torch.get_num_threads(), "separator_id": separator_id},
        "model_meta": {"prune": read_json_or_none(model_dir / "meta.json"),
                       "train": train_meta},
        "versions": library_versions(),
        "seconds": time.time() - t0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.evaluate", __doc__)
    parser.add_argument("--model", required=True, help="HF model directory to score")
    parser.add_argument("--data", required=True, help="prepared data directory (val.bin, manifest.json, tokenizer/)")
    parser.add_argument("--tasks", help="task directory written by python -m pvs.evaluate.tasks "
                                        "(needed unless lm-eval is off)")
    parser.add_argument("--out", required=True, help="results JSON to write (atomically)")
    parser.add_argument("--eval-sets", help="directory written by python -m pvs.evaluate.sets (perplexity sets; needed "
                                            "when evaluate.perplexity_datasets is set)")
    parser.add_argument("--config", help="study config (YAML); defaults of the schema when omitted")
    parser.add_argument("--meta", nargs="*", default=[], metavar="KEY=VALUE",
                        help="facts about the model stored under 'model' (arm, method, ratio, budget, "
                             "train_tokens, seed); numbers are parsed, 'null' is None")
    parser.add_argument("--val-windows", type=int, help="validation windows (default: evaluate.val_windows)")
    parser.add_argument("--batch-size", type=int, help="batch size of both stages (default: evaluate.batch_size)")
    parser.add_argument("--limit", type=int, help="at most this many examples per lm-eval task (for tests)")
    parser.add_argument("--no-lmeval", action="store_true", help="skip lm-eval; only the validation metrics")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    parser.add_argument("--threads", type=int, help="torch threads (default: threads_per_job)")
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[evaluate] %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        cfg = load_config(args.config) if args.config else validate_config({})
    except ConfigError as e:
        print(f"pvs.evaluate: ConfigError: {e}", file=sys.stderr)
        return 2
    if cfg["evaluate"]["lmeval"] and not args.no_lmeval and not args.tasks:
        raise SystemExit("pvs.evaluate: --tasks is required unless lm-eval is off (--no-lmeval)")
    try:
        result = evaluate(args, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"pvs.evaluate: error: {e}", file=sys.stderr)
        return 2
    write_json(args.out, result)
    log.info("wrote %s (%.1fs)", args.out, result["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
