"""Uncertainty of a gap over seeds, and the rule every verdict of the report follows.

A gap Δ compares P-R_N with a scratch arm at one grid point (Δ loss = S − P-R, Δ acc = P-R − S; > 0: pruning
wins). With several seeds (``seeds: K``; the seed-k run of P-R_N and the seed-k run of the scratch arm share
the seed config.seed + k):

* **paired** when both arms have exactly the same seeds: Δ = mean over seeds of the per-seed differences,
  SE = sample std of those differences / sqrt(n), n = the number of seeds;
* **unpaired** otherwise (seeds missing on one side, or not recorded): Δ = difference of the two arms' means,
  SE = sqrt(s_a² / n_a + s_b² / n_b) (Welch), defined only when both arms have two or more seeds;
  n = min(n_a, n_b);
* **n = 1**: no noise estimate (SE undefined).

RULE (the wording findings.md states): a gap counts as a win or a loss only when |mean Δ| > 2 SE with
n ≥ 2; otherwise it is "within noise". With n = 1 there is no noise estimate: the point is reported as
"no noise estimate (n=1)" and counted by the sign of Δ (so a single-seed study keeps the plain sign rule).
A comparison against a threshold t (report.match_tolerance, or a second gap) applies the same rule to Δ − t.

Written as ``Δ +0.123 ± 0.045 (n=3)`` (± is the SE), ``Δ +0.123 ± 0.045 (n=3, unpaired)``, or
``Δ +0.123, no noise estimate (n=1)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

RULE = ("a gap counts as a win or a loss only when |mean Δ| > 2 SE with n ≥ 2 seeds (SE = standard error of "
        "the mean Δ over seeds, from the per-seed differences where both arms share their seeds, else Welch's "
        "from the two arms' standard errors); otherwise it is within noise. With n = 1 there is no noise "
        "estimate: the point is reported as \"no noise estimate (n=1)\" and counted by the sign of Δ.")
Z = 2.0                                         # a gap beyond Z standard errors is not noise
WIN, LOSE, NOISE, TIE = "win", "loss", "within noise", "tie"
NO_NOISE = "no noise estimate (n=1)"


@dataclass(frozen=True)
class Gap:
    """A mean Δ over seeds with its standard error (NaN when undefined) and n."""
    mean: float
    se: float = float("nan")
    n: int = 0
    paired: bool = False

    @property
    def present(self) -> bool:
        return self.n > 0 and not pd.isna(self.mean)

    @property
    def noisy(self) -> bool:
        """Whether the gap has a noise estimate (n ≥ 2 and a finite SE)."""
        return self.present and self.n >= 2 and math.isfinite(self.se)

    def side(self, threshold: float = 0.0) -> int:
        """+1 if Δ − threshold > 2 SE, −1 if < −2 SE, 0 within noise; by its sign when there is no noise
        estimate (0 only when Δ equals the threshold)."""
        x = self.mean - threshold
        margin = Z * self.se if self.noisy else 0.0
        if math.isclose(x, 0.0, abs_tol=1e-9) and not self.noisy:
            return 0
        return 1 if x > margin else (-1 if x < -margin else 0)

    def call(self, threshold: float = 0.0) -> str | None:
        """'win', 'loss', 'within noise' or 'tie' (n = 1 and Δ equal to the threshold); None without a gap."""
        if not self.present:
            return None
        side = self.side(threshold)
        if side == 0:
            return NOISE if self.noisy else TIE
        return WIN if side > 0 else LOSE

    def minus(self, other: "Gap") -> "Gap":
        """self − other for two independent gaps (different budgets or ratios): SEs add in quadrature."""
        se = math.hypot(self.se, other.se) if self.noisy and other.noisy else float("nan")
        return Gap(self.mean - other.mean, se, min(self.n, other.n), False)

    def text(self, spec: str = "+.3f", scale: float = 1.0, unit: str = "") -> str:
        """'Δ +0.123 ± 0.045 (n=3)', 'Δ +0.123 ± 0.045 (n=3, unpaired)', 'Δ +0.123, no noise estimate (n=1)'."""
        if not self.present:
            return "Δ –"
        value = format(self.mean * scale, spec) + unit
        if not self.noisy:
            return f"Δ {value}, {NO_NOISE}"
        se = format(self.se * scale, spec.lstrip("+")) + unit
        return f"Δ {value} ± {se} (n={self.n}{'' if self.paired else ', unpaired'})"


def unpaired(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> Gap:
    """a − b from each arm's mean, sample std and seed count (Welch's SE; undefined below 2 seeds a side)."""
    if not n_a or not n_b or pd.isna(mean_a) or pd.isna(mean_b):
        return Gap(float("nan"))
    se = math.sqrt(std_a ** 2 / n_a + std_b ** 2 / n_b) if min(n_a, n_b) >= 2 else float("nan")
    return Gap(float(mean_a - mean_b), se, int(min(n_a, n_b)), False)


def _pairs(a: pd.Series, b: pd.Series) -> bool:
    index = [a.index, b.index]
    return all(i.notna().all() and i.is_unique for i in index) and set(a.index) == set(b.index)


def gap(a: pd.Series, b: pd.Series) -> Gap:
    """Δ = a − b from per-seed values (Series indexed by seed; NaN values dropped): paired when the seeds
    match, unpaired otherwise."""
    a, b = a.dropna().astype(float), b.dropna().astype(float)
    if a.empty or b.empty:
        return Gap(float("nan"))
    if _pairs(a, b):
        d = a - b.reindex(a.index)
        n = len(d)
        se = float(d.std(ddof=1)) / math.sqrt(n) if n >= 2 else float("nan")
        return Gap(float(d.mean()), se, n, True)
    return unpaired(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))


def se_of_mean(std, n):
    """Standard error of an arm's mean from its seed std and count (NaN below two seeds)."""
    std, n = pd.Series(std, dtype="float64"), pd.Series(n, dtype="float64")
    return (std / n.pow(0.5)).where(n >= 2)
