"""Report stage: every model's evaluation JSON -> a summary, the two settings' tables and the figures.

    python -m pvs.report --config config.yaml --evals results/eval/parent.json results/eval/... --out results
    python -m pvs.report --config config.yaml --evals-dir results/eval --out results

Writes under --out:
  summary.csv                   one row per evaluated model (every seed), all metrics, coarse -> fine
  tables/setting1.md, .csv      S_N vs P-R_N at the main budget for every method and ratio, + one-shot loss
  tables/setting1_scaling.csv   the token-scaling curve at the scaling ratio (method x budget; also in .md)
  tables/setting2.md, .csv      S_{P+N} vs P-R_N at the setting-2 ratios, and which wins
  figures/loss_vs_tokens.png, figures/setting2.png

Tables follow the config's grid (methods x ratios x budgets): a grid point without a run is "–" in
markdown and an empty cell in CSV. Runs with several seeds are averaged (mean). Sign convention:
Δ loss = S − P-R and Δ acc = P-R − S, so a positive Δ means pruning wins. Every file is written to a
temp file and renamed: an interrupted run never leaves half a file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from pvs import figures, tables
from pvs.budget import format_tokens, parse_tokens
from pvs.config import ConfigError, load_config
from pvs.tables import ACC, ARM_ORDER, LOSS, RUN_KEYS

log = logging.getLogger("pvs.report")

INT_COLUMNS = ["budget", "train_tokens", "seed", "params_total", "params_non_embedding",
               "params_embedding_and_head"]


class EvalFormatError(ValueError):
    """An evaluation JSON lacks what the report needs; the message names the file and the key."""


# ---------------------------------------------------------------- reading evaluation JSONs

def _tokens(model: dict, key: str, path) -> int | None:
    """A token count of the 'model' object: an int, or a string such as '300k' (None stays None)."""
    raw = model.get(key)
    if raw is None:
        return None
    try:
        return parse_tokens(raw) if not isinstance(raw, int) or isinstance(raw, bool) else raw
    except ValueError as e:
        raise EvalFormatError(f"{path}: model.{key} = {raw!r}: {e}") from e


def _check_eval(ev, path) -> None:
    if not isinstance(ev, dict) or not isinstance(ev.get("model"), dict) or not isinstance(ev.get("metrics"), dict):
        raise EvalFormatError(f"{path}: not an evaluation file (needs 'model' and 'metrics' objects)")
    model = ev["model"]
    if model.get("arm") not in ARM_ORDER:
        raise EvalFormatError(f"{path}: model.arm = {model.get('arm')!r}, expected one of {ARM_ORDER}")
    if not isinstance(ev["metrics"].get(LOSS), (int, float)):
        raise EvalFormatError(f"{path}: metrics.{LOSS} is missing or not a number")
    if model["arm"] != "parent" and (model.get("method") is None or model.get("ratio") is None):
        raise EvalFormatError(f"{path}: model.method and model.ratio are required for arm {model['arm']!r}")
    if model["arm"] in ("retrain", "scratch", "scratch_total") and _tokens(model, "budget", path) is None:
        raise EvalFormatError(f"{path}: model.budget is required for arm {model['arm']!r}")
    if _tokens(model, "train_tokens", path) is None:
        raise EvalFormatError(f"{path}: model.train_tokens is required")


def read_eval(path: str | os.PathLike) -> dict:
    """One evaluation JSON as a flat record: identity, parameter counts, every metric, versions."""
    try:
        ev = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise EvalFormatError(f"{path}: not valid JSON ({e})") from e
    _check_eval(ev, path)
    model, params = ev["model"], ev.get("params") or {}
    prune = (ev.get("model_meta") or {}).get("prune") or {}
    versions = ev.get("versions") or {}
    budget, train_tokens = _tokens(model, "budget", path), _tokens(model, "train_tokens", path)
    record = {"study": ev.get("study"), "arm": model["arm"],
              "label": tables.run_label(model["arm"], budget, train_tokens),
              "method": model.get("method"), "ratio": tables.as_ratio(model.get("ratio")),
              "achieved_ratio": prune.get("achieved_ratio"), "budget": budget,
              "train_tokens": train_tokens, "seed": model.get("seed"),
              "params_total": params.get("total"), "params_non_embedding": params.get("non_embedding"),
              "params_embedding_and_head": params.get("embedding_and_head")}
    record.update(ev["metrics"])
    record["_metrics"] = list(ev["metrics"])
    record.update({"seconds": ev.get("seconds"), "torch_version": versions.get("torch"),
                   "transformers_version": versions.get("transformers"), "model_path": model.get("path"),
                   "eval_file": str(path)})
    return record


def find_evals(directory: str | os.PathLike) -> list[Path]:
    return sorted(p for p in Path(directory).glob("**/*.json") if p.is_file())


def load_records(paths, skip_foreign: bool = False) -> list[dict]:
    """Read every path once; with ``skip_foreign`` a JSON that is not an evaluation is skipped with a note."""
    records, seen, skipped = [], set(), []
    for path in paths:
        if Path(path).resolve() in seen:
            continue
        seen.add(Path(path).resolve())
        try:
            records.append(read_eval(path))
        except EvalFormatError as e:
            if not skip_foreign:
                raise
            skipped.append(str(e))
    if skipped:
        log.info("skipped %d JSON file(s) that are not evaluations, e.g. %s", len(skipped), skipped[0])
    return records


# ---------------------------------------------------------------- the summary (one row per model)

def _metric_columns(records: list[dict]) -> list[str]:
    """Every metric seen (val loss and avg acc always, so tables work even when lm-eval was off)."""
    names = {LOSS, ACC} | {k for r in records for k in r["_metrics"]}
    rank = {LOSS: (0, ""), "val_ppl": (1, ""), ACC: (3, "")}
    return sorted(names, key=lambda k: rank.get(k, (2 if k.startswith("ppl/") else 4, k)))


def _sort_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Parent first, then methods coarse -> fine, ratio, arm (ARM_ORDER), budget, seed."""
    rank = {m: i for i, m in enumerate(tables.order_methods(df.method.dropna().unique()))}
    keyed = df.assign(_m=df.method.map(rank).fillna(-1), _a=df.arm.map({a: i for i, a in enumerate(ARM_ORDER)}))
    keys = ["_m", "ratio", "_a", "budget", "train_tokens", "seed"]
    return keyed.sort_values(keys, na_position="first", kind="stable").drop(columns=["_m", "_a"])


