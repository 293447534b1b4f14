"""Report stage: every model's evaluation JSON -> summary, tables, figures and the findings file.

    python -m pvs.report --config config.yaml --evals results/eval/parent.json results/eval/... --out results
    python -m pvs.report --config config.yaml --evals-dir results/eval --out results

Writes under --out (REPORT_FILES lists them):
  summary.csv                    one row per evaluated model (every seed), all metrics and compute columns
  tables/main.csv, .md, .tex     the paper's table: per method and ratio, S_N | P-R_N | S_{P+N} | S_F, each
                                 with val loss, perplexities, every lm-eval task, average, FLOPs and tokens
  tables/setting1.md, .csv       S_N vs P-R_N at the main budget (Δs, one-shot loss); setting1_scaling.csv
  tables/setting2.md, .csv       S_{P+N} vs P-R_N and the winner; tables/setting3.md, .csv: S_F vs P-R_N
  figures/*.png + .pdf           loss_vs_tokens (Figure 1 left), setting2 (Figure 1 right), gap_vs_ratio,
                                 heatmap_setting1/2/3
  findings.md                    the regime table at the top (pvs.regime: this config beside the paper), then
                                 F0 (is the parent below every scratch run at P tokens, from the learning
                                 curves the evaluations embed) and each finding of the paper with this run's
                                 numbers and a verdict

Tables follow the config's grid (methods x ratios x budgets): a grid point without a run is "–" in
markdown and an empty cell in CSV. Runs with several seeds show mean ± std; every Δ shows mean ± SE (n),
paired by seed (pvs.report.uncertainty states the verdict rule). Sign convention:
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

from pvs import compute, regime
from pvs.report import figures, findings, paper_table, tables
from pvs.report.parent_check import Check, Curve
from pvs.budget import format_tokens, parse_tokens
from pvs.cli import doc_parser
from pvs.config import ConfigError, load_config
from pvs.study import ARM_ORDER, ARMS, REPORT_FILES, Grid
from pvs.report.tables import ACC, COMPUTE, LOSS, RUN_KEYS

log = logging.getLogger("pvs.report")

INT_COLUMNS = ["budget", "train_tokens", "seed", "params_total", "params_non_embedding",
               "params_embedding_and_head", "flops_params", "pipeline_tokens"]


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
    if ARMS[model["arm"]].child and _tokens(model, "budget", path) is None:
        raise EvalFormatError(f"{path}: model.budget is required for arm {model['arm']!r}")
    if _tokens(model, "train_tokens", path) is None:
        raise EvalFormatError(f"{path}: model.train_tokens is required")
    curve = ev.get("curve")
    pair = lambda p: isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) for x in p)  # noqa: E731
    if curve is not None and not (isinstance(curve, list) and all(map(pair, curve))):
        raise EvalFormatError(f"{path}: curve must be a list of [tokens, val_loss] pairs")


def _peak_lr(ev: dict) -> float | None:
    """The peak LR the model trained with: the trainer's record (train_meta.json ``lr``, or its recipe's for
    records written before the LR sweep); None for a model that did not train (one-shot, imported parent)."""
    train = (ev.get("model_meta") or {}).get("train") or {}
    lr = train.get("lr", (train.get("recipe") or {}).get("lr"))
    return None if lr is None else float(lr)


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
              "train_tokens": train_tokens, "seed": model.get("seed"), "lr": _peak_lr(ev),
              "params_total": params.get("total"), "params_non_embedding": params.get("non_embedding"),
              "params_embedding_and_head": params.get("embedding_and_head")}
    record.update(ev["metrics"])
    record["_metrics"] = list(ev["metrics"])
    record["_shape"], record["_prune"] = ev.get("shape"), (ev.get("model_meta") or {}).get("prune")
    record["_curve"] = ev.get("curve")           # the learning curve [[tokens, val_loss], ...] (F0)
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


# ---------------------------------------------------------------- compute accounting (pvs.compute)

def compute_columns(record: dict, parent_tokens: int) -> dict:
    """FLOPs parameters, this run's training FLOPs, and its whole pipeline's tokens and FLOPs.

    Pipelines: parent = its pretraining; one-shot and P-R_N = parent + pruning (+ retraining N);
    the scratch arms = their own training only. NaN where the evaluation lacks shape or parameter counts.
    """
    nan = {c: float("nan") for c in COMPUTE}
    shape, prune, tokens = record["_shape"], record["_prune"], record["train_tokens"]
    if not shape or record["params_non_embedding"] is None or tokens is None:
        return nan
    n = compute.flops_params(shape, record["params_non_embedding"])
    own = compute.train_flops(n, tokens)
    if record["arm"] in ("pruned", "retrain"):
        if not prune or not {"shape", "params", "calibration"} <= prune.keys():
            return {**nan, "flops_params": n, "train_flops": own}
        pipe = compute.pipeline(prune, parent_tokens, record["budget"] or 0)
        return {"flops_params": n, "train_flops": own, "pipeline_tokens": pipe["tokens"], "pipeline_flops": pipe["flops"]}
    return {"flops_params": n, "train_flops": own, "pipeline_tokens": tokens, "pipeline_flops": own}


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
    base = ["study", "arm", "label", "method", "ratio", "achieved_ratio", "budget", "train_tokens", "seed", "lr",
            "params_total", "params_non_embedding", "params_embedding_and_head"]
    tail = COMPUTE + ["seconds", "torch_version", "transformers_version", "model_path", "eval_file"]
    columns = base + _metric_columns(records) + tail
    df = pd.DataFrame.from_records(records, columns=columns)
    for col in INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ("ratio", "achieved_ratio", "lr", LOSS, ACC):
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


def _write_tables(paths: dict, summary, runs, grid, parent, t: dict, labels: dict) -> None:
    write_csv(summary, paths["summary"])
    main = paper_table.paper_frame(runs, grid)
    write_csv(main, paths["main_csv"])
    atomic_write_text(paths["main_md"], paper_table.to_markdown(main, runs, grid))
    atomic_write_text(paths["main_tex"], paper_table.to_latex(main, runs, grid))
    for name in ("setting1", "setting2", "setting3"):
        write_csv(t[name], paths[f"{name}_csv"])
    write_csv(t["scaling"], paths["scaling_csv"])
    atomic_write_text(paths["setting1_md"], tables.setting1_markdown(t["setting1"], t["scaling"], grid, parent))
    atomic_write_text(paths["setting2_md"], tables.setting2_markdown(t["setting2"], grid, parent, labels))
    atomic_write_text(paths["setting3_md"], tables.setting3_markdown(t["setting3"], grid, parent, labels))


def _draw_figures(paths: dict, runs, grid, parent, t: dict, labels: dict, dpi: int) -> None:
    parent_loss = tables.metric(parent, LOSS)
    figures.plot_loss_vs_tokens(runs, list(grid.curve_methods), grid.scaling_ratio, list(grid.scaling), parent_loss,
                                paths["loss_vs_tokens"], dpi, gaps=t["scaling"])
    figures.plot_setting2(t["setting2"], labels, parent_loss, paths["setting2_fig"], dpi)
    figures.plot_gap_vs_ratio(t["setting1"], paths["gap_vs_ratio"], dpi)
    titles = {"setting1": f"Setting 1: Δ loss = S_N − P-R_N, N = {labels['N']} \n(> 0: pruning wins)",
              "setting2": f"Setting 2: Δ loss = {labels['scratch_total']} − {labels['retrain']} \n(> 0: pruning wins)",
              "setting3": f"Setting 3: Δ loss = S_F − {labels['retrain']}, equal FLOPs\n(> 0: pruning wins)"}
    for name, title in titles.items():
        figures.plot_gap_heatmap(t[name], title, paths[f"heatmap_{name}"], dpi)


def build_report(cfg: dict, records: list[dict], out_dir: str | os.PathLike, dpi: int | None = None) -> dict[str, Path]:
    """Write the summary, every table, figure and the findings under ``out_dir``; return the paths."""
    grid, out = Grid.from_config(cfg), Path(out_dir)
    dpi = dpi or cfg["report"]["dpi"]
    for record in records:
        record.update(compute_columns(record, grid.parent_tokens))
    summary = select_study(summary_frame(records), grid.study)
    log.info("%d evaluation(s) of study %r", len(summary), grid.study)
    runs = tables.mean_over_seeds(summary)
    tables.note_outside_grid(runs, grid)
    parent = tables.parent_run(runs, grid)
    t = {"setting1": tables.setting1_table(runs, grid, summary), "scaling": tables.scaling_table(runs, grid, summary),
         "setting2": tables.setting2_table(runs, grid, summary), "setting3": tables.setting3_table(runs, grid, summary)}
    tables.note_missing("setting1", t["setting1"], ["pruned_loss", "retrain_loss", "scratch_loss"])
    tables.note_missing("scaling", t["scaling"], ["retrain_loss", "scratch_loss"])
    tables.note_missing("setting2", t["setting2"], ["retrain_loss", "scratch_total_loss"])
    tables.note_missing("setting3", t["setting3"], ["retrain_loss", "scratch_flops_loss"])
    labels = {"N": format_tokens(grid.main), **{arm: grid.label(arm) for arm in ("retrain", "scratch_total",
                                                                                  "scratch_flops")}}
    paths = {name: out / rel for name, rel in REPORT_FILES.items()}
    _write_tables(paths, summary, runs, grid, parent, t, labels)
    _draw_figures(paths, runs, grid, parent, t, labels, dpi)
    curves = [c for c in (Curve.of(r) for r in records if r["study"] == grid.study) if c is not None]
    check = Check.of(curves, grid.parent_tokens, tables.metric(parent, LOSS) if parent is not None else None)
    items = findings.findings(t["setting1"], t["scaling"], t["setting2"], t["setting3"], grid, runs, parent,
                              cfg["report"]["match_tolerance"], check)
    atomic_write_text(paths["findings"], regime.with_regime(findings.findings_markdown(items, grid), cfg))
    return paths


# ---------------------------------------------------------------- CLI

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.report", __doc__)
    parser.add_argument("--config", required=True, help="study config (YAML): the grid the tables follow")
    parser.add_argument("--evals", nargs="+", default=[], metavar="JSON",
                        help="evaluation JSON files (python -m pvs.evaluate), one per model")
    parser.add_argument("--evals-dir", metavar="DIR",
                        help="also read every **/*.json under DIR (files that are not evaluations are skipped)")
    parser.add_argument("--out", required=True, metavar="RESULTS_DIR", help="directory for summary.csv, tables/, figures/")
    parser.add_argument("--dpi", type=int, help="resolution of the PNG figures (default: the config's report.dpi)")
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
