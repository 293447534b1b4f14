"""The findings against the regime: the pruned-vs-scratch gap of several studies against the parent's tokens per parameter.

    python -m pvs.report.regime --studies results/regime/tpp0.4 results/regime/tpp5 results/regime/tpp20 \
        --out results/regime

Each study directory is one finished study (``make regime`` runs three: configs/regime/*.yaml): its
``summary.csv`` (pvs.report, one row per evaluated model and seed) and its ``config.resolved.yaml`` (the
config Snakemake ran, from which pvs.regime computes the parent's tokens per non-embedding parameter).
For every study, method and setting (1: S_N vs P-R_N at the main budget; 2: S_{P+N} vs P-R_N) at one ratio
(--ratio, default 0.5) the gap is computed exactly as the study's own tables compute it
(pvs.report.tables.compare: Δ loss = S − P-R on validation loss, > 0 = pruning wins, mean over seeds, SE
paired by seed, the verdict rule of pvs.report.uncertainty). Writes under --out:

  tables/regime.csv      one row per study x method x setting: tokens per parameter, the losses, Δ, its SE
                         and n, the verdict ('pruning wins', 'scratch wins', 'within noise', 'tie'),
                         'Δ +0.123 ± 0.045 (n=2)'
  tables/regime.md       the same numbers, one column per regime, and the paper's points (DESIGN §1)
  figures/regime.png     Δ loss against the parent's tokens per parameter (log x), settings 1 and 2 side by
     (+ .pdf)            side, one line per method, error bars = SE over seeds, the paper's 8B points at 28.7

The paper's points (DESIGN.md §1, arXiv 2606.14150): a number only for Minitron-Depth at 0.5 (val loss
P200-R50 2.54, S50 2.64, S250 2.49: Δ +0.10 in setting 1, −0.05 in setting 2); for the other methods the
paper gives a verdict only (setting 1: pruning wins at every method and ratio; setting 2: by average
accuracy, not loss), drawn as a triangle at Δ = 0 pointing to the winner's side.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import pandas as pd

from pvs import regime as regime_table
from pvs.cli import doc_parser, guarded
from pvs.config import ConfigError, load_config
from pvs.prune.registry import display_name
from pvs.report.build import atomic_write_text, write_csv
from pvs.report.figures import PAGE_WIDTH_IN, STYLE, method_color, save_figure
from pvs.report.tables import gap_of, mean_over_seeds, order_methods, setting1_table, setting2_table
from pvs.report.uncertainty import LOSE, NOISE, RULE, TIE, WIN
from pvs.study import Grid, as_ratio

log = logging.getLogger("pvs.report.regime")

OUTPUTS = {"csv": "tables/regime.csv", "md": "tables/regime.md", "figure": "figures/regime.png"}
SETTINGS = {1: ("scratch", "S_N"), 2: ("scratch_total", "S_{P+N}")}       # setting: (rival arm, its name)
VERDICTS = {WIN: "pruning wins", LOSE: "scratch wins", NOISE: NOISE, TIE: TIE}
COLUMNS = ["study", "parent_tokens_per_param", "parent_tokens", "non_embedding_params", "setting", "method",
           "ratio", "budget", "retrain_loss", "rival", "rival_loss", "delta_loss", "delta_loss_se", "delta_loss_n",
           "delta_paired", "verdict", "delta_text"]

# The paper's points at r = 0.5 (DESIGN.md §1): (setting, method) -> (Δ loss or None, verdict sign, basis).
PAPER_TPP = regime_table.paper()["parent_tokens_per_param"]              # 200B / 6.98B ≈ 28.7
PAPER_POINTS = {
    (1, "minitron_depth"): (2.64 - 2.54, +1, "val loss S50 2.64 vs P200-R50 2.54"),
    (2, "minitron_depth"): (2.49 - 2.54, -1, "val loss S250 2.49 vs P200-R50 2.54"),
    **{(1, m): (None, +1, "verdict only, at every method and ratio")
       for m in ("minitron_width", "sheared_llama", "flap", "sparsegpt_nm", "sparsegpt")},
    (2, "sheared_llama"): (None, +1, "verdict by avg acc: 65.9 vs S250 65.3"),
    (2, "sparsegpt_nm"): (None, -1, "verdict by avg acc: 66.7 vs S250 67.1"),
    (2, "sparsegpt"): (None, +1, "verdict by avg acc: 67.5 vs S250 66.3"),
}
PAPER_NOTE = ("Paper (8B, 28.7 tokens per parameter, DESIGN §1): a Δ loss is given only for Minitron-Depth "
              "(setting 1 +0.10, setting 2 −0.05); the other methods have a verdict only — setting 1: pruning "
              "wins at every method and ratio; setting 2 by average accuracy (Sheared-LLaMA and SparseGPT "
              "unstructured: pruning wins; SparseGPT 2:4: scratch wins; Minitron-Width and FLAP: not given).")

CAPTION = ("Δ loss (S − P-R, validation loss) against the parent's tokens per parameter; error bars: SE over seeds.\n"
           "Paper (8B, 28.7 tokens/param): ★ its Δ loss (Minitron-Depth only); △ / ▽ at Δ = 0: a verdict only (setting 1:\n"
           "pruning wins for every method; setting 2: by avg accuracy, not loss); markers spread around 28.7.")


class RegimeReportError(ValueError):
    """A study directory lacks what this report needs; the message names the file."""


# ---------------------------------------------------------------- reading the studies

def read_summary(path: Path) -> pd.DataFrame:
    """summary.csv with the dtypes pvs.report.build wrote it with (seed-pairing needs numeric seeds)."""
    df = pd.read_csv(path)
    for col in ("ratio", "val_loss", "lmeval/avg"):
        if col in df:
            df[col] = df[col].astype("float64")
    if "lmeval/avg" not in df:
        df["lmeval/avg"] = float("nan")
    df["method"] = df["method"].astype("object").where(df["method"].notna(), None)
    return df


def load_study(directory: str | os.PathLike) -> dict:
    """One study: its config (validated, results_dir = ``directory``), grid, summary and regime."""
    directory = Path(directory)
    summary_path, config_path = directory / "summary.csv", directory / "config.resolved.yaml"
    for path in (summary_path, config_path):
        if not path.is_file():
            raise RegimeReportError(f"{path}: missing (run the study first: snakemake --configfile <config>)")
    cfg = load_config(config_path)
    cfg["results_dir"] = str(directory)            # epochs and budget files are read from this study's folder
    reg = regime_table.regime(cfg, str(config_path))
    return {"dir": directory, "cfg": cfg, "grid": Grid.from_config(cfg), "summary": read_summary(summary_path),
            "regime": reg}


# ---------------------------------------------------------------- the table

def verdict(gap) -> str | None:
    """'pruning wins', 'scratch wins', 'within noise' or 'tie' by the rule of pvs.report.uncertainty."""
    return VERDICTS.get(gap.call())


def study_rows(study: dict, ratio: float) -> list[dict]:
    """The study's setting-1 and setting-2 gaps at ``ratio``, one dict per method and setting."""
    grid, summary, reg = study["grid"], study["summary"], study["regime"]
    runs = mean_over_seeds(summary)
    tables = {1: setting1_table(runs, grid, summary), 2: setting2_table(runs, grid, summary)}
    rows = []
    for setting, table in tables.items():
        rival, _ = SETTINGS[setting]
        part = table[table.ratio == ratio]
        if part.empty:
            log.warning("%s: no setting-%d row at r=%g (ratios %s)", grid.study, setting, ratio,
                        sorted(table.ratio.unique()))
        for _, row in part.iterrows():
            g = gap_of(row)
            rows.append({"study": grid.study, "parent_tokens_per_param": reg["parent_tokens_per_param"],
                         "parent_tokens": grid.parent_tokens, "non_embedding_params": reg["arms"][0]["non_embedding_params"],
                         "setting": setting, "method": row.method, "ratio": float(row.ratio), "budget": int(row.budget),
                         "retrain_loss": row.retrain_loss, "rival": rival, "rival_loss": row[f"{rival}_loss"],
                         "delta_loss": g.mean, "delta_loss_se": g.se, "delta_loss_n": g.n or pd.NA,
                         "delta_paired": g.paired if g.present else pd.NA, "verdict": verdict(g),
                         "delta_text": g.text() if g.present else None})
    return rows


