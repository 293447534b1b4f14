"""Findings: each claim of the paper tested on this run's numbers, with a verdict and a scale caveat.

The report stage writes ``results/findings.md`` from the setting tables (pvs.report.tables); nothing in it is
written by hand. Verdicts are "holds", "does not hold", "within noise" or "not enough runs"; the rules are
stated next to each finding. Losses decide (the paper's Figure 1 plots validation loss); accuracies are
shown beside. Δ loss = S − P-R, so Δ > 0 means the pruned model wins.

Every Δ is a mean over seeds with its standard error and n, written ``Δ +0.123 ± 0.045 (n=3)``
(pvs.report.uncertainty). Verdict rule (uncertainty.RULE): a gap counts as a win or a loss only when
|mean Δ| > 2 SE with n ≥ 2 seeds; otherwise it is "within noise". With n = 1 there is no noise estimate:
the point is reported as "no noise estimate (n=1)" and counted by the sign of Δ, so a single-seed study
gets the plain sign verdicts. A claim that is contradicted at some point "does not hold"; one that is not
contradicted but not shown beyond noise everywhere is "within noise".

  F0  the parent is below every from-scratch run at P tokens (pvs.report.parent_check); if not, the
      parent is undertrained and the comparisons do not test the paper's regime
  F1  setting 1: P-R_N beats S_N for every method and ratio (at the main budget)
  F2  setting 1: the gap narrows as N grows (token-scaling curve at the scaling ratio)
  F3  setting 1: the gap narrows as the ratio rises (main budget)
  F4  setting 2: fine-grained pruning keeps an advantage over S_{P+N}; coarse structured pruning is
      matched or beaten (report.match_tolerance, plus noise)
  F5  setting 3 (an extension, not a claim of the paper): P-R_N beats S_F, the scratch run given the
      FLOPs of the whole pruning pipeline
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pvs.budget import approx_tokens, format_tokens
from pvs.prune.registry import GRANULARITY_ORDER, display_name
from pvs.report.parent_check import UNDERTRAINED, Check
from pvs.report.tables import gap_of
from pvs.report.uncertainty import LOSE, NO_NOISE, NOISE, RULE, TIE, Gap
from pvs.study import Grid

HOLDS, FAILS, WITHIN_NOISE, TOO_FEW = "holds", "does not hold", NOISE, "not enough runs"
FINE, COARSE = "sparsegpt", "minitron_depth"       # the paper's two ends of the granularity axis
SHOWN = 8                                          # F0 lists at most this many runs below the parent


@dataclass
class Finding:
    key: str
    claim: str
    paper: str
    verdict: str
    evidence: list[str]
    caveat: str
    rule: str
    noise: str = ""            # how many points are within noise or have no noise estimate

    @property
    def headline(self) -> str:
        return self.verdict + (f" ({self.noise})" if self.noise else "")

    def markdown(self) -> str:
        lines = [f"## {self.key}. {self.claim}", "", f"**Verdict: {self.headline}.** Rule: {self.rule}", "",
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


def _acc(g: Gap) -> str:
    """The accuracy gap beside a loss gap: 'acc +4.0 ± 1.2 pp' (SE where there is a noise estimate)."""
    if not g.present:
        return "acc –"
    return f"acc {100 * g.mean:+.1f}" + (f" ± {100 * g.se:.1f}" if g.noisy else "") + " pp"


def _point(row, prefix: str = "") -> str:
    """'r=0.5 Δ +0.200 ± 0.045 (n=3) (acc +4.0 ± 1.0 pp)'."""
    return f"{prefix}{gap_of(row).text()} ({_acc(gap_of(row, 'acc'))})"


def _noise_note(gaps: list[Gap], noise: int | None = None) -> str:
    """'k of n points within noise; j of n points with no noise estimate (n=1), counted by sign'."""
    present = [g for g in gaps if g.present]
    noise = sum(g.noisy and g.side() == 0 for g in present) if noise is None else noise
    single = sum(not g.noisy for g in present)
    parts = [f"{noise} of {len(present)} points {NOISE}"] if noise else []
    if single:
        parts.append(f"{single} of {len(present)} points with {NO_NOISE}, counted by sign")
    return "; ".join(parts)


def _name(row) -> str:
    return f"{display_name(row.method)} r={row.ratio:g}"


def _all_wins(pairs: pd.DataFrame, total: int, rival: str) -> tuple[str, list[str], str]:
    """holds when every present point is a win under the verdict rule (and at least half the grid points
    are present); does not hold when any is a loss (or a tie, n = 1); within noise otherwise."""
    if len(pairs) == 0 or 2 * len(pairs) < total:
        return TOO_FEW, [], ""
    calls = [(_name(r), gap_of(r).call()) for r in pairs.itertuples()]
    losers = [n for n, c in calls if c in (LOSE, TIE)]
    noisy = [n for n, c in calls if c == NOISE]
    evidence = ([f"{rival} matches or wins at: " + ", ".join(losers)] if losers else []) + \
               ([f"{NOISE} (|Δ| ≤ 2 SE) at: " + ", ".join(noisy)] if noisy else [])
    verdict = FAILS if losers else (WITHIN_NOISE if noisy else HOLDS)
    return verdict, evidence, _noise_note([gap_of(r) for r in pairs.itertuples()])


def f1_equal_tokens(s1: pd.DataFrame, scale: Scale) -> Finding:
    pairs = s1.dropna(subset=["delta_loss"])
    verdict, extra, noise = _all_wins(pairs, len(s1), "scratch")
    wins = sum(gap_of(r).call() == "win" for r in pairs.itertuples())
    evidence = [f"{len(pairs)} of {len(s1)} method × ratio points have both P-R_N and S_N at N = "
                f"{format_tokens(scale.main)}; pruning wins (verdict rule) at {wins}."]
    evidence += [f"{display_name(m)}: " + ", ".join(_point(r, f"r={r.ratio:g} ") for r in rows.itertuples())
                 for m, rows in pairs.groupby("method", sort=False)]
    return Finding("F1", "At equal training tokens, pruned initialization beats random initialization for every "
                   "method and ratio", "P-R_N < S_N in validation loss for all six methods at r = 0.5–0.8 and "
                   "every N from 10B to 500B.", verdict, evidence + extra,
                   f"{scale.parent_text()}; small models here see far fewer tokens per parameter.",
                   "holds if Δ loss is a win at every grid point that has both runs (and at least half of them "
                   "do): Δ > 2 SE with n ≥ 2 seeds, Δ > 0 with n = 1; does not hold if any point is a loss or a "
                   "tie; within noise if none is but some |Δ| ≤ 2 SE.", noise)


def _narrowing(rows: pd.DataFrame, by: str) -> tuple[str, Gap] | None:
    """'narrows', 'does not narrow' or 'within noise' from the change Δ(first) − Δ(last) and its SE."""
    rows = rows.dropna(subset=["delta_loss"]).sort_values(by)
    if len(rows) < 2:
        return None
    change = gap_of(rows.iloc[0]).minus(gap_of(rows.iloc[-1]))
    side = change.side()
    return ("narrows" if side > 0 else (NOISE if side == 0 and change.noisy else "does not narrow")), change


def _narrow_finding(table: pd.DataFrame, by: str, unit) -> tuple[str, list[str], str]:
    evidence, labels, changes = [], [], []
    for method, rows in table.groupby("method", sort=False):
        result = _narrowing(rows, by)
        if result is None:
            continue
        label, change = result
        labels.append(label)
        changes.append(change)
        points = rows.dropna(subset=["delta_loss"]).sort_values(by)
        detail = f"; first − last: {change.text()}" if change.noisy else ""
        evidence.append(f"{display_name(method)}: " + " → ".join(f"{unit(getattr(r, by))} {gap_of(r).text()}"
                                                                 for r in points.itertuples())
                        + f" ({label}{detail})")
    if not labels:
        return TOO_FEW, ["no method has the gap at two or more points"], ""
    verdict = FAILS if "does not narrow" in labels else (WITHIN_NOISE if NOISE in labels else HOLDS)
    return verdict, evidence, _noise_note(changes).replace("points", "methods")


NARROW_RULE = ("Δ(first) − Δ(last) > 2 SE (SE = the two gaps' SEs in quadrature) with n ≥ 2 seeds at both ends, "
               "or Δ(last) < Δ(first) with n = 1; does not narrow if the change is below −2 SE (n = 1: not "
               "positive); within noise otherwise.")


def f2_narrows_with_tokens(scaling: pd.DataFrame, grid: Grid, scale: Scale) -> Finding:
    verdict, evidence, noise = _narrow_finding(scaling, "budget", lambda n: f"N={format_tokens(int(n))}")
    span = max(scale.budgets) / min(scale.budgets) if scale.budgets else float("nan")
    return Finding("F2", "The pruned-vs-scratch gap narrows as the retraining budget N grows",
                   "at r = 0.5, Δ loss 0.39 → 0.04 for Minitron-Depth and 0.49 → 0.09 for Minitron-Width from "
                   "N = 10B to 500B.", verdict, evidence,
                   f"budgets here span {span:.0f}× ({', '.join(format_tokens(b) for b in scale.budgets)}) at "
                   f"r = {grid.scaling_ratio:g} against 50× (10B–500B) in the paper; {scale.parent_text()}.",
                   "holds if the gap narrows for every method with two or more budgets, from the smallest to the "
                   "largest N: " + NARROW_RULE, noise)


def f3_narrows_with_ratio(s1: pd.DataFrame, scale: Scale) -> Finding:
    verdict, evidence, noise = _narrow_finding(s1, "ratio", lambda r: f"r={r:g}")
    return Finding("F3", "The gap narrows as the pruning ratio rises, nearly vanishing at 0.8",
                   "the advantage of pruned initialization shrinks from r = 0.5 to 0.8 and nearly vanishes at 0.8.",
                   verdict, evidence,
                   f"ratios {', '.join(f'{r:g}' for r in scale.ratios)} of {scale.parent_text()}; at high ratios a "
                   "tiny child has few parameters left to inherit.",
                   "holds if the gap narrows for every method with two or more ratios, from the lowest to the "
                   "highest ratio ('nearly vanishing' is shown by the numbers, not judged): " + NARROW_RULE, noise)


def _f4_check(method: str, g: Gap, tolerance: float) -> str:
    """'holds', 'does not hold' or 'within noise' for the fine (advantage) or coarse (matched) claim."""
    side = g.side(tolerance)
    if method == FINE:                    # keeps an advantage: Δ − tol > 2 SE
        return HOLDS if side > 0 else (FAILS if side < 0 or not g.noisy else WITHIN_NOISE)
    if side > 0:                          # coarse: pruning clearly beats scratch beyond the tolerance
        return FAILS
    return HOLDS if g.mean <= tolerance else WITHIN_NOISE


def f4_equal_total_tokens(s2: pd.DataFrame, scale: Scale, tolerance: float) -> Finding:
    pairs = s2.dropna(subset=["delta_loss"])
    evidence = [f"{_name(r)}: P-R_N {r.retrain_loss:.3f} vs S_{{P+N}} {r.scratch_total_loss:.3f}, {_point(r)}"
                for r in pairs.itertuples()]
    checks = []
    for ratio, rows in pairs.groupby("ratio"):
        for r in rows.itertuples():
            if r.method in (FINE, COARSE):
                checks.append((r, _f4_check(r.method, gap_of(r), tolerance)))
        if len(rows) >= 3:
            rank = rows.method.map({m: i for i, m in enumerate(GRANULARITY_ORDER)})
            evidence.append(f"r={ratio:g}: rank correlation of granularity (coarse → fine) with Δ loss = "
                            f"{rank.corr(rows.delta_loss, method='spearman'):+.2f}")
    evidence += [f"{_name(r)} ({'fine: keeps an advantage' if r.method == FINE else 'coarse: matched or beaten'}): "
                 f"{c}" for r, c in checks]
    results = [c for _, c in checks]
    verdict = TOO_FEW if not checks else (FAILS if FAILS in results else (WITHIN_NOISE if WITHIN_NOISE in results
                                                                          else HOLDS))
    noise = _noise_note([gap_of(r) for r, _ in checks], results.count(WITHIN_NOISE)) if checks else ""
    tokens_per_param = (scale.parent_tokens + scale.main) / scale.child_params
    return Finding("F4", "At equal total tokens, fine-grained pruning keeps an advantage while coarse structured "
                   "pruning is matched or beaten by S_{P+N}",
                   "avg acc P200-R50 vs S250 at r = 0.5: Minitron-Depth 64.4 vs 66.2, Sheared-LLaMA 65.9 vs 65.3, "
                   "SparseGPT 2:4 66.7 vs 67.1, SparseGPT 67.5 vs 66.3; Minitron-Depth val loss P200-R50 2.54, "
                   "S250 2.49.", verdict, evidence,
                   f"S_{{P+N}} sees about {tokens_per_param:.2g} tokens per child parameter here against about 55 "
                   f"for the paper's 4.5B child on 250B tokens; {scale.parent_text()}.",
                   f"with t = report.match_tolerance = {tolerance:g}: at every setting-2 ratio, SparseGPT "
                   "(unstructured) keeps an advantage, Δ loss − t > 2 SE (does not hold if Δ − t < −2 SE, within "
                   "noise between), and Minitron-Depth is matched or beaten, Δ loss ≤ t (does not hold if Δ − t > "
                   "2 SE, within noise between); with n = 1, SE = 0 (Δ > t, Δ ≤ t); for those of the two that were "
                   "run.", noise)


def f5_equal_flops(s3: pd.DataFrame, scale: Scale, configured: bool) -> Finding:
    pairs = s3.dropna(subset=["delta_loss"])
    evidence = [f"{_name(r)}: P-R_N {r.retrain_loss:.3f} vs S_F {r.scratch_flops_loss:.3f} on "
                f"{approx_tokens(r.scratch_flops_tokens) if pd.notna(r.scratch_flops_tokens) else '–'} tokens, "
                f"{_point(r)}" for r in pairs.itertuples()]
    noise = ""
    if not configured:
        verdict, evidence = TOO_FEW, ["setting 3 is off (budgets.setting3_ratios is empty)"]
    else:
        verdict, extra, noise = _all_wins(pairs, len(s3), "S_F")
        evidence += extra
    return Finding("F5", "Extension (not a claim of the paper): pruning still wins when scratch gets the FLOPs of "
                   "the whole pruning pipeline", "no setting 3 in the paper.", verdict, evidence,
                   f"FLOPs = 6·N·D as stated in tables/setting3.md; {scale.parent_text()}.",
                   "holds if P-R_N wins against S_F (verdict rule) at every setting-3 point that has both runs; "
                   "within noise if no point is a loss but some are within noise.", noise)


def f0_parent_check(check: Check, scale: Scale) -> Finding:
    P = format_tokens(check.parent_tokens)
    evidence = [] if check.parent_loss is None else [f"parent P at P = {P} tokens: val loss {check.parent_loss:.3f} "
                                                     f"({check.parent_source})."]
    if check.scratch:
        lowest = min(check.scratch, key=lambda cv: cv[1])
        evidence.append(f"{len(check.scratch)} from-scratch run(s) reach P on their learning curve; the lowest at P "
                        f"is {lowest[0].name()} with {lowest[1]:.3f}.")
        evidence += [f"below the parent at P: {c.name()} {v:.3f}" for c, v in check.below[:SHOWN]]
        if len(check.below) > SHOWN:
            evidence.append(f"and {len(check.below) - SHOWN} more from-scratch run(s) below the parent at P")
    if check.short:
        evidence.append(f"{len(check.short)} from-scratch run(s) have a curve that ends before P (not used).")
    passes = check.passes
    verdict = TOO_FEW if passes is None else (HOLDS if passes else FAILS)
    if passes is None:
        evidence.append("no from-scratch learning curve reaches P tokens" if check.parent_loss is not None
                        else "no parent evaluation")
    elif not passes:
        evidence.append(UNDERTRAINED)
    return Finding("F0", "The parent is the better model at its own token count P (a parent worth pruning)",
                   "the 8B parent on 200B tokens is far below any smaller model trained from scratch on 200B "
                   "tokens; every comparison assumes such a parent.", verdict, evidence,
                   f"{scale.parent_text()}; a scratch run at P tokens is mid-schedule (its LR not yet decayed), "
                   "which favours the parent.",
                   "holds if, at P = parent.tokens, the parent's validation loss is below that of every "
                   "from-scratch run (S_N, S_{P+N}, S_F, every seed) whose learning curve reaches P, the curve "
                   "(metrics.jsonl val_loss) interpolated linearly at P; a curve that ends before P is not used; "
                   "not enough runs without any. Noise (not part of the verdict): the lowest from-scratch "
                   "configuration (same shape, tokens and LR; S_N and S_{P+N} on the same tokens pooled) as mean "
                   "± SE at P against the parent, beyond noise when the gap exceeds 2 SE.", check.noise())


def findings(s1, scaling, s2, s3, grid: Grid, runs: pd.DataFrame, parent: pd.Series | None,
             tolerance: float, check: Check | None = None) -> list[Finding]:
    scale = Scale.of(grid, runs, parent)
    check = check or Check(grid.parent_tokens, None, "no evaluation", [], [])
    return [f0_parent_check(check, scale), f1_equal_tokens(s1, scale), f2_narrows_with_tokens(scaling, grid, scale),
            f3_narrows_with_ratio(s1, scale), f4_equal_total_tokens(s2, scale, tolerance),
            f5_equal_flops(s3, scale, bool(grid.setting3_ratios))]


def findings_markdown(items: list[Finding], grid: Grid) -> str:
    head = [f"# Findings of the paper, tested on study `{grid.study}`", "",
            "Generated by the report stage (python -m pvs.report) from this run's evaluation files; do not edit. "
            "Δ loss = S − P-R (> 0: the pruned model wins). Every Δ is the mean over seeds ± its standard "
            "error (n seeds), written Δ +0.123 ± 0.045 (n=3); seeds are paired (the seed-k P-R_N run with the "
            "seed-k scratch run) where both arms have the same seeds, 'unpaired' otherwise.", "",
            f"Verdict rule: {RULE}", ""]
    f0 = next((f for f in items if f.key == "F0"), None)
    if f0 is not None and f0.verdict == FAILS:
        head += [f"**F0 fails. {UNDERTRAINED}**", ""]
    head += ["| finding | verdict | noise |", "|---|---|---|"]
    head += [f"| {f.key}: {f.claim} | {f.verdict} | {f.noise or '–'} |" for f in items]
    return "\n".join(head + [""] + [f.markdown() for f in items])
