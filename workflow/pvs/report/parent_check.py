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
"""
from __future__ import annotations

from dataclasses import dataclass

from pvs.budget import format_tokens
from pvs.prune.registry import display_name
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

    @property
    def passes(self) -> bool | None:
        """True when the parent is below every from-scratch run at P; None without a parent or such a run."""
        if self.parent_loss is None or not self.scratch:
            return None
        return not self.below


UNDERTRAINED = ("The parent is undertrained: at its own token count P, a model trained from scratch reaches a lower "
                "validation loss, so the comparisons below do not test the paper's regime (a parent far better "
                "than any scratch run at P tokens); read them as results about this regime only.")
