"""The learning-rate sweep, defined once: the LR keys, which sweep runs exist, their paths, and the LR every
run of the study trains with. Read by the rules (workflow/rules/lr.smk, train.smk), the trainer's LR
chooser (``python -m pvs.train.lr_choose``), ``pvs.regime`` and the report.

**Keys.** One peak LR per arm family and granularity::

    parent                 the parent P
    retrain.<g>            every P-R_N whose method has granularity g
    scratch.<g>            every from-scratch arm of granularity g: S_N, S_{P+N} and S_F share it

with g the registry's ``lr_group`` (``pvs.prune.registry.LR_GROUPS``: depth, width, sparse). The scratch key
is swept with S_N runs and its LR applies to S_{P+N} and S_F too (they differ from S_N only in tokens).

**Where a key's LR comes from** (``Sweep.source``): ``fixed`` (``train.lr_per_arm``), ``sweep`` (the family
is in ``train.lr_sweep_arms``, ``train.lr_sweep`` is not empty and, for a child key, its granularity has a
sweep method), else ``train.lr``.

**Sweep runs** (``Sweep.runs``): for a swept key, one run per LR of ``train.lr_sweep``: the parent on
``lr_sweep_parent_tokens`` (default parent.tokens) from random init; a child key's arm (retrain or scratch)
on ``lr_sweep_tokens`` (default budgets.main) from the pruned child of its sweep method (``lr_sweep_methods``,
default the first configured method of each granularity) at ``lr_sweep_ratio`` (default
budgets.scaling_ratio). Each run trains as the study's run of that arm would (same recipe, splits, seed) and
reports its final loss on the development split (``data.splits.dev``), which nothing trains on.

**Paths** (all under ``results_dir``)::

    lr/sweep/parent/lr{lr}.json                         a parent sweep run's metrics (final dev loss, LR, tokens)
    lr/sweep/{arm}/{method}/r{ratio}/lr{lr}.json        a child sweep run's metrics (arm: retrain or scratch)
    lr/sweep/.../lr{lr}/                                its model: temp(), deleted once the metrics exist
                                                        (only the dev loss is used; at scale each is a full model)
    lr/chosen/{key}.json                                the chosen LR of one swept key (lowest dev loss; ties:
                                                        the smaller LR) with the loss of every LR
    lr/chosen.json                                      every key: lr, source (sweep | fixed | train.lr), losses
    lr/sweep.md, lr/sweep.csv                           the sweep table: dev loss against LR per key

A train job of a swept key has its ``lr/chosen/{key}.json`` as an input (``--lr-from``); a fixed key's LR
is a rule param (``--lr``). So a changed sweep, or a changed fixed LR, re-runs exactly that key's jobs.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pvs.budget import parse_tokens
from pvs.prune.registry import LR_GROUPS, METHODS

SWEEP_ARMS = ("parent", "retrain", "scratch")           # the families the sweep tunes (their run's arm)
FAMILY = {"parent": "parent", "retrain": "retrain", "scratch": "scratch", "scratch_total": "scratch",
          "scratch_flops": "scratch"}
# the train keys of the sweep: they decide which LR a run gets, never its result otherwise, so they are out of
# pvs.config.result_recipe (a job's params carry its own LR instead, Sweep.recipe)
SWEEP_TRAIN_KEYS = ("lr_sweep", "lr_sweep_arms", "lr_sweep_tokens", "lr_sweep_parent_tokens", "lr_sweep_methods",
                    "lr_sweep_ratio", "lr_per_arm")
SWEEP_DIR, CHOSEN_DIR = "lr/sweep", "lr/chosen"
CHOSEN_JSON, SWEEP_MD, SWEEP_CSV = "lr/chosen.json", "lr/sweep.md", "lr/sweep.csv"


def format_lr(lr: float) -> str:
    """An LR as it appears in paths and tables: 0.003, 1e-05 (float() reads it back exactly)."""
    return f"{float(lr):g}" if float(f"{float(lr):g}") == float(lr) else repr(float(lr))


def lr_group(method: str) -> str:
    return METHODS[method].lr_group


def lr_key(arm: str, method: str | None = None) -> str:
    """The LR key of a run: parent, retrain.<granularity> or scratch.<granularity>."""
    family = FAMILY[arm]
    return "parent" if family == "parent" else f"{family}.{lr_group(method)}"


@dataclass(frozen=True)
class SweepRun:
    """One run of the sweep: ``arm`` parent, retrain or scratch; ``ratio`` spelled as in the config."""
    arm: str
    lr: float
    method: str | None = None
    ratio: float | None = None

    @property
    def key(self) -> str:
        return lr_key(self.arm, self.method)

    @property
    def model_path(self) -> str:
        if self.arm == "parent":
            return f"{SWEEP_DIR}/parent/lr{format_lr(self.lr)}"
        return f"{SWEEP_DIR}/{self.arm}/{self.method}/r{self.ratio}/lr{format_lr(self.lr)}"

    @property
    def metrics_path(self) -> str:
        return self.model_path + ".json"


def chosen_path(key: str) -> str:
    return f"{CHOSEN_DIR}/{key}.json"


def _given(cfg: dict) -> dict:
    """The families train.lr_per_arm fixes (the schema fills null for the others)."""
    return {family: value for family, value in cfg["train"]["lr_per_arm"].items() if value is not None}


def _fixed(cfg: dict) -> dict[str, float]:
    """train.lr_per_arm as {key: lr} over every granularity (a family's number applies to all of them)."""
    fixed = {}
    for family, value in _given(cfg).items():
        if family == "parent":
            fixed["parent"] = value
        elif isinstance(value, dict):
            fixed.update({f"{family}.{g}": lr for g, lr in value.items()})
        else:
            fixed.update({f"{family}.{g}": value for g in LR_GROUPS})
    return fixed


@dataclass(frozen=True)
class Sweep:
    """The sweep a config asks for (see the module docstring)."""
    lrs: tuple[float, ...]
    arms: tuple[str, ...]
    tokens: int
    parent_tokens: int
    methods: dict                   # granularity -> sweep method
    ratio: float
    fixed: dict                     # key -> fixed LR
    train_lr: float
    keys: tuple[str, ...]           # every key of the study's grid
    results_dir: str = "results"

    @classmethod
    def from_config(cls, cfg: dict) -> Sweep:
        train, grid_methods = cfg["train"], cfg["prune"]["methods"]
        groups = list(dict.fromkeys(lr_group(m) for m in grid_methods if m in METHODS))
        sweep_methods = train["lr_sweep_methods"]
        if sweep_methods is None:       # the first configured method of each granularity
            methods = {g: next(m for m in grid_methods if m in METHODS and lr_group(m) == g) for g in groups}
        else:
            methods = {lr_group(m): m for m in sweep_methods if m in METHODS}
        keys = (("parent",) if cfg["parent"]["source"] == "train" else ()) + tuple(
            f"{family}.{g}" for family in ("retrain", "scratch") for g in groups)
        ratio = train["lr_sweep_ratio"] if train["lr_sweep_ratio"] is not None else cfg["budgets"]["scaling_ratio"]
        tokens = train["lr_sweep_tokens"] if train["lr_sweep_tokens"] is not None else cfg["budgets"]["main"]
        parent_tokens = train["lr_sweep_parent_tokens"] if train["lr_sweep_parent_tokens"] is not None \
            else cfg["parent"]["tokens"]
        return cls(lrs=tuple(sorted(float(x) for x in train["lr_sweep"])), arms=tuple(train["lr_sweep_arms"]),
                   tokens=parse_tokens(tokens), parent_tokens=parse_tokens(parent_tokens), methods=methods,
                   ratio=ratio, fixed={k: v for k, v in _fixed(cfg).items() if k in keys}, train_lr=train["lr"],
                   keys=keys, results_dir=cfg["results_dir"].rstrip("/"))

    @property
    def active(self) -> bool:
        """Whether the study has an LR stage (lr/chosen.json): a sweep or a fixed LR per arm."""
        return bool(self.swept_keys or self.fixed)

    def family(self, key: str) -> str:
        return key.partition(".")[0]

    def swept(self, key: str) -> bool:
        family, _, group = key.partition(".")
        return (bool(self.lrs) and key not in self.fixed and family in self.arms
                and (family == "parent" or group in self.methods))

    @property
    def swept_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.keys if self.swept(k))

    def source(self, key: str) -> str:
        return "fixed" if key in self.fixed else "sweep" if self.swept(key) else "train.lr"

    def runs(self, key: str | None = None) -> list[SweepRun]:
        """The sweep runs of ``key`` (default: of every swept key), LRs ascending."""
        out = []
        for k in (self.swept_keys if key is None else (key,) if self.swept(key) else ()):
            family, _, group = k.partition(".")
            if family == "parent":
                out += [SweepRun("parent", lr) for lr in self.lrs]
            else:
                out += [SweepRun(family, lr, self.methods[group], self.ratio) for lr in self.lrs]
        return out

    def run_key(self, arm: str, method: str | None = None) -> str:
        return lr_key(arm, method)

    def lr_param(self, key: str):
        """What a train job's params hold for its LR: the fixed LR or train.lr, or 'swept' (the chosen file is an
        input then, and carries the change)."""
        return "swept" if self.swept(key) else self.fixed.get(key, self.train_lr)

    def recipe(self, recipe: dict, key: str) -> dict:
        """A train job's recipe params (``recipe`` = pvs.config.result_recipe of train): as is for a key on
        train.lr (no re-run of existing results), else with its own LR in place of train.lr, so a changed
        train.lr re-runs none of the swept or fixed jobs."""
        if self.source(key) == "train.lr":
            return recipe
        return {**{k: v for k, v in recipe.items() if k != "lr"}, "lr": self.lr_param(key)}

    def chosen(self) -> dict | None:
        """results_dir/lr/chosen.json when it exists (after the LR stage ran), else None."""
        path = Path(self.results_dir) / CHOSEN_JSON
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def lr_of(self, arm: str, method: str | None = None, chosen: dict | None = None):
        """The peak LR a run of ``arm`` trains with: fixed, train.lr, the chosen LR (from ``chosen`` or
        lr/chosen.json), or the string 'swept (pending)' before the sweep ran."""
        key = lr_key(arm, method)
        if not self.swept(key):
            return self.fixed.get(key, self.train_lr)
        chosen = self.chosen() if chosen is None else chosen
        entry = (chosen or {}).get("keys", {}).get(key)
        return entry["lr"] if entry and entry.get("source") == "sweep" else "swept (pending)"


