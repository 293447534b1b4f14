"""Figures of the report: one fixed colour per pruning method, sized for a paper column, PNG at 150 dpi.

    loss_vs_tokens.png  setting 1: validation loss against training tokens N (log x) at the scaling
                        ratio; pruned + retrained P-R_N solid, scratch S_N dashed, parent P dotted.
    setting2.png        setting 2: per method (coarse -> fine), grouped bars of P-R_N vs S_{P+N};
                        top panel validation loss, bottom panel lm-eval average accuracy.

The first takes the seed-averaged runs (``pvs.tables.mean_over_seeds``), the second the setting-2 table
(``pvs.tables.setting2_table``). Both draw what exists, skip a series with too few points with a logged
note, and still write a figure (saying so) when nothing can be drawn, so the workflow's output exists.
Bar panels zoom the y axis to the data (it does not start at 0) so that small gaps stay visible.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from pvs.budget import format_tokens  # noqa: E402
from pvs.prune.registry import GRANULARITY_ORDER, display_name  # noqa: E402

log = logging.getLogger("pvs.figures")

COLUMN_WIDTH_IN = 3.5  # one column of a two-column paper
STYLE = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
         "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False, "axes.spines.right": False}
_PALETTE = plt.get_cmap("tab10").colors
# the colour of a method is its position in GRANULARITY_ORDER: the same in every figure and study
METHOD_COLORS = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(GRANULARITY_ORDER)}


def method_color(method: str):
    """The fixed colour of a method; methods outside the registry order get the palette's leftovers."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _PALETTE[(len(GRANULARITY_ORDER) + sum(map(ord, method))) % len(_PALETTE)]


