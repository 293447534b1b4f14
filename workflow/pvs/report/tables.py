"""Tables of the report: the study's grid, seed-averaged runs, the setting-1/2 comparisons, markdown.

The grid (methods coarse -> fine x ratios x budgets) comes from the config, so every configured grid point
gets a row even when its run is missing: "–" in markdown, an empty cell in CSV. A run is one RUN_KEYS
identity; several seeds of a run are averaged (mean). Sign convention: Δ loss = S − P-R and
Δ acc = P-R − S, so a positive Δ means pruning wins.

Every Δ carries its uncertainty over seeds (pvs.report.uncertainty): ``delta_<m>`` = mean Δ (paired by seed
where both arms have the same seeds, else the difference of the arms' means), ``delta_<m>_se`` = its
standard error (NaN with one seed), ``delta_<m>_n`` = n, ``delta_paired``. Verdict rule (uncertainty.RULE):
a gap is a win or a loss only when |mean Δ| > 2 SE with n ≥ 2, else "within noise"; with n = 1 it is
counted by sign. ``winner_<m>`` = 'retrain', the rival arm, 'within noise' or 'tie' (n = 1, equal).

The CSV tables keep stable column names (SETTING1_COLUMNS, SCALING_COLUMNS, SETTING2_COLUMNS) and raw
numbers (accuracies as fractions, ``<arm>_n`` = seeds averaged); the markdown tables name the runs as the
paper does (P-R_300k, S_300k, S_1.3M), show accuracies in %, arm cells as mean ± std over seeds and Δ cells
as ``Δ +0.123 ± 0.045 (n=3)`` (± = SE of the mean Δ).
"""
from __future__ import annotations

import logging
import math
import pandas as pd

from pvs.budget import approx_tokens, format_tokens
from pvs.compute import CONVENTION
from pvs.prune.registry import display_name
from pvs.report.uncertainty import LOSE, NOISE, TIE, WIN, Gap, gap, unpaired
from pvs.study import ARM_ORDER, SETTINGS, Grid, as_ratio, order_methods, run_label  # noqa: F401 (re-exported)

log = logging.getLogger("pvs.report.tables")

RUN_KEYS = ["arm", "method", "ratio", "budget", "train_tokens"]   # a run = these; seeds are averaged
LOSS, ACC = "val_loss", "lmeval/avg"
MISSING = "–"
_PAIR = ["retrain_loss", "{0}_loss", "delta_loss", "retrain_acc", "{0}_acc", "delta_acc", "retrain_n", "{0}_n",
         "retrain_loss_std", "{0}_loss_std", "retrain_acc_std", "{0}_acc_std",
         "delta_loss_se", "delta_loss_n", "delta_acc_se", "delta_acc_n", "delta_paired", "winner_loss", "winner_acc"]
COMPUTE = ["flops_params", "train_flops", "pipeline_tokens", "pipeline_flops"]
SETTING1_COLUMNS = (["method", "ratio", "achieved_ratio", "budget", "pruned_loss"]
                    + [c.format("scratch") for c in _PAIR] + ["parent_loss", "parent_acc"])
SCALING_COLUMNS = ["method", "ratio", "budget"] + [c.format("scratch") for c in _PAIR]
SETTING2_COLUMNS = (["method", "ratio", "achieved_ratio", "budget"] + [c.format("scratch_total") for c in _PAIR]
                    + ["parent_loss", "parent_acc"])
SETTING3_COLUMNS = (["method", "ratio", "achieved_ratio", "budget"] + [c.format("scratch_flops") for c in _PAIR]
                    + ["retrain_pipeline_flops", "scratch_flops_train_flops", "scratch_flops_tokens"])


def metric_columns(summary: pd.DataFrame) -> list[str]:
    """The numeric per-model results: metrics (val loss, perplexities, lm-eval) and compute columns."""
    return [c for c in summary.columns if c in (LOSS, ACC, "val_ppl") or c.startswith(("ppl/", "lmeval/"))
            or c in COMPUTE]


