"""The study grid: which runs a config asks for, and where each one's files live.

Everything the Snakefile needs to know about the grid comes from here, so the grid can be listed and
tested without Snakemake:

    python -m pvs.study config.yaml          # prints every run of the study, one per line

Paths (all under ``results/``)::

    models/parent                                the parent P
    models/pruned/{method}/r{ratio}              one-shot pruned child
    models/{arm}/{method}/r{ratio}/N{budget}     arm in retrain (P-R_N), scratch (S_N), scratch_total (S_{P+N}),
                                                 scratch_flops (S_F: setting 3, the FLOPs of the P-R_N pipeline)
    models/{arm}/{method}/r{ratio}/N{budget}_seed{k}   the same run with the config's seed + k (k >= 1)
    eval/<same path as the model>.json           one results file per model

``seeds: K`` in the config trains setting 1 at the main budget (S_N and P-R_N, every method and ratio)
with K seeds: the config's seed (plain path) and seed + 1 ... seed + K - 1 (``_seed{k}`` paths).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from pvs.budget import format_tokens, parse_tokens
from pvs.config import load_config

TRAINED_ARMS = ("retrain", "scratch", "scratch_total", "scratch_flops")
ARM_ORDER = ("parent", "pruned") + TRAINED_ARMS


@dataclass(frozen=True, order=True)
class Run:
    """One model of the study. ``budget`` is the retraining budget N (None for parent, 0 for one-shot);
    ``replica`` k >= 1 is the same run trained with the config's seed + k."""

    arm: str
    method: str | None = None
    ratio: float | None = None
    budget: int | None = None
    replica: int = 0

    @property
    def model_path(self) -> str:
        if self.arm == "parent":
            return "models/parent"
        if self.arm == "pruned":
            return f"models/pruned/{self.method}/r{self.ratio}"
        suffix = f"_seed{self.replica}" if self.replica else ""
        return f"models/{self.arm}/{self.method}/r{self.ratio}/N{format_tokens(self.budget)}{suffix}"

    @property
    def eval_path(self) -> str:
        return "eval/" + self.model_path.removeprefix("models/") + ".json"

    @classmethod
    def from_model_path(cls, path: str) -> "Run":
        """Inverse of ``model_path`` ('models/' prefix optional)."""
        parts = path.removeprefix("models/").split("/")
        if parts == ["parent"]:
            return cls("parent")
        if parts[0] == "pruned" and len(parts) == 3:
            return cls("pruned", parts[1], float(parts[2].removeprefix("r")), 0)
        if parts[0] in TRAINED_ARMS and len(parts) == 4:
            budget, _, replica = parts[3].removeprefix("N").partition("_seed")
            return cls(parts[0], parts[1], float(parts[2].removeprefix("r")), parse_tokens(budget),
                       int(replica) if replica else 0)
        raise ValueError(f"{path!r} is not a model path of the study (see pvs.study)")

    def train_tokens(self, parent_tokens: int) -> int | None:
        """Tokens this model's own training run sees: N, P+N for S_{P+N}, P for the parent, 0 one-shot;
        None for S_F, whose tokens follow from the pruned child's parameters (pvs.compute)."""
        if self.arm == "scratch_flops":
            return None
        if self.arm == "parent":
            return parent_tokens
        if self.arm == "pruned":
            return 0
        return self.budget + (parent_tokens if self.arm == "scratch_total" else 0)


def canonical_budget(value) -> str:
    """The budget as it appears in paths: '300k', '1.3M'."""
    return format_tokens(parse_tokens(value))


def runs(cfg: dict) -> list[Run]:
    """Every model the config's study evaluates, without duplicates, in a stable order."""
    methods, ratios = cfg["prune"]["methods"], cfg["prune"]["ratios"]
    budgets = cfg["budgets"]
    main = parse_tokens(budgets["main"])
    grid = {Run("parent")}
    for method in methods:
        for ratio in ratios:
            grid.add(Run("pruned", method, ratio, 0))
            for k in range(cfg["seeds"]):
                grid |= {Run("retrain", method, ratio, main, k), Run("scratch", method, ratio, main, k)}
        for value in budgets["scaling"]:
            budget = parse_tokens(value)
            ratio = budgets["scaling_ratio"]
            grid |= {Run("retrain", method, ratio, budget), Run("scratch", method, ratio, budget)}
        for ratio in budgets["setting2_ratios"]:
            grid.add(Run("scratch_total", method, ratio, main))
        for ratio in budgets["setting3_ratios"]:
            grid.add(Run("scratch_flops", method, ratio, main))
    return sorted(grid, key=lambda r: (ARM_ORDER.index(r.arm), r.method or "", r.ratio or 0, r.budget or 0,
                                       r.replica))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvs.study", description="List every run of a study config.")
    parser.add_argument("config", help="study config (YAML)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    all_runs = runs(cfg)
    for run in all_runs:
        print(run.model_path)
    counts = {arm: sum(r.arm == arm for r in all_runs) for arm in ARM_ORDER}
    print(f"# {len(all_runs)} models: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