def summary_frame(records: list[dict]) -> pd.DataFrame:
    """Every evaluated model as one row, sorted; a repeated model (same run and seed) keeps the last file."""
    base = ["study", "arm", "label", "method", "ratio", "achieved_ratio", "budget", "train_tokens", "seed",
            "params_total", "params_non_embedding", "params_embedding_and_head"]
    tail = ["seconds", "torch_version", "transformers_version", "model_path", "eval_file"]
    columns = base + _metric_columns(records) + tail
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ("ratio", "achieved_ratio", LOSS, ACC):
        df[col] = df[col].astype("float64")
    dup = df.duplicated(["study"] + RUN_KEYS + ["seed"], keep="last")
    for row in df[dup].itertuples():
        log.warning("duplicate evaluation of %s %s r=%s seed %s: %s ignored", row.label, row.method,
                    row.ratio, row.seed, row.eval_file)
    return _sort_runs(df[~dup]).reset_index(drop=True)


def select_study(summary: pd.DataFrame, study: str) -> pd.DataFrame:
    other = summary.study != study
    if other.any():
        log.warning("ignored %d evaluation(s) of other studies %s (config study: %r)", int(other.sum()),
                    sorted(summary.study[other].dropna().unique()), study)
    return summary[~other].reset_index(drop=True)