def pick(metrics: list[dict]) -> dict:
    """The sweep record with the lowest dev loss; ties (and non-finite losses last) -> the smaller LR."""
    if not metrics:
        raise ValueError("no sweep metrics to choose from")

    def rank(m):
        loss = m["dev_loss"]
        return (loss if isinstance(loss, (int, float)) and math.isfinite(loss) else math.inf, m["lr"])
    return min(metrics, key=rank)


def config_errors(cfg: dict) -> list[str]:
    """The sweep keys' errors a schema cannot express (pvs.config runs them before any job)."""
    train, errors = cfg["train"], []
    methods = cfg["prune"]["methods"]
    for key in ("lr_sweep_tokens", "lr_sweep_parent_tokens"):
        if train[key] is not None:
            try:
                if parse_tokens(train[key]) <= 0:
                    errors.append(f"train.{key} = {train[key]!r}: must be a positive token count")
            except ValueError as e:
                errors.append(f"train.{key} = {train[key]!r}: {e}")
    if train["lr_sweep_methods"] is not None and train["lr_sweep"]:    # they only matter when the sweep runs
        seen = {}
        for i, method in enumerate(train["lr_sweep_methods"]):
            if method not in methods:
                errors.append(f"train.lr_sweep_methods[{i}] = {method!r}: not in prune.methods {methods}")
            elif lr_group(method) in seen:
                errors.append(f"train.lr_sweep_methods[{i}] = {method!r}: granularity {lr_group(method)!r} already "
                              f"swept with {seen[lr_group(method)]!r} (one sweep method per granularity)")
            else:
                seen[lr_group(method)] = method
    if train["lr_sweep"] and train["lr_sweep_ratio"] is not None and train["lr_sweep_ratio"] not in cfg["prune"]["ratios"]:
        errors.append(f"train.lr_sweep_ratio = {train['lr_sweep_ratio']!r}: must be one of prune.ratios "
                      f"{cfg['prune']['ratios']}")
    given = _given(cfg)
    for family, value in given.items():
        values = value.items() if isinstance(value, dict) and family != "parent" else [(None, value)]
        for group, lr in values:
            where = f"train.lr_per_arm.{family}" + (f".{group}" if group else "")
            if group is not None and group not in LR_GROUPS:
                errors.append(f"{where}: unknown granularity {group!r} (known: {', '.join(LR_GROUPS)})")
            elif isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
                errors.append(f"{where} = {lr!r}: a learning rate must be a number > 0")
    if cfg["parent"]["source"] != "train":
        if train["lr_sweep"] and "parent" in train["lr_sweep_arms"] and "parent" not in given:
            errors.append(f"train.lr_sweep_arms = {train['lr_sweep_arms']!r}: the parent cannot be swept when "
                          f"parent.source is {cfg['parent']['source']!r} (it is imported, not trained); "
                          "leave parent out of train.lr_sweep_arms")
        if "parent" in given:
            errors.append(f"train.lr_per_arm.parent = {given['parent']!r}: the parent is imported "
                          f"(parent.source is {cfg['parent']['source']!r}), it trains with no LR")
    return errors
