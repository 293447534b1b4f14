"""Findings: each claim of the paper tested on this run's numbers, with a verdict and a scale caveat.

The report stage writes ``results/findings.md`` from the setting tables (pvs.report.tables); nothing in it is
written by hand. Verdicts are "holds", "does not hold" or "not enough runs"; the rules are stated next to
each finding. Losses decide (the paper's Figure 1 plots validation loss); accuracies are shown beside.
Δ loss = S − P-R, so Δ > 0 means the pruned model wins. Runs with several seeds enter as their mean.

  F1  setting 1: P-R_N beats S_N for every method and ratio (at the main budget)
  F2  setting 1: the gap narrows as N grows (token-scaling curve at the scaling ratio)
  F3  setting 1: the gap narrows as the ratio rises (main budget)
  F4  setting 2: fine-grained pruning keeps an advantage over S_{P+N}; coarse structured pruning is
      matched or beaten (|Δ| within report.match_tolerance counts as matched)
  F5  setting 3 (an extension, not a claim of the paper): P-R_N beats S_F, the scratch run given the
      FLOPs of the whole pruning pipeline
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pvs.budget import approx_tokens, format_tokens
from pvs.prune.registry import GRANULARITY_ORDER, display_name
from pvs.study import Grid

HOLDS, FAILS, TOO_FEW = "holds", "does not hold", "not enough runs"
FINE, COARSE = "sparsegpt", "minitron_depth"       # the paper's two ends of the granularity axis


@dataclass
class Finding:
    key: str
    claim: str
    paper: str
    verdict: str
    evidence: list[str]
    caveat: str
    rule: str

    def markdown(self) -> str:
        lines = [f"## {self.key}. {self.claim}", "", f"**Verdict: {self.verdict}.** Rule: {self.rule}", "",
                 f"Paper: {self.paper}", "", "This run:", ""]
        lines += [f"- {e}" for e in self.evidence] or ["- no runs"]
        return "\n".join(lines + ["", f"Scale caveat: {self.caveat}", ""])


@dataclass
class Scale:
    """What a caveat needs to know about this run's scale (parameters as in pvs.compute)."""
    parent_params: float
    child_params: float               # median over the S_{P+N} runs
    parent_tokens: int
    main: int
    budgets: tuple[int, ...]
    ratios: tuple[float, ...]

    @classmethod
    def of(cls, grid: Grid, runs: pd.DataFrame, parent: pd.Series | None) -> "Scale":
        params = float("nan") if parent is None or "flops_params" not in parent else parent["flops_params"]
        children = runs.loc[runs.arm == "scratch_total", "flops_params"] if "flops_params" in runs else pd.Series()
        return cls(params, children.median() if len(children) else float("nan"), grid.parent_tokens, grid.main,
                   grid.scaling, grid.ratios)

    def parent_text(self) -> str:
        size = "a parent of unknown size" if pd.isna(self.parent_params) else \
            f"a {self.parent_params / 1e6:.2g}M-parameter parent"
        return (f"{size} pretrained on P = {format_tokens(self.parent_tokens)} tokens and N = "
                f"{format_tokens(self.main)} ({self.main / self.parent_tokens:.0%} of P), against the paper's 8B "
                "parent on 200B tokens and N = 50B (25% of P)")


def _d(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:+.3f}"


def _pp(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:+.1f} pp"


def _verdict_all_positive(pairs: pd.DataFrame, total: int) -> tuple[str, list[str]]:
    """holds when every present pair has Δ loss > 0 and at least half the grid points are present."""
    if len(pairs) == 0 or 2 * len(pairs) < total:
        return TOO_FEW, []
    losers = pairs[~(pairs.delta_loss > 0)]
    return (HOLDS if losers.empty else FAILS), [f"{display_name(r.method)} r={r.ratio:g}" for r in losers.itertuples()]


