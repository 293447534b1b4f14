"""The paper's main table: one row per method and ratio; column groups S_N, P-R_N, S_{P+N} (and S_F).

Each group gives every metric of its run at the main budget N — validation loss and perplexity, per-source
perplexity, every lm-eval task and their average — the run's compute: training FLOPs, and the tokens
and FLOPs of its whole pipeline (pvs.compute states the convention) — and its peak LR (pvs.sweep). S_{P+N} and S_F exist only at the
ratios of settings 2 and 3. Written as CSV (raw numbers, accuracies as fractions, ``<group>:<field>``
columns plus ``:std`` and ``:n``), Markdown and LaTeX (booktabs; accuracies in %, mean ± std when a run
has several seeds).
"""
from __future__ import annotations

import pandas as pd

from pvs.budget import format_tokens
from pvs.compute import CONVENTION
from pvs.prune.registry import display_name
from pvs.report.tables import ACC, COMPUTE, LOSS, MISSING, _achieved, _pick
from pvs.study import ARMS, SETTINGS, Grid

# (group key, arm, which ratios): setting 1's two arms, then each other setting's rival (pvs.study.SETTINGS)
GROUPS = [(ARMS[arm].short, arm, ratios) for arm, ratios in
          [("scratch", "ratios"), ("retrain", "ratios"), *((s.rival, s.ratios_key) for s in SETTINGS[1:])]]
FIELD_ORDER = {LOSS: 0, "val_ppl": 1}


def fields(runs: pd.DataFrame) -> list[str]:
    """Metrics in display order (loss, ppl, per-source ppl, tasks, avg), then the compute columns."""
    metrics = [c for c in runs.columns if (c in (LOSS, ACC, "val_ppl") or c.startswith(("ppl/", "lmeval/")))
               and not c.endswith("_std")]
    rank = lambda c: (FIELD_ORDER.get(c, 2 if c.startswith("ppl/") else (4 if c == ACC else 3)), c)  # noqa: E731
    return (sorted(metrics, key=rank) + [c for c in COMPUTE if c in runs.columns and c != "flops_params"]
            + (["lr"] if "lr" in runs.columns else []))     # the run's peak LR (pvs.sweep)


def groups(grid: Grid) -> list[tuple[str, str, str, tuple[float, ...]]]:
    """The column groups this grid has, with their display names (e.g. S_200k, P-R_200k, S_1M, S_F200k)."""
    return [(key, arm, grid.label(arm), getattr(grid, ratios)) for key, arm, ratios in GROUPS if getattr(grid, ratios)]