def mean_over_seeds(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per run (RUN_KEYS): the mean of every metric over its seeds, ``<metric>_std`` (sample std,
    NaN for one seed) and ``n`` seeds. S_F's tokens differ by run, so its train_tokens is averaged too."""
    df = summary.assign(budget=summary.budget.astype("float64"),
                        train_tokens=summary.train_tokens.astype("float64"))
    keys = [k for k in RUN_KEYS if k != "train_tokens"]
    groups = df.groupby(keys, dropna=False, sort=False)
    values = metric_columns(df) + ["achieved_ratio", "train_tokens"] + (["lr"] if "lr" in df.columns else [])
    means = groups[values].mean()
    stds = groups[metric_columns(df)].std().add_suffix("_std")
    return pd.concat([means, stds], axis=1).assign(n=groups.size()).reset_index()


# ---------------------------------------------------------------- comparisons on the grid

def _pick(runs: pd.DataFrame, arm: str, method: str | None = None, ratio: float | None = None,
          budget: int | None = None) -> pd.Series | None:
    sel = runs.arm == arm
    if method is not None:
        sel &= (runs.method == method) & (runs.ratio == ratio)
    if budget is not None:
        sel &= runs.budget == budget
    rows = runs[sel]
    if len(rows) > 1:
        log.warning("%d runs match %s %s r=%s N=%s; using the first", len(rows), arm, method, ratio, budget)
    return None if rows.empty else rows.iloc[0]


def metric(row: pd.Series | None, col: str) -> float:
    """A number of a run row; NaN when there is no run or no such value."""
    return float("nan") if row is None or col not in row.index or pd.isna(row[col]) else float(row[col])


def parent_run(runs: pd.DataFrame, grid: Grid) -> pd.Series | None:
    """The parent P, preferring the one trained on the config's parent.tokens."""
    preferred = _pick(runs[runs.train_tokens == grid.parent_tokens], "parent")
    return preferred if preferred is not None else _pick(runs, "parent")


def _achieved(runs: pd.DataFrame, method: str, ratio: float) -> float:
    rows = runs[(runs.method == method) & (runs.ratio == ratio) & runs.achieved_ratio.notna()]
    rows = rows.sort_values("arm", key=lambda a: a.map({"pruned": 0}).fillna(1))
    return float("nan") if rows.empty else float(rows.achieved_ratio.iloc[0])


def _seed_values(per_seed: pd.DataFrame, arm: str, method: str, ratio: float, budget: int, col: str) -> pd.Series:
    """One metric of every seed of a run, indexed by seed (the per-model summary, one row per seed)."""
    if col not in per_seed:
        return pd.Series(dtype="float64")
    sel = ((per_seed.arm == arm) & per_seed.method.eq(method).fillna(False) & per_seed.ratio.eq(ratio).fillna(False)
           & per_seed.budget.astype("float64").eq(budget).fillna(False))
    rows = per_seed[sel]
    return pd.Series(rows[col].to_numpy(dtype="float64"), index=pd.Index(rows.seed.astype("float64")))


def _count(row: pd.Series | None) -> int:
    n = metric(row, "n")
    return 0 if pd.isna(n) else int(n)


def _gap(first: pd.Series | None, second: pd.Series | None, col: str, values=None) -> Gap:
    """first − second over seeds: from per-seed ``values`` (two Series; paired when the seeds match) when
    given, else unpaired from the seed-averaged rows (mean, std, n)."""
    if values is not None:
        return gap(*values)
    return unpaired(metric(first, col), metric(first, f"{col}_std"), _count(first),
                    metric(second, col), metric(second, f"{col}_std"), _count(second))


def _winner(g: Gap, rival: str) -> str | None:
    return {WIN: "retrain", LOSE: rival, NOISE: NOISE, TIE: "tie"}.get(g.call())


def compare(runs: pd.DataFrame, method: str, ratio: float, budget: int, rival: str,
            per_seed: pd.DataFrame | None = None) -> dict:
    """P-R_N against ``rival`` at budget N: losses, accs, seed counts, and each Δ with its SE, n and winner.
    ``per_seed`` (one row per model and seed) pairs the seeds; without it the Δs are unpaired."""
    pruned, other = _pick(runs, "retrain", method, ratio, budget), _pick(runs, rival, method, ratio, budget)
    row = {"retrain_loss": metric(pruned, LOSS), f"{rival}_loss": metric(other, LOSS),
           "retrain_acc": metric(pruned, ACC), f"{rival}_acc": metric(other, ACC),
           "retrain_n": metric(pruned, "n"), f"{rival}_n": metric(other, "n")}
    for name, col in (("loss", LOSS), ("acc", ACC)):
        row[f"retrain_{name}_std"] = metric(pruned, f"{col}_std")
        row[f"{rival}_{name}_std"] = metric(other, f"{col}_std")
        # Δ loss = S − P-R, Δ acc = P-R − S: positive means pruning wins
        arms, rows = ((rival, "retrain"), (other, pruned)) if name == "loss" else (("retrain", rival), (pruned, other))
        values = None if per_seed is None else [_seed_values(per_seed, a, method, ratio, budget, col) for a in arms]
        g = _gap(*rows, col, values)
        row.update({f"delta_{name}": g.mean, f"delta_{name}_se": g.se, f"delta_{name}_n": g.n or pd.NA,
                    f"winner_{name}": _winner(g, rival)})
        if name == "loss":
            row["delta_paired"] = g.paired if g.present else pd.NA
    return row


def gap_of(row, name: str = "loss") -> Gap:
    """The Gap of a table row (a Series or an itertuples row; ``name``: 'loss' or 'acc')."""
    values = row if isinstance(row, pd.Series) else row._asdict()
    n, paired = values.get(f"delta_{name}_n"), values.get("delta_paired")
    return Gap(float(values.get(f"delta_{name}")), float(values.get(f"delta_{name}_se", float("nan"))),
               0 if n is None or pd.isna(n) else int(n), False if paired is None or pd.isna(paired) else bool(paired))


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """A table with a fixed set of columns (also when empty); seed counts as integers."""
    df = pd.DataFrame(rows, columns=columns)
    return df.astype({c: "Int64" for c in columns if c.endswith("_n")} | {"delta_paired": "boolean"})


def _parent_columns(parent: pd.Series | None) -> dict:
    return {"parent_loss": metric(parent, LOSS), "parent_acc": metric(parent, ACC)}


def setting1_table(runs: pd.DataFrame, grid: Grid, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """S_N vs P-R_N at the main budget, one row per method and ratio, with the one-shot pruned loss.
    ``per_seed`` (summary.csv: one row per model and seed) pairs the seeds of every Δ (see ``compare``)."""
    rows, parent = [], _parent_columns(parent_run(runs, grid))
    for method in grid.methods:
        for ratio in grid.ratios:
            rows.append({"method": method, "ratio": ratio, "achieved_ratio": _achieved(runs, method, ratio),
                         "budget": grid.main, "pruned_loss": metric(_pick(runs, "pruned", method, ratio), LOSS),
                         **compare(runs, method, ratio, grid.main, "scratch", per_seed), **parent})
    return _frame(rows, SETTING1_COLUMNS)


def scaling_table(runs: pd.DataFrame, grid: Grid, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """The token-scaling curve: S_N vs P-R_N at the scaling ratio, one row per method and budget."""
    rows = [{"method": m, "ratio": grid.scaling_ratio, "budget": n,
             **compare(runs, m, grid.scaling_ratio, n, "scratch", per_seed)}
            for m in grid.curve_methods for n in grid.scaling]
    return _frame(rows, SCALING_COLUMNS)


def setting2_table(runs: pd.DataFrame, grid: Grid, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """S_{P+N} vs P-R_N at the main budget and every setting-2 ratio, with the winner by loss and by acc."""
    rows, parent = [], _parent_columns(parent_run(runs, grid))
    for method in grid.setting_methods(SETTINGS[1]):
        for ratio in grid.setting2_ratios:
            rows.append({"method": method, "ratio": ratio, "achieved_ratio": _achieved(runs, method, ratio),
                         "budget": grid.main, **compare(runs, method, ratio, grid.main, "scratch_total", per_seed),
                         **parent})
    return _frame(rows, SETTING2_COLUMNS)


def setting3_table(runs: pd.DataFrame, grid: Grid, per_seed: pd.DataFrame | None = None) -> pd.DataFrame:
    """S_F (scratch with the P-R_N pipeline's FLOPs) vs P-R_N at the main budget, every setting-3 ratio."""
    rows = []
    for method in grid.setting_methods(SETTINGS[2]):
        for ratio in grid.setting3_ratios:
            row = {"method": method, "ratio": ratio, "achieved_ratio": _achieved(runs, method, ratio),
                   "budget": grid.main, **compare(runs, method, ratio, grid.main, "scratch_flops", per_seed)}
            pruned, rival = _pick(runs, "retrain", method, ratio, grid.main), _pick(runs, "scratch_flops", method,
                                                                                     ratio, grid.main)
            row.update({"retrain_pipeline_flops": metric(pruned, "pipeline_flops"),
                        "scratch_flops_train_flops": metric(rival, "train_flops"),
                        "scratch_flops_tokens": metric(rival, "train_tokens")})
            rows.append(row)
    return _frame(rows, SETTING3_COLUMNS)


def note_outside_grid(runs: pd.DataFrame, grid: Grid) -> None:
    """Log runs whose method or ratio the config does not list (stale files from an older grid)."""
    child = runs[runs.arm != "parent"]
    outside = child[~child.method.isin(grid.methods) | ~child.ratio.isin(grid.ratios)]
    if len(outside):
        log.info("%d run(s) outside the config grid are in summary.csv but not in the tables", len(outside))


# ---------------------------------------------------------------- markdown

def _num(x, spec: str) -> str:
    return MISSING if x is None or pd.isna(x) else format(x, spec)


def _pct(fraction, spec: str = ".1f") -> str:
    return MISSING if fraction is None or pd.isna(fraction) else format(100 * fraction, spec)


def _pm(values, stds, spec: str = ".3f", scale: float = 1.0) -> list[str]:
    """Cells 'mean' or 'mean ± std' (std only when the run has several seeds)."""
    cells = []
    for v, sd in zip(values, stds):
        cell = _num(None if pd.isna(v) else v * scale, spec)
        if cell != MISSING and pd.notna(sd):
            cell += f" ± {format(sd * scale, spec.lstrip('+'))}"
        cells.append(cell)
    return cells


def _header(title: str, grid: Grid, parent: pd.Series | None, what: str) -> list[str]:
    if parent is None:
        ref = "Parent P: no evaluation found."
    else:
        acc = _pct(parent[ACC])
        ref = (f"Parent P ({format_tokens(int(parent.train_tokens))} tokens): val loss {_num(parent[LOSS], '.3f')}, "
               f"avg acc {acc}{'' if acc == MISSING else '%'}.")
    notes = (f"Study `{grid.study}`. {what} Δ loss = S − P-R and Δ acc = P-R − S (percentage points): "
             f"positive means pruning wins. Acc = lm-eval average (%). A {MISSING} marks a grid point without a run. "
             "Runs with several seeds show mean ± std over seeds; every Δ is written Δ mean ± SE (n seeds), "
             "paired by seed where both arms have the same seeds ('unpaired' otherwise). Verdict rule: a gap is a "
             "win or a loss only when |mean Δ| > 2 SE with n ≥ 2, otherwise within noise; with n = 1 there is "
             "no noise estimate and the sign decides.")
    return [f"# {title}", "", notes, "", ref, ""]


def _deltas(table: pd.DataFrame, name: str, spec: str, scale: float = 1.0) -> list[str]:
    """Δ cells 'Δ +0.123 ± 0.045 (n=3)' ('Δ +0.123 (n=1)' without a noise estimate; – without a pair)."""
    cells = []
    for _, row in table.iterrows():
        g = gap_of(row, name)
        if not g.present:
            cells.append(MISSING)
        else:
            cells.append(g.text(spec, scale) if g.noisy else f"Δ {format(g.mean * scale, spec)} (n={g.n})")
    return cells


def _markdown(columns: dict[str, list[str]]) -> str:
    return pd.DataFrame(columns).to_markdown(index=False, disable_numparse=True)


def _versus_columns(table: pd.DataFrame, rival: str, pr: str, s: str) -> dict[str, list[str]]:
    """The loss / Δ / acc columns shared by every setting's markdown table (P-R_N vs one scratch arm)."""
    return {
        f"{pr} loss": _pm(table.retrain_loss, table.retrain_loss_std),
        f"{s} loss": _pm(table[f"{rival}_loss"], table[f"{rival}_loss_std"]),
        "Δ loss": _deltas(table, "loss", "+.3f"),
        f"{pr} acc": _pm(table.retrain_acc, table.retrain_acc_std, ".1f", 100),
        f"{s} acc": _pm(table[f"{rival}_acc"], table[f"{rival}_acc_std"], ".1f", 100),
        "Δ acc (pp)": _deltas(table, "acc", "+.1f", 100)}


def _wins(table: pd.DataFrame, names: dict[str, str]) -> dict[str, list[str]]:
    """Who wins each grid point by loss and by acc under the verdict rule (or 'within noise')."""
    names = {**names, "tie": "tie", NOISE: NOISE}
    return {f"wins ({m})": [names.get(w, MISSING) for w in table[f"winner_{m}"]] for m in ("loss", "acc")}


def _identity_columns(table: pd.DataFrame) -> dict[str, list[str]]:
    return {"method": [display_name(m) for m in table.method], "r": [f"{r:g}" for r in table.ratio],
            "achieved r": [_num(v, ".3f") for v in table.achieved_ratio]}


def setting1_markdown(table: pd.DataFrame, scaling: pd.DataFrame, grid: Grid, parent) -> str:
    pr, s = grid.label("retrain"), grid.label("scratch")
    lines = _header("Setting 1: equal training tokens (S_N vs P-R_N)", grid, parent,
                    f"Main budget N = {format_tokens(grid.main)} tokens; one-shot = pruned, not retrained.")
    lines.append(_markdown({**_identity_columns(table),
                            "one-shot loss": [_num(v, ".3f") for v in table.pruned_loss],
                            **_versus_columns(table, "scratch", pr, s),
                            **_wins(table, {"retrain": pr, "scratch": s})}))
    lines += ["", f"## Token scaling at r = {grid.scaling_ratio:g} (validation loss)", ""]
    rows = {"method": [], "": []} | {format_tokens(n): [] for n in grid.scaling}
    for method in grid.curve_methods:
        part = scaling[scaling.method == method].set_index("budget")
        cells = {"P-R_N": _pm(part.retrain_loss, part.retrain_loss_std),
                 "S_N": _pm(part.scratch_loss, part.scratch_loss_std), "Δ loss": _deltas(part, "loss", "+.3f")}
        for name, values in cells.items():
            rows["method"].append(display_name(method))
            rows[""].append(name)
            for n, cell in zip(part.index, values):
                rows[format_tokens(n)].append(cell)
    lines.append(_markdown(rows))
    return "\n".join(lines) + "\n"


def versus_markdown(table: pd.DataFrame, grid: Grid, parent, rival: str, labels: dict[str, str],
                    title: str, what: str) -> str:
    """Setting 2 (rival scratch_total) or 3 (scratch_flops): P-R_N vs the rival, with the winner."""
    pr, s = labels["retrain"], labels[rival]
    lines = _header(title, grid, parent, what)
    if table.empty:
        return "\n".join(lines + ["No ratios are configured for this setting."]) + "\n"
    columns = {**_identity_columns(table), **_versus_columns(table, rival, pr, s),
               **_wins(table, {"retrain": pr, rival: s})}
    if rival == "scratch_flops":
        columns[f"{s} tokens"] = [MISSING if pd.isna(v) else approx_tokens(v) for v in table.scratch_flops_tokens]
        columns["pipeline FLOPs"] = [_num(v, ".2e") for v in table.retrain_pipeline_flops]
    lines.append(_markdown(columns))
    return "\n".join(lines) + "\n"


def setting2_markdown(table: pd.DataFrame, grid: Grid, parent, labels: dict[str, str]) -> str:
    what = (f"P = {format_tokens(grid.parent_tokens)}, N = {format_tokens(grid.main)}: {labels['retrain']} is "
            f"pruned from P and retrained N tokens, {labels['scratch_total']} is trained from scratch on P+N "
            "tokens (calibration and mask-learning tokens not counted).")
    return versus_markdown(table, grid, parent, "scratch_total", labels,
                           "Setting 2: equal total tokens (S_{P+N} vs P-R_N)", what)


def setting3_markdown(table: pd.DataFrame, grid: Grid, parent, labels: dict[str, str]) -> str:
    what = (f"S_F is the child's shape trained from scratch with the FLOPs of the whole {labels['retrain']} "
            f"pipeline (parent pretraining on P = {format_tokens(grid.parent_tokens)} + pruning + retraining "
            f"N = {format_tokens(grid.main)}). Convention: {CONVENTION}.")
    return versus_markdown(table, grid, parent, "scratch_flops", labels,
                           "Setting 3: equal pipeline FLOPs (S_F vs P-R_N)", what)


def note_missing(name: str, table: pd.DataFrame, columns: list[str]) -> None:
    """Log every grid point of a table that lacks one of ``columns``."""
    missing = table[columns].isna().any(axis=1)
    for row in table[missing].itertuples():
        log.info("%s: %s r=%g N=%s lacks a run (%s)", name, row.method, row.ratio, format_tokens(int(row.budget)),
                 ", ".join(c for c in columns if pd.isna(getattr(row, c))))