def regime_frame(studies: list[dict], ratio: float = 0.5) -> pd.DataFrame:
    """One row per study x method x setting, sorted by setting, method (coarse -> fine), tokens per parameter."""
    df = pd.DataFrame([r for s in studies for r in study_rows(s, ratio)], columns=COLUMNS)
    if df.empty:
        return df
    rank = {m: i for i, m in enumerate(order_methods(df.method.unique()))}
    df = df.assign(_m=df.method.map(rank)).sort_values(["setting", "_m", "parent_tokens_per_param"], kind="stable")
    return df.drop(columns="_m").astype({"delta_loss_n": "Int64", "delta_paired": "boolean"}).reset_index(drop=True)


def _cell(row) -> str:
    if pd.isna(row.delta_loss):
        return "–"
    g = gap_of(row)
    text = g.text() if g.noisy else f"Δ {g.mean:+.3f} (n={g.n})"
    return f"{text}: {row.verdict}"


def _paper_cell(setting: int, method: str) -> str:
    point = PAPER_POINTS.get((setting, method))
    if point is None:
        return "not given"
    delta, sign, basis = point
    return (f"Δ {delta:+.2f}" if delta is not None else ("pruning wins" if sign > 0 else "scratch wins")) + f" ({basis})"


def to_markdown(df: pd.DataFrame, studies: list[dict]) -> str:
    """A column per regime (tokens per parameter), a row per setting and method, and the paper's column."""
    regimes = sorted({(s["regime"]["parent_tokens_per_param"], s["grid"].study) for s in studies})
    header = ["setting", "method"] + [f"{tpp:.3g} tok/param (`{name}`)" for tpp, name in regimes] + ["paper, 28.7 tok/param"]
    lines = ["# Findings against the regime: Δ loss = S − P-R against the parent's tokens per parameter", "",
             "Δ loss on validation loss, > 0: pruning wins. Setting 1: S_N vs P-R_N at the main budget (N/P = 0.25); "
             "setting 2: S_{P+N} vs P-R_N. Every Δ is mean ± SE over seeds (n), paired by seed where both arms "
             f"share their seeds. Verdict rule: {RULE}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (setting, method), part in df.groupby(["setting", "method"], sort=False):
        cells = {row.study: _cell(row) for row in part.itertuples()}
        name = f"{setting} ({SETTINGS[setting][1]} vs P-R_N)"
        lines.append("| " + " | ".join([name, display_name(method)] + [cells.get(n, "–") for _, n in regimes]
                                       + [_paper_cell(setting, method)]) + " |")
    lines += ["", PAPER_NOTE, "", "Studies:", ""]
    for s in studies:
        g, reg = s["grid"], s["regime"]
        lines.append(f"- `{g.study}` ({s['dir']}): P = {g.parent_tokens:,} tokens, "
                     f"{reg['arms'][0]['non_embedding_params']:,} non-embedding parameters, "
                     f"{reg['parent_tokens_per_param']:.3g} tokens per parameter, N = {g.main:,}, seeds {g.seeds}, "
                     f"epochs (max) {reg['data'] if reg['max_epochs'] is None else format(reg['max_epochs'], '.2f')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the figure

def plot_regime(df: pd.DataFrame, path: str | os.PathLike, dpi: int = 150) -> None:
    """Δ loss against tokens per parameter (log x), one panel per setting, one line per method, the paper's points."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, NullLocator

    methods = list(order_methods(df.method.unique())) if len(df) else []
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH_IN, 3.2), layout="constrained", sharey=False)
        for ax, setting in zip(axes, SETTINGS):
            part = df[df.setting == setting]
            for i, method in enumerate(methods):
                rows = part[(part.method == method) & part.delta_loss.notna()].sort_values("parent_tokens_per_param")
                color = method_color(method)
                if len(rows):
                    se = rows.delta_loss_se.astype("float64").fillna(0.0)
                    ax.errorbar(rows.parent_tokens_per_param, rows.delta_loss, yerr=se, color=color, marker="o",
                                markersize=3.5, linewidth=1.2, capsize=2, elinewidth=0.8)
                point = PAPER_POINTS.get((setting, method))
                if point is not None:
                    delta, sign, _ = point
                    x = PAPER_TPP * (1.06 ** (i - (len(methods) - 1) / 2))     # spread the paper's markers a little
                    if delta is not None:
                        ax.plot([x], [delta], marker="*", markersize=9, color=color, markeredgecolor="k",
                                markeredgewidth=0.5, linestyle="none")
                    else:
                        ax.plot([x], [0.0], marker="^" if sign > 0 else "v", markersize=6, markerfacecolor="white",
                                markeredgecolor=color, markeredgewidth=1.2, linestyle="none")
            rival = SETTINGS[setting][1]
            ax.axhline(0.0, color="0.4", linewidth=0.8)
            ax.axvline(PAPER_TPP, color="0.7", linewidth=0.6, linestyle="--")
            ax.set_xscale("log")
            ticks = sorted(set(df.parent_tokens_per_param.round(6))) if len(df) else []
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            close = any(b / a < 2.5 for a, b in zip(ticks, ticks[1:]))              # labels would overlap
            ax.set_xticklabels([f"{v:.3g}" for v in ticks], rotation=40 if close else 0, ha="right" if close else "center")
            ax.set_xlim(min(ticks + [PAPER_TPP]) / 1.6, PAPER_TPP * 1.6)
            ax.text(PAPER_TPP, 0.98, "paper 8B: 28.7 ", transform=ax.get_xaxis_transform(), ha="right", va="top",
                    rotation=90, fontsize=6, color="0.4")
            ax.set_xlabel("parent tokens per non-embedding parameter")
            ax.set_ylabel(f"Δ loss = {rival} − P-R_N")
            ax.set_title(f"Setting {setting}: {rival} vs P-R_N (> 0: pruning wins)")
            ax.grid(True, linewidth=0.3, alpha=0.5)
            if part.delta_loss.notna().sum() == 0:
                ax.text(0.5, 0.5, "no pair in any study", ha="center", va="center", transform=ax.transAxes,
                        color="0.4")
        handles = [Line2D([], [], color=method_color(m), marker="o", label=display_name(m)) for m in methods]
        handles += [Line2D([], [], marker="*", color="0.5", markeredgecolor="k", linestyle="none", markersize=8,
                           label="paper 8B: Δ loss"),
                    Line2D([], [], marker="^", markerfacecolor="white", markeredgecolor="0.3", linestyle="none",
                           label="paper 8B: verdict only (▲ pruning / ▼ scratch wins)")]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), frameon=False)
        fig.suptitle(CAPTION, fontsize=STYLE["legend.fontsize"])
        save_figure(fig, path, dpi)


# ---------------------------------------------------------------- CLI

def build(study_dirs, out_dir, ratio: float = 0.5, dpi: int = 150) -> dict[str, Path]:
    """Read the studies, write the table (CSV + markdown) and the figure (PNG + PDF); return the paths."""
    studies = [load_study(d) for d in study_dirs]
    names = [s["grid"].study for s in studies]
    if len(set(names)) != len(names):
        raise RegimeReportError(f"two study directories hold the same study name: {names}")
    df = regime_frame(studies, as_ratio(ratio))
    out = Path(out_dir)
    paths = {key: out / rel for key, rel in OUTPUTS.items()}
    write_csv(df, paths["csv"])
    atomic_write_text(paths["md"], to_markdown(df, studies))
    plot_regime(df, paths["figure"], dpi)
    bad = df[~df.delta_loss.apply(lambda v: isinstance(v, float) and math.isfinite(v))]
    for row in bad.itertuples():
        log.warning("%s setting %d %s: no Δ (a run is missing)", row.study, row.setting, row.method)
    return {**paths, "figure_pdf": paths["figure"].with_suffix(".pdf")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.report.regime", __doc__)
    parser.add_argument("--studies", nargs="+", required=True, metavar="DIR",
                        help="finished study directories (each with summary.csv and config.resolved.yaml)")
    parser.add_argument("--out", required=True, metavar="DIR", help="directory for tables/regime.* and figures/regime.*")
    parser.add_argument("--ratio", type=float, default=0.5, help="the pruning ratio compared (default 0.5)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the PNG (default 150)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pvs").setLevel(logging.INFO)

    def run() -> None:
        for path in build(args.studies, args.out, args.ratio, args.dpi).values():
            print(path)

    return guarded("python -m pvs.report.regime", (ConfigError, RegimeReportError, regime_table.RegimeError), run)


if __name__ == "__main__":
    sys.exit(main())