def paper_frame(runs: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """The table as raw numbers: one row per (method, ratio) of the grid, every group's fields."""
    names, rows = fields(runs), []
    for method in grid.methods:
        for ratio in grid.ratios:
            row = {"method": method, "ratio": ratio, "achieved_ratio": _achieved(runs, method, ratio),
                   "budget": grid.main}
            for key, arm, _, ratios in groups(grid):
                run = _pick(runs, arm, method, ratio, grid.main) if ratio in ratios else None
                for f in names:
                    row[f"{key}:{f}"] = float("nan") if run is None else run.get(f, float("nan"))
                    if f"{f}_std" in runs.columns:
                        row[f"{key}:{f}:std"] = float("nan") if run is None else run.get(f"{f}_std")
                row[f"{key}:n"] = 0 if run is None else int(run["n"])
                row[f"{key}:train_tokens"] = float("nan") if run is None else run["train_tokens"]
            rows.append(row)
    return pd.DataFrame(rows)


def _label(field: str) -> str:
    if field == LOSS:
        return "loss"
    if field == "val_ppl":
        return "ppl"
    if field == ACC:
        return "avg acc"
    if field == "lr":
        return "LR"
    return field.split("/", 1)[-1].replace("train_flops", "train FLOPs").replace(
        "pipeline_tokens", "pipeline tokens").replace("pipeline_flops", "pipeline FLOPs")


def _format(field: str, value, std) -> str:
    if value is None or pd.isna(value):
        return MISSING
    if field.startswith("lmeval/"):
        text, sd = f"{100 * value:.1f}", None if pd.isna(std) else f"{100 * std:.1f}"
    elif field == LOSS:
        text, sd = f"{value:.3f}", None if pd.isna(std) else f"{std:.3f}"
    elif field.endswith("flops"):
        return f"{value:.2e}"
    elif field == "lr":
        return f"{value:g}"
    elif field.endswith("tokens"):
        return format_tokens(int(round(value)))
    else:
        text, sd = f"{value:.1f}", None if pd.isna(std) else f"{std:.1f}"
    return text if sd is None else f"{text} ± {sd}"


def display_cells(table: pd.DataFrame, runs: pd.DataFrame, grid: Grid) -> tuple[list, list[list[str]]]:
    """Header [(group name, [field labels])] and the formatted body rows (method, r, achieved r, ...)."""
    names = fields(runs)
    header = [(name, [_label(f) for f in names]) for _, _, name, _ in groups(grid)]
    body = []
    for _, row in table.iterrows():
        cells = [display_name(row.method), f"{row.ratio:g}", MISSING if pd.isna(row.achieved_ratio)
                 else f"{row.achieved_ratio:.3f}"]
        for key, _, _, _ in groups(grid):
            cells += [_format(f, row.get(f"{key}:{f}"), row.get(f"{key}:{f}:std")) for f in names]
        body.append(cells)
    return header, body


def caption(grid: Grid) -> str:
    return (f"Study `{grid.study}`: every method and ratio at the main budget N = {format_tokens(grid.main)} "
            f"(P = {format_tokens(grid.parent_tokens)}). S_N: scratch on N tokens; P-R_N: pruned and retrained N; "
            f"S_{{P+N}}: scratch on P+N (setting 2); S_F: scratch with the FLOPs of the P-R_N pipeline (setting 3). "
            f"Accuracies in %, perplexities per source; {MISSING} = no run. Compute: {CONVENTION}.")


def to_markdown(table: pd.DataFrame, runs: pd.DataFrame, grid: Grid) -> str:
    header, body = display_cells(table, runs, grid)
    columns = ["method", "r", "achieved r"] + [f"{g} {f}" for g, fs in header for f in fs]
    frame = pd.DataFrame(body, columns=columns) if body else pd.DataFrame(columns=columns)
    return (f"# Main table: pruned vs scratch\n\n{caption(grid)}\n\n"
            + frame.to_markdown(index=False, disable_numparse=True) + "\n")


def _tex(text: str) -> str:
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#"), ("±", r"$\pm$"), ("–", "--"),
                 ("·", r"$\cdot$"), ("`", "")):
        text = text.replace(a, b)
    return text


def _tex_group(name: str) -> str:
    base, _, sub = name.partition("_")
    base = base.replace("P-R", r"P\text{-}R")
    return "$" + base + r"_{\text{" + sub + "}}$" if sub else name


def to_latex(table: pd.DataFrame, runs: pd.DataFrame, grid: Grid) -> str:
    """A booktabs table* with one column group per arm (needs \\usepackage{booktabs,graphicx,amsmath})."""
    header, body = display_cells(table, runs, grid)
    width = sum(len(fs) for _, fs in header)
    lines = [r"\begin{table*}[t]", r"\centering", r"\resizebox{\textwidth}{!}{%",
             r"\begin{tabular}{ll" + "r" * (1 + width) + "}", r"\toprule"]
    tops, rules, col = ["", "", ""], [], 4
    for name, fs in header:
        tops.append(rf"\multicolumn{{{len(fs)}}}{{c}}{{{_tex_group(name)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(fs) - 1}}}")
        col += len(fs)
    lines += [" & ".join(tops) + r" \\", " ".join(rules),
              " & ".join(["Method", "$r$", "achieved"] + [_tex(f) for _, fs in header for f in fs]) + r" \\",
              r"\midrule"]
    lines += [" & ".join(_tex(c) for c in cells) + r" \\" for cells in body]
    lines += [r"\bottomrule", r"\end{tabular}}", rf"\caption{{{_tex(caption(grid))}}}",
              r"\label{tab:pruned-vs-scratch}", r"\end{table*}"]
    return "\n".join(lines) + "\n"
