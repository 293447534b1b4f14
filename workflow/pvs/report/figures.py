"""Figures of the report: one fixed colour per pruning method, sized for a paper, PNG (150 dpi) + PDF.

    loss_vs_tokens     Figure 1 left, setting 1: validation loss against training tokens N (log x) at the
                       scaling ratio, one panel per method; P-R_N solid, S_N dotted, parent P dashed, and
                       Δ = S_N − P-R_N annotated at the smallest and the largest N.
    setting2           Figure 1 right, setting 2: per method (coarse -> fine), bars of P-R_N vs S_{P+N};
                       top panel validation loss, bottom panel lm-eval average accuracy.
    gap_vs_ratio       setting 1 at the main budget: Δ loss and Δ acc against the pruning ratio, per method.
    heatmap_setting{k} the gap (Δ loss) as a method x ratio heatmap for settings 1, 2 and 3.

Error bars are standard errors where seeds exist (pvs.report.uncertainty): the SE of each arm's mean
(std over seeds / sqrt(n)) on loss and bar plots, the SE of the mean Δ (paired by seed) on gap plots, and
"± SE" under each heatmap cell; none where a run has one seed. Every function draws what
exists, logs what it skips, and still writes a figure (saying so) when nothing can be drawn, so the
workflow's outputs always exist. Bar panels zoom the y axis to the data so that small gaps stay visible.
"""
from __future__ import annotations

import logging
import os
from itertools import product
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from pvs.budget import format_tokens  # noqa: E402
from pvs.prune.registry import GRANULARITY_ORDER, display_name  # noqa: E402
from pvs.report.tables import gap_of  # noqa: E402
from pvs.report.uncertainty import se_of_mean  # noqa: E402

log = logging.getLogger("pvs.report.figures")

COLUMN_WIDTH_IN = 3.5  # one column of a two-column paper
PAGE_WIDTH_IN = 7.0    # both columns
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
    """Save ``path`` (.png) and the same figure as .pdf beside it, each atomically; close the figure."""
    png = Path(path)
    png.parent.mkdir(parents=True, exist_ok=True)
    try:
        for target, fmt in ((png, "png"), (png.with_suffix(".pdf"), "pdf")):
            tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
            try:
                fig.savefig(tmp, format=fmt, dpi=dpi)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _series(runs: pd.DataFrame, arm: str, method: str, ratio: float, budgets: list[int]) -> pd.DataFrame:
    """Token count, loss and the SE of the mean loss (NaN for one seed) of one arm of one method at one
    ratio, over the budgets, sorted by N."""
    rows = runs[(runs.arm == arm) & (runs.method == method) & (runs.ratio == ratio)
                & runs.budget.isin(budgets) & runs.val_loss.notna()]
    std = rows["val_loss_std"] if "val_loss_std" in rows else pd.Series(float("nan"), index=rows.index)
    n = rows["n"] if "n" in rows else pd.Series(1, index=rows.index)
    rows = rows.assign(val_loss_se=se_of_mean(std, n).to_numpy())
    return rows.sort_values("budget")[["budget", "val_loss", "val_loss_se"]]


# ---------------------------------------------------------------- Figure 1 left: loss against tokens

ARM_STYLE = {"retrain": dict(linestyle="-", marker="o", markerfacecolor=None),
             "scratch": dict(linestyle=":", marker="o", markerfacecolor="white")}


def _annotate_gap(ax, pruned: pd.DataFrame, scratch: pd.DataFrame, at: str, gaps: pd.DataFrame | None) -> None:
    """Δ = S_N − P-R_N drawn as a bracket at the smallest (at='first') or largest ('last') shared N, with
    ± the SE of Δ where ``gaps`` (the scaling table of this method) has one."""
    shared = sorted(set(pruned.budget) & set(scratch.budget))
    if not shared:
        return
    n = shared[0] if at == "first" else shared[-1]
    lo, hi = float(pruned[pruned.budget == n].val_loss.iloc[0]), float(scratch[scratch.budget == n].val_loss.iloc[0])
    ax.plot([n, n], [lo, hi], color="0.3", linewidth=0.8)
    text = f"Δ{hi - lo:+.2f}"
    row = None if gaps is None else gaps[gaps.budget == n]
    if row is not None and len(row) and gap_of(row.iloc[0]).noisy:
        text += f"\n±{gap_of(row.iloc[0]).se:.2f}"
    ax.annotate(text, (n, (lo + hi) / 2), xytext=(3, 0), textcoords="offset points",
                ha="left", va="center", fontsize=6.5, color="0.15")