# ---------------------------------------------------------------- writing

def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temp file next to ``path``, then rename: readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    atomic_write_text(path, df.to_csv(index=False))


def build_report(cfg: dict, records: list[dict], out_dir: str | os.PathLike, dpi: int = 150) -> dict[str, Path]:
    """Write the summary, every table and figure under ``out_dir`` from eval records; return the paths."""
    grid, out = tables.Grid.from_config(cfg), Path(out_dir)
    summary = select_study(summary_frame(records), grid.study)
    log.info("%d evaluation(s) of study %r", len(summary), grid.study)
    runs = tables.mean_over_seeds(summary)
    tables.note_outside_grid(runs, grid)
    parent = tables.parent_run(runs, grid)
    s1, scaling = tables.setting1_table(runs, grid), tables.scaling_table(runs, grid)
    s2 = tables.setting2_table(runs, grid)
    tables.note_missing("setting1", s1, ["pruned_loss", "retrain_loss", "scratch_loss"])
    tables.note_missing("scaling", scaling, ["retrain_loss", "scratch_loss"])
    tables.note_missing("setting2", s2, ["retrain_loss", "scratch_total_loss"])
    labels = {"retrain": f"P-R_{format_tokens(grid.main)}",
              "scratch_total": f"S_{format_tokens(grid.parent_tokens + grid.main)}"}
    paths = {name: out / rel for name, rel in [
        ("summary", "summary.csv"), ("setting1_csv", "tables/setting1.csv"),
        ("scaling_csv", "tables/setting1_scaling.csv"), ("setting1_md", "tables/setting1.md"),
        ("setting2_csv", "tables/setting2.csv"), ("setting2_md", "tables/setting2.md"),
        ("loss_vs_tokens", "figures/loss_vs_tokens.png"), ("setting2_fig", "figures/setting2.png")]}
    write_csv(summary, paths["summary"])
    write_csv(s1, paths["setting1_csv"])
    write_csv(scaling, paths["scaling_csv"])
    write_csv(s2, paths["setting2_csv"])
    atomic_write_text(paths["setting1_md"], tables.setting1_markdown(s1, scaling, grid, parent))
    atomic_write_text(paths["setting2_md"], tables.setting2_markdown(s2, grid, parent, labels))
    parent_loss = tables.metric(parent, LOSS)
    figures.plot_loss_vs_tokens(runs, list(grid.methods), grid.scaling_ratio, list(grid.scaling), parent_loss,
                                paths["loss_vs_tokens"], dpi)
    figures.plot_setting2(s2, labels, parent_loss, paths["setting2_fig"], dpi)
    return paths


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    paragraphs = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m pvs.report", description=paragraphs[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(paragraphs[1:]))
    parser.add_argument("--config", required=True, help="study config (YAML): the grid the tables follow")
    parser.add_argument("--evals", nargs="+", default=[], metavar="JSON",
                        help="evaluation JSON files (python -m pvs.evaluate), one per model")
    parser.add_argument("--evals-dir", metavar="DIR",
                        help="also read every **/*.json under DIR (files that are not evaluations are skipped)")
    parser.add_argument("--out", required=True, metavar="RESULTS_DIR", help="directory for summary.csv, tables/, figures/")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the PNG figures (default: 150)")
    args = parser.parse_args(argv)
    if not args.evals and not args.evals_dir:
        parser.error("give --evals and/or --evals-dir")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pvs").setLevel(logging.INFO)
    explicit = [Path(p) for p in args.evals]
    known = {p.resolve() for p in explicit}
    found = [p for p in find_evals(args.evals_dir) if p.resolve() not in known] if args.evals_dir else []
    try:
        cfg = load_config(args.config)
        records = load_records(explicit) + load_records(found, skip_foreign=True)
        paths = build_report(cfg, records, args.out, args.dpi)
    except (ConfigError, EvalFormatError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