def save_figure(fig, path: str | os.PathLike, dpi: int) -> None:
    """Save a PNG atomically (temp file + rename) and close the figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _series(runs: pd.DataFrame, arm: str, method: str, ratio: float, budgets: list[int]) -> pd.DataFrame:
    """Token count and loss of one arm of one method at one ratio, over the given budgets, sorted by N."""
    rows = runs[(runs.arm == arm) & (runs.method == method) & (runs.ratio == ratio)
                & runs.budget.isin(budgets) & runs.val_loss.notna()]
    return rows.sort_values("budget")[["budget", "val_loss"]]


# ---------------------------------------------------------------- setting 1: loss against tokens

def _draw_token_curves(ax, runs, methods, ratio, budgets) -> list[str]:
    """Draw every (method, arm) series with at least two points; return the methods drawn."""
    drawn = []
    for method in methods:
        any_line = False
        for arm, style, name in (("retrain", "-", "P-R_N"), ("scratch", "--", "S_N")):
            points = _series(runs, arm, method, ratio, budgets)
            if len(points) < 2:
                log.info("loss_vs_tokens: skipped %s %s at r=%g: %d point(s), need 2",
                         method, name, ratio, len(points))
                continue
            ax.plot(points.budget, points.val_loss, style, marker="o", markersize=3, linewidth=1.2,
                    color=method_color(method))
            any_line = True
        if any_line:
            drawn.append(method)
    return drawn


def _token_axis(ax, budgets: list[int]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_tokens(b) for b in budgets])
    ax.set_xlabel("training tokens N (log scale)")
    ax.set_ylabel("validation loss")


def plot_loss_vs_tokens(runs: pd.DataFrame, methods: list[str], ratio: float, budgets: list[int],
                        parent_loss: float | None, path: str | os.PathLike, dpi: int = 150) -> None:
    """Setting 1 token-scaling figure: P-R_N (solid) and S_N (dashed) per method, parent loss dotted."""
    budgets = sorted(budgets)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH_IN, 3.0), layout="constrained")
        drawn = _draw_token_curves(ax, runs, methods, ratio, budgets)
        if not drawn:
            _no_data(ax, f"no method has two or more runs at r = {ratio:g}")
            save_figure(fig, path, dpi)
            return
        _token_axis(ax, budgets)
        handles = [Line2D([], [], color=method_color(m), linewidth=3, label=display_name(m)) for m in drawn]
        handles += [Line2D([], [], color="0.2", linestyle="-", label="P-R_N (pruned + retrained)"),
                    Line2D([], [], color="0.2", linestyle="--", label="S_N (scratch)")]
        if parent_loss is not None and pd.notna(parent_loss):
            ax.axhline(parent_loss, color="0.35", linestyle=":", linewidth=1.0)
            handles.append(Line2D([], [], color="0.35", linestyle=":", label="P (parent)"))
        ax.set_title(f"Setting 1, equal training tokens (r = {ratio:g})")
        ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        save_figure(fig, path, dpi)


# ---------------------------------------------------------------- setting 2: grouped bars

def _zoomed_limits(values: list[float]) -> tuple[float, float]:
    """Y limits that show differences between bars of similar height (axis does not start at 0)."""
    lo, hi = min(values), max(values)
    pad = max(0.25 * (hi - lo), 0.02 * max(abs(hi), 1e-3))
    return lo - 2 * pad, hi + pad


def _bars(ax, groups: pd.DataFrame, pruned_col: str, scratch_col: str) -> None:
    """Grouped bars: pruned solid in the method colour, scratch hatched with the method-colour edge."""
    width = 0.38
    for x, (_, row) in enumerate(groups.iterrows()):
        color = method_color(row["method"])
        if pd.notna(row[pruned_col]):
            ax.bar(x - width / 2, row[pruned_col], width, color=color, edgecolor=color)
        if pd.notna(row[scratch_col]):
            ax.bar(x + width / 2, row[scratch_col], width, color="white", edgecolor=color, hatch="////",
                   linewidth=1.0)
    ax.grid(True, axis="y", linewidth=0.3, alpha=0.5)


def _bar_row(axes, panels: list[pd.DataFrame], cols: tuple[str, str], ylabel: str, reference=None) -> None:
    """One metric across the ratio panels, sharing zoomed y limits; a note where there is nothing to draw."""
    values = [v for g in panels for v in pd.concat([g[cols[0]], g[cols[1]]]).dropna()]
    if reference is not None and pd.notna(reference):
        values.append(reference)
    for ax, groups in zip(axes, panels):
        _bars(ax, groups, *cols)
        if reference is not None and pd.notna(reference):
            ax.axhline(reference, color="0.35", linestyle=":", linewidth=1.0)
    if not values:
        _no_data(axes[0], f"no {ylabel}")
        return
    axes[0].set_ylim(*_zoomed_limits(values))
    axes[0].set_ylabel(ylabel)


def plot_setting2(table: pd.DataFrame, labels: dict[str, str], parent_loss: float | None,
                  path: str | os.PathLike, dpi: int = 150) -> None:
    """Setting 2 bars from the setting-2 table (rows in method order, coarse -> fine), one column per ratio.

    ``labels`` gives the legend names of the two arms, e.g. {"retrain": "P-R_300k", "scratch_total": "S_1.3M"}.
    Top row: validation loss (parent dotted); bottom row: lm-eval average accuracy. A method with
    neither arm evaluated is skipped with a logged note.
    """
    has_run = table[["retrain_loss", "scratch_total_loss"]].notna().any(axis=1)
    for row in table[~has_run].itertuples():
        log.info("setting2: skipped %s at r=%g: neither P-R_N nor S_{P+N} was evaluated", row.method, row.ratio)
    table = table[has_run].assign(retrain_acc=table.retrain_acc * 100, scratch_total_acc=table.scratch_total_acc * 100)
    ratios = sorted(table.ratio.unique())
    panels = [table[table.ratio == r].reset_index(drop=True) for r in ratios]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, max(1, len(ratios)), figsize=(COLUMN_WIDTH_IN * max(1, len(ratios)), 4.2),
                                 sharex="col", sharey="row", layout="constrained", squeeze=False)
        if not ratios:
            _no_data(axes[0, 0], "no setting-2 runs")
            _no_data(axes[1, 0], "no setting-2 runs")
            save_figure(fig, path, dpi)
            return
        _bar_row(axes[0], panels, ("retrain_loss", "scratch_total_loss"), "validation loss", parent_loss)
        _bar_row(axes[1], panels, ("retrain_acc", "scratch_total_acc"), "avg accuracy (%)")
        for ax_top, ax, groups, ratio in zip(axes[0], axes[1], panels, ratios):
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([display_name(m) for m in groups.method], rotation=35, ha="right",
                               rotation_mode="anchor")
            ax.set_xlim(-0.6, len(groups) - 0.4)
            ax_top.set_title(f"r = {ratio:g}")
        fig.suptitle("Setting 2, equal total tokens (methods coarse → fine)", fontsize=STYLE["axes.titlesize"])
        handles = [Patch(facecolor="0.45", edgecolor="0.45", label=f"{labels['retrain']} (pruned + retrained)"),
                   Patch(facecolor="white", edgecolor="0.45", hatch="////",
                         label=f"{labels['scratch_total']} (scratch, P+N tokens)")]
        if parent_loss is not None and pd.notna(parent_loss):
            handles.append(Line2D([], [], color="0.35", linestyle=":", label="P (parent)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        save_figure(fig, path, dpi)