def _method_panel(ax, runs, method, ratio, budgets, gaps=None) -> bool:
    """One method's P-R_N and S_N curves with Δ at both ends; False when neither has two points."""
    series = {arm: _series(runs, arm, method, ratio, budgets) for arm in ARM_STYLE}
    color, drawn = method_color(method), False
    for arm, style in ARM_STYLE.items():
        points = series[arm]
        if len(points) < 2:
            log.info("loss_vs_tokens: skipped %s %s at r=%g: %d point(s), need 2", method,
                     "P-R_N" if arm == "retrain" else "S_N", ratio, len(points))
            continue
        ax.errorbar(points.budget, points.val_loss, yerr=points.val_loss_se.fillna(0.0), color=color,
                    linestyle=style["linestyle"], marker=style["marker"], markersize=3.5, linewidth=1.2,
                    markerfacecolor=style["markerfacecolor"] or color, capsize=2, elinewidth=0.8)
        drawn = True
    if drawn:
        mine = None if gaps is None else gaps[gaps.method == method]
        _annotate_gap(ax, series["retrain"], series["scratch"], "first", mine)
        _annotate_gap(ax, series["retrain"], series["scratch"], "last", mine)
    return drawn


def _token_axis(ax, budgets: list[int]) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(budgets))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([format_tokens(b) for b in budgets])
    pad = (max(budgets) / min(budgets)) ** 0.08 if len(budgets) > 1 else 1.5
    ax.set_xlim(min(budgets) / pad, max(budgets) * pad ** 3.5)     # room for the Δ label right of the last N


