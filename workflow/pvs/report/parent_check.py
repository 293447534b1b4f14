"""F0, the check findings.md opens with: is the parent the best model at its own token count?

In the paper the parent (8B, P = 200B tokens) is far better at P tokens than any smaller model trained from
scratch on the same P tokens. When a miniature's parent is not (too few steps, a poor LR), every child
inherits a weak start and the comparisons do not test the paper's regime.

Rule: at P = parent.tokens, the parent's validation loss is below the validation loss at P tokens of every
from-scratch run (S_N, S_{P+N}, S_F; every seed) whose learning curve reaches P. Curves are the runs'
``metrics.jsonl`` records (tokens, val_loss: the trainer's validation windows), embedded by pvs.evaluate as
``curve`` = [[tokens, val_loss], ...]; a run's loss at P is interpolated linearly between the two curve
points around P (exact when a point lies at P); a run whose curve ends before P is not used. The parent's
loss at P is read from its own curve the same way (its last point when its whole-step budget ends just
short of P), or, without a curve, its evaluated val_loss. Without a scratch curve reaching P the verdict is
"not enough runs". A scratch run at P is still mid-schedule (its LR not yet decayed), which favours the parent.

Noise (reported beside the verdict, which stays the strict rule above): the runs that reach P are grouped into
configurations, the same child shape (method, ratio) trained on the same tokens at the same LR; S_N and S_{P+N}
on the same tokens read the same splits and differ only in their seed stream, so they pool. For the group with
the lowest mean at P, the report gives mean ± SE over its runs and whether the parent is below it by more than
2 SE (beyond noise), above it by more than 2 SE, or within noise; the parent is one run, so its own seed noise is
not in the SE.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pandas as pd

from pvs.budget import format_tokens
from pvs.prune.registry import display_name
from pvs.report.uncertainty import Gap, se_of_mean
from pvs.study import ARMS, run_label

FROM_SCRATCH = tuple(name for name, arm in ARMS.items() if arm.init == "shape")   # S_N, S_{P+N}, S_F


@dataclass(frozen=True)
class Curve:
    """The learning curve of one evaluated model (one seed), sorted by tokens."""
    arm: str
    method: str | None
    ratio: float | None
    budget: int | None
    train_tokens: int | None
    seed: int | None
    points: tuple[tuple[float, float], ...]

    @classmethod
    def of(cls, record: dict) -> "Curve | None":
        points = record.get("_curve")
        if not points:
            return None
        return cls(record["arm"], record.get("method"), record.get("ratio"), record.get("budget"),
                   record.get("train_tokens"), record.get("seed"),
                   tuple(sorted((float(t), float(v)) for t, v in points)))

    def name(self) -> str:
        label = run_label(self.arm, self.budget, self.train_tokens)
        where = "" if self.method is None else f" {display_name(self.method)} r={self.ratio:g}"
        return f"{label}{where} seed {self.seed}"

    def at(self, tokens: float) -> float | None:
        """Val loss at ``tokens``, linear between the neighbouring points; None when the curve ends before."""
        return interpolate(self.points, tokens)


def interpolate(points, x: float) -> float | None:
    """Linear interpolation of sorted (x, y) points at ``x``; None outside [first x, last x]."""
    if not points or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]                                         # a single point exactly at x


def parent_loss_at(curve: Curve | None, tokens: int, evaluated: float | None) -> tuple[float | None, str]:
    """The parent's loss at P and where it comes from."""
    if curve is not None:
        value = curve.at(tokens)
        if value is not None:
            return value, "its learning curve at P"
        last_tokens, last = curve.points[-1]
        if last_tokens <= tokens:
            return last, f"the last point of its learning curve ({format_tokens(int(last_tokens))} tokens)"
    if evaluated is None or evaluated != evaluated:
        return None, "no evaluation"
    return evaluated, "its evaluated val_loss (no learning curve)"