def f1_equal_tokens(s1: pd.DataFrame, scale: Scale) -> Finding:
    pairs = s1.dropna(subset=["delta_loss"])
    verdict, losers = _verdict_all_positive(pairs, len(s1))
    evidence = [f"{len(pairs)} of {len(s1)} method × ratio points have both P-R_N and S_N at N = "
                f"{format_tokens(scale.main)}; Δ loss > 0 at {int((pairs.delta_loss > 0).sum())}."]
    evidence += [f"{display_name(m)}: " + ", ".join(f"r={r.ratio:g} Δ {_d(r.delta_loss)} ({_pp(r.delta_acc)})"
                                                    for r in rows.itertuples())
                 for m, rows in pairs.groupby("method", sort=False)]
    if losers:
        evidence.append("scratch matches or wins at: " + ", ".join(losers))
    return Finding("F1", "At equal training tokens, pruned initialization beats random initialization for every "
                   "method and ratio", "P-R_N < S_N in validation loss for all six methods at r = 0.5–0.8 and "
                   "every N from 10B to 500B.", verdict, evidence,
                   f"{scale.parent_text()}; small models here see far fewer tokens per parameter.",
                   "holds if Δ loss > 0 at every grid point that has both runs (and at least half of them do).")


def _narrowing(rows: pd.DataFrame, by: str) -> tuple[float, float] | None:
    rows = rows.dropna(subset=["delta_loss"]).sort_values(by)
    if len(rows) < 2:
        return None
    return float(rows.delta_loss.iloc[0]), float(rows.delta_loss.iloc[-1])


def _narrow_finding(table: pd.DataFrame, by: str, unit) -> tuple[str, list[str]]:
    evidence, ends = [], {}
    for method, rows in table.groupby("method", sort=False):
        end = _narrowing(rows, by)
        if end is None:
            continue
        ends[method] = end
        points = rows.dropna(subset=["delta_loss"]).sort_values(by)
        evidence.append(f"{display_name(method)}: " + " → ".join(f"{unit(v)} Δ {_d(d)}" for v, d in
                                                                 zip(points[by], points.delta_loss))
                        + f" ({'narrows' if end[1] < end[0] else 'does not narrow'})")
    if not ends:
        return TOO_FEW, ["no method has the gap at two or more points"]
    return (HOLDS if all(last < first for first, last in ends.values()) else FAILS), evidence


def f2_narrows_with_tokens(scaling: pd.DataFrame, grid: Grid, scale: Scale) -> Finding:
    verdict, evidence = _narrow_finding(scaling, "budget", lambda n: f"N={format_tokens(int(n))}")
    span = max(scale.budgets) / min(scale.budgets) if scale.budgets else float("nan")
    return Finding("F2", "The pruned-vs-scratch gap narrows as the retraining budget N grows",
                   "at r = 0.5, Δ loss 0.39 → 0.04 for Minitron-Depth and 0.49 → 0.09 for Minitron-Width from "
                   "N = 10B to 500B.", verdict, evidence,
                   f"budgets here span {span:.0f}× ({', '.join(format_tokens(b) for b in scale.budgets)}) at "
                   f"r = {grid.scaling_ratio:g} against 50× (10B–500B) in the paper; {scale.parent_text()}.",
                   "holds if, for every method with two or more budgets, Δ loss at the largest N is below Δ "
                   "at the smallest N.")


def f3_narrows_with_ratio(s1: pd.DataFrame, scale: Scale) -> Finding:
    verdict, evidence = _narrow_finding(s1, "ratio", lambda r: f"r={r:g}")
    return Finding("F3", "The gap narrows as the pruning ratio rises, nearly vanishing at 0.8",
                   "the advantage of pruned initialization shrinks from r = 0.5 to 0.8 and nearly vanishes at 0.8.",
                   verdict, evidence,
                   f"ratios {', '.join(f'{r:g}' for r in scale.ratios)} of {scale.parent_text()}; at high ratios a "
                   "tiny child has few parameters left to inherit.",
                   "holds if, for every method with two or more ratios, Δ loss at the highest ratio is below Δ "
                   "at the lowest ('nearly vanishing' is shown by the numbers, not judged).")