def _panel_grid(count: int, height: float = 2.1):
    cols = min(3, max(1, count))
    rows = -(-max(1, count) // cols)
    width = COLUMN_WIDTH_IN if cols == 1 else PAGE_WIDTH_IN
    return plt.subplots(rows, cols, figsize=(width, height * rows + 0.7), layout="constrained", squeeze=False,
                        sharey=True)


def plot_loss_vs_tokens(runs: pd.DataFrame, methods: list[str], ratio: float, budgets: list[int],
                        parent_loss: float | None, path: str | os.PathLike, dpi: int = 150,
                        gaps: pd.DataFrame | None = None) -> None:
    """Figure 1 left: one panel per method, P-R_N (solid) vs S_N (dotted), parent dashed, Δ at both ends
    (± its SE from ``gaps``, the scaling table, where seeds exist); error bars = SE of each arm's mean."""
    budgets = sorted(budgets)
    with plt.rc_context(STYLE):
        fig, axes = _panel_grid(len(methods))
        drawn = [m for ax, m in zip(axes.flat, methods) if _method_panel(ax, runs, m, ratio, budgets, gaps)]
        if not drawn:
            for ax in axes.flat:
                ax.set_visible(False)
            axes.flat[0].set_visible(True)
            _no_data(axes.flat[0], f"no method has two or more runs at r = {ratio:g}")
            save_figure(fig, path, dpi)
            return
        for ax, method in zip(axes.flat, methods):
            _token_axis(ax, budgets)
            ax.set_title(display_name(method), color=method_color(method))
            ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
            if parent_loss is not None and pd.notna(parent_loss):
                ax.axhline(parent_loss, color="0.45", linestyle="--", linewidth=0.9)
        for ax in axes.flat[len(methods):]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel("validation loss")
        for ax in axes.flat[max(0, len(methods) - axes.shape[1]):len(methods)]:
            ax.set_xlabel("training tokens N (log scale)")
        handles = [Line2D([], [], color="0.2", linestyle="-", marker="o", markersize=3.5, label="P-R_N (pruned + retrained)"),
                   Line2D([], [], color="0.2", linestyle=":", marker="o", markersize=3.5, markerfacecolor="white",
                          label="S_N (scratch)"),
                   Line2D([], [], color="0.45", linestyle="--", label="P (parent)")]
        fig.suptitle(f"Setting 1, equal training tokens (r = {ratio:g}); Δ = S_N − P-R_N",
                     fontsize=STYLE["axes.titlesize"])
        fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
        save_figure(fig, path, dpi)


# ---------------------------------------------------------------- setting 1: the gap against the ratio

def plot_gap_vs_ratio(table: pd.DataFrame, path: str | os.PathLike, dpi: int = 150) -> None:
    """Δ loss and Δ acc (S_N vs P-R_N at the main budget) against the ratio, one line per method; error
    bars = SE of the mean Δ over seeds (none with one seed)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 2.6), layout="constrained")
        drawn = []
        for method in table.method.unique():
            rows = table[(table.method == method)].sort_values("ratio")
            for ax, col, name, scale in ((axes[0], "delta_loss", "loss", 1.0), (axes[1], "delta_acc", "acc", 100.0)):
                ok = rows[col].notna()
                if ok.sum() == 0:
                    continue
                se = rows[f"{col}_se"].astype("float64").fillna(0.0)
                ax.errorbar(rows.ratio[ok], rows[col][ok] * scale, yerr=se[ok] * scale,
                            color=method_color(method), marker="o", markersize=3.5, linewidth=1.2, capsize=2)
                if method not in drawn:
                    drawn.append(method)
        if not drawn:
            _no_data(axes[0], "no S_N / P-R_N pair at the main budget")
            _no_data(axes[1], "no S_N / P-R_N pair at the main budget")
            save_figure(fig, path, dpi)
            return
        ratios = sorted(table.ratio.unique())
        for ax, label in zip(axes, ("Δ loss = S_N − P-R_N", "Δ avg acc = P-R_N − S_N (pp)")):
            ax.axhline(0.0, color="0.4", linewidth=0.8)
            ax.set_xticks(ratios)
            ax.set_xlabel("pruning ratio r")
            ax.set_ylabel(label)
            ax.grid(True, linewidth=0.3, alpha=0.5)
        fig.suptitle("Setting 1 at the main budget: the pruned-vs-scratch gap against the ratio (> 0: pruning wins)",
                     fontsize=STYLE["axes.titlesize"])
        handles = [Line2D([], [], color=method_color(m), marker="o", label=display_name(m)) for m in drawn]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), frameon=False)
        save_figure(fig, path, dpi)


# ---------------------------------------------------------------- heatmaps of the gap

def plot_gap_heatmap(table: pd.DataFrame, title: str, path: str | os.PathLike, dpi: int = 150) -> None:
    """Δ loss (positive: pruning wins) as a method (rows, coarse -> fine) x ratio (columns) heatmap; a cell
    with a noise estimate reads '+0.20 ± 0.05' (± = SE of Δ) and is outlined when within noise (|Δ| ≤ 2 SE)."""
    methods = list(dict.fromkeys(table.method))
    ratios = sorted(table.ratio.unique())
    grid = table.pivot_table(index="method", columns="ratio", values="delta_loss", dropna=False).reindex(
        index=methods, columns=ratios) if len(table) else pd.DataFrame()
    with plt.rc_context(STYLE):
        width = min(PAGE_WIDTH_IN, max(COLUMN_WIDTH_IN, 1.6 + 0.75 * len(ratios)))
        fig, ax = plt.subplots(figsize=(width, 1.2 + 0.32 * max(1, len(methods))), layout="constrained")
        values = grid.to_numpy(dtype=float) if len(grid) else None
        if values is None or pd.isna(values).all():
            _no_data(ax, "no pruned / scratch pair for this setting")
            ax.set_title(title)
            save_figure(fig, path, dpi)
            return
        limit = float(pd.Series(values.ravel()).abs().max()) or 1.0
        image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        cells = {(row.method, row.ratio): gap_of(row) for _, row in table.iterrows()}
        for (r, c), v in ((rc, values[rc]) for rc in product(range(values.shape[0]), range(values.shape[1]))):
            g = cells.get((methods[r], ratios[c]))
            text = "–" if pd.isna(v) else f"{v:+.2f}"
            if g is not None and g.noisy:
                text += f"\n± {g.se:.2f}"
                if g.side() == 0:
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, linestyle=":", linewidth=1.0,
                                           edgecolor="0.2"))
            ax.text(c, r, text, ha="center", va="center", fontsize=6.5,
                    color="white" if pd.notna(v) and abs(v) > 0.6 * limit else "0.1")
        ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
        ax.set_yticks(range(len(methods)), [display_name(m) for m in methods])
        ax.set_xlabel("pruning ratio r")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label="Δ loss", shrink=0.9)
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
        err = {col: row.get(f"{col}_se") for col in (pruned_col, scratch_col)}
        err = {col: None if v is None or pd.isna(v) else v for col, v in err.items()}
        if pd.notna(row[pruned_col]):
            ax.bar(x - width / 2, row[pruned_col], width, color=color, edgecolor=color, yerr=err[pruned_col],
                   capsize=2, error_kw={"elinewidth": 0.8})
        if pd.notna(row[scratch_col]):
            ax.bar(x + width / 2, row[scratch_col], width, color="white", edgecolor=color, hatch="////",
                   linewidth=1.0, yerr=err[scratch_col], capsize=2, error_kw={"elinewidth": 0.8})
    ax.grid(True, axis="y", linewidth=0.3, alpha=0.5)


def _bar_row(axes, panels: list[pd.DataFrame], cols: tuple[str, str], ylabel: str, reference=None) -> None:
    """One metric across the ratio panels, sharing zoomed y limits; a note where there is nothing to draw."""
    values = []
    for g in panels:
        for col in cols:
            std = g[f"{col}_se"].fillna(0.0) if f"{col}_se" in g else 0.0
            values += list((g[col] + std).dropna()) + list((g[col] - std).dropna())
    if reference is not None and pd.notna(reference):
        values.append(reference)
    for ax, groups in zip(axes, panels):
        _bars(ax, groups, *cols)
        if reference is not None and pd.notna(reference):
            ax.axhline(reference, color="0.45", linestyle="--", linewidth=0.9)
    if not values:
        _no_data(axes[0], f"no {ylabel}")
        return
    axes[0].set_ylim(*_zoomed_limits(values))
    axes[0].set_ylabel(ylabel)


def plot_setting2(table: pd.DataFrame, labels: dict[str, str], parent_loss: float | None,
                  path: str | os.PathLike, dpi: int = 150) -> None:
    """Setting 2 bars from the setting-2 table (rows in method order, coarse -> fine), one column per ratio.

    ``labels`` gives the legend names of the two arms, e.g. {"retrain": "P-R_300k", "scratch_total": "S_1.3M"}.
    Top row: validation loss (parent dashed); bottom row: lm-eval average accuracy. A method with
    neither arm evaluated is skipped with a logged note.
    """
    has_run = table[["retrain_loss", "scratch_total_loss"]].notna().any(axis=1)
    for row in table[~has_run].itertuples():
        log.info("setting2: skipped %s at r=%g: neither P-R_N nor S_{P+N} was evaluated", row.method, row.ratio)
    table = table[has_run].assign(**{c: table[c] * 100 for c in ("retrain_acc", "scratch_total_acc",
                                                                  "retrain_acc_std", "scratch_total_acc_std")})
    table = table.assign(**{f"{arm}_{m}_se": se_of_mean(table[f"{arm}_{m}_std"], table[f"{arm}_n"]).to_numpy()
                            for arm in ("retrain", "scratch_total") for m in ("loss", "acc")})
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
            handles.append(Line2D([], [], color="0.45", linestyle="--", label="P (parent)"))
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        save_figure(fig, path, dpi)