@dataclass
class Check:
    """The outcome of F0: the parent's loss at P and every from-scratch run's loss at P."""
    parent_tokens: int
    parent_loss: float | None
    parent_source: str
    scratch: list[tuple[Curve, float]]          # runs whose curve reaches P, with their loss at P
    short: list[Curve]                          # runs whose curve ends before P (not used)

    @classmethod
    def of(cls, curves: list[Curve], parent_tokens: int, parent_evaluated: float | None) -> "Check":
        parents = [c for c in curves if c.arm == "parent"]
        parent = next((c for c in parents if c.train_tokens == parent_tokens), parents[0] if parents else None)
        loss, source = parent_loss_at(parent, parent_tokens, parent_evaluated)
        scratch = [c for c in curves if c.arm in FROM_SCRATCH]
        reached = [(c, c.at(parent_tokens)) for c in scratch]
        return cls(parent_tokens, loss, source, [(c, v) for c, v in reached if v is not None],
                   [c for c, v in reached if v is None])

    @property
    def below(self) -> list[tuple[Curve, float]]:
        """The from-scratch runs at or below the parent at P tokens, lowest first."""
        return sorted(((c, v) for c, v in self.scratch if v <= self.parent_loss), key=lambda cv: cv[1])

    def noise(self) -> str:
        """The noise line of F0 ('' without a parent or a from-scratch run reaching P)."""
        if self.parent_loss is None or not self.scratch:
            return ""
        return noise_text(self.parent_loss, configurations(self.scratch)[0])

    @property
    def passes(self) -> bool | None:
        """True when the parent is below every from-scratch run at P; None without a parent or such a run."""
        if self.parent_loss is None or not self.scratch:
            return None
        return not self.below


@dataclass(frozen=True)
class Configuration:
    """The from-scratch runs of one configuration (child shape, tokens, LR) at P tokens, every arm and seed."""
    method: str | None
    ratio: float | None
    train_tokens: int | None
    runs: tuple[tuple[Curve, float], ...]

    @property
    def mean(self) -> float:
        return sum(v for _, v in self.runs) / len(self.runs)

    def above(self, parent_loss: float) -> Gap:
        """Δ = this configuration's mean at P − the parent's loss at P, with the SE of that mean over its runs
        (the parent is one run: its own seed noise is not in the SE)."""
        values = pd.Series([v for _, v in self.runs], dtype="float64")
        se = float(se_of_mean(values.std(ddof=1), len(values)).iloc[0])
        return Gap(float(values.mean()) - parent_loss, se, len(values), paired=False)

    def name(self) -> str:
        counts = Counter(ARMS[curve.arm].short for curve, _ in self.runs)
        arms = ", ".join(f"{short} × {n}" for short, n in counts.items())
        where = "" if self.method is None else f"{display_name(self.method)} r={self.ratio:g} "
        return f"{where}on {format_tokens(self.train_tokens)} tokens ({arms})"


def configurations(scratch: list[tuple[Curve, float]]) -> list[Configuration]:
    """``scratch`` grouped by (method, ratio, train tokens), lowest mean at P first. Every from-scratch arm of a
    method trains at one LR (the sweep's scratch.<granularity> key, or train.lr_per_arm's scratch), so the
    group is one configuration."""
    groups: dict[tuple, list[tuple[Curve, float]]] = {}
    for curve, value in scratch:
        groups.setdefault((curve.method, curve.ratio, curve.train_tokens), []).append((curve, value))
    out = [Configuration(m, r, t, tuple(runs)) for (m, r, t), runs in groups.items()]
    return sorted(out, key=lambda g: g.mean)


SIDES = {1: "parent below it beyond noise", -1: "a from-scratch configuration below the parent beyond noise",
         0: "within noise"}


def noise_text(parent_loss: float, lowest: Configuration) -> str:
    """F0's noise line: the lowest configuration's mean at P against the parent, by the report's 2-SE rule
    (pvs.report.uncertainty; with one run, by the sign)."""
    gap = lowest.above(parent_loss)
    where = SIDES[gap.side()] if gap.noisy else "by its sign only: " + SIDES[gap.side()].replace(" beyond noise", "")
    return (f"lowest configuration at P: {lowest.name()}, mean {lowest.mean:.3f}; it − parent {gap.text()}: "
            f"{where}; the parent's own seed noise is not measured (one run)")


UNDERTRAINED = ("The parent is undertrained: at its own token count P, a model trained from scratch reaches a lower "
                "validation loss, so the comparisons below do not test the paper's regime (a parent far better "
                "than any scratch run at P tokens); read them as results about this regime only.")