def f4_equal_total_tokens(s2: pd.DataFrame, scale: Scale, tolerance: float) -> Finding:
    pairs = s2.dropna(subset=["delta_loss"])
    evidence = [f"{display_name(r.method)} r={r.ratio:g}: P-R_N {r.retrain_loss:.3f} vs S_{{P+N}} "
                f"{r.scratch_total_loss:.3f}, Δ {_d(r.delta_loss)} ({_pp(r.delta_acc)})" for r in pairs.itertuples()]
    checks = []
    for ratio, rows in pairs.groupby("ratio"):
        by_method = rows.set_index("method").delta_loss
        if FINE in by_method:
            checks.append(by_method[FINE] > tolerance)
        if COARSE in by_method:
            checks.append(by_method[COARSE] <= tolerance)
        if len(rows) >= 3:
            rank = rows.method.map({m: i for i, m in enumerate(GRANULARITY_ORDER)})
            evidence.append(f"r={ratio:g}: rank correlation of granularity (coarse → fine) with Δ loss = "
                            f"{rank.corr(rows.delta_loss, method='spearman'):+.2f}")
    verdict = TOO_FEW if not checks else (HOLDS if all(checks) else FAILS)
    tokens_per_param = (scale.parent_tokens + scale.main) / scale.child_params
    return Finding("F4", "At equal total tokens, fine-grained pruning keeps an advantage while coarse structured "
                   "pruning is matched or beaten by S_{P+N}",
                   "avg acc P200-R50 vs S250 at r = 0.5: Minitron-Depth 64.4 vs 66.2, Sheared-LLaMA 65.9 vs 65.3, "
                   "SparseGPT 2:4 66.7 vs 67.1, SparseGPT 67.5 vs 66.3; Minitron-Depth val loss P200-R50 2.54, "
                   "S250 2.49.", verdict, evidence,
                   f"S_{{P+N}} sees about {tokens_per_param:.2g} tokens per child parameter here against about 55 "
                   f"for the paper's 4.5B child on 250B tokens; {scale.parent_text()}.",
                   f"holds if, at every setting-2 ratio, SparseGPT (unstructured) has Δ loss > {tolerance:g} and "
                   f"Minitron-Depth has Δ loss ≤ {tolerance:g} (report.match_tolerance), for those of the two "
                   "that were run.")


def f5_equal_flops(s3: pd.DataFrame, scale: Scale, configured: bool) -> Finding:
    pairs = s3.dropna(subset=["delta_loss"])
    evidence = [f"{display_name(r.method)} r={r.ratio:g}: P-R_N {r.retrain_loss:.3f} vs S_F {r.scratch_flops_loss:.3f} "
                f"on {approx_tokens(r.scratch_flops_tokens) if pd.notna(r.scratch_flops_tokens) else '–'} "
                f"tokens, Δ {_d(r.delta_loss)} ({_pp(r.delta_acc)})" for r in pairs.itertuples()]
    if not configured:
        verdict, evidence = TOO_FEW, ["setting 3 is off (budgets.setting3_ratios is empty)"]
    else:
        verdict, losers = _verdict_all_positive(pairs, len(s3))
        if losers:
            evidence.append("S_F matches or wins at: " + ", ".join(losers))
    return Finding("F5", "Extension (not a claim of the paper): pruning still wins when scratch gets the FLOPs of "
                   "the whole pruning pipeline", "no setting 3 in the paper.", verdict, evidence,
                   f"FLOPs = 6·N·D as stated in tables/setting3.md; {scale.parent_text()}.",
                   "holds if P-R_N has Δ loss > 0 against S_F at every setting-3 point that has both runs.")


def findings(s1, scaling, s2, s3, grid: Grid, runs: pd.DataFrame, parent: pd.Series | None,
             tolerance: float) -> list[Finding]:
    scale = Scale.of(grid, runs, parent)
    return [f1_equal_tokens(s1, scale), f2_narrows_with_tokens(scaling, grid, scale),
            f3_narrows_with_ratio(s1, scale), f4_equal_total_tokens(s2, scale, tolerance),
            f5_equal_flops(s3, scale, bool(grid.setting3_ratios))]


def findings_markdown(items: list[Finding], grid: Grid) -> str:
    head = [f"# Findings of the paper, tested on study `{grid.study}`", "",
            "Generated by the report stage (python -m pvs.report) from this run's evaluation files; do not edit. "
            "Δ loss = S − P-R (> 0: the pruned model wins); runs with several seeds enter as their mean.", "",
            "| finding | verdict |", "|---|---|"]
    head += [f"| {f.key}: {f.claim} | {f.verdict} |" for f in items]
    return "\n".join(head + [""] + [f.markdown() for f in items])
