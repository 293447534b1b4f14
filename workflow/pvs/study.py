"""The study design, defined once: the arms, the grid of runs a config asks for, and the report's outputs.

    python -m pvs.study config.yaml          # prints every run of the study, one per line
    python -m pvs.study --regime config.yaml [--json]   # its regime beside the paper's (pvs.regime)

Every other part reads these facts from here: the trainer (what an arm reads and how it starts), the
rules (paths, wildcards, which runs exist), ``pvs.resources`` (tokens per job), the report (labels,
settings, output files). Nothing else spells an arm's splits, token rule or label.

**Arms** (``ARMS``)::

    arm            label     reads                        starts from                 trains on (token rule)
    parent         P         pretrain                     random init, parent.arch    P = parent.tokens
    pruned         P-R_0     (nothing: one-shot)          the pruning of P            0
    retrain        P-R_N     retrain (disjoint from P's)  the pruned child's weights  N
    scratch        S_N       pretrain + retrain, start    the child's shape (+ mask)  N
    scratch_total  S_{P+N}   pretrain + retrain, start    the child's shape (+ mask)  P + N      (setting 2)
    scratch_flops  S_F       pretrain + retrain, start    the child's shape (+ mask)  FLOP-matched to the
                                                                                    whole P-R_N pipeline (setting 3;
                                                                                    a budget file from pvs.compute)

**Settings** (``SETTINGS``): each compares ``retrain`` (P-R_N) at the main budget with a rival arm at its
ratios: setting 1 ``scratch`` at every ratio (plus the token-scaling curve over ``budgets.scaling`` at
``budgets.scaling_ratio``), setting 2 ``scratch_total`` at ``budgets.setting2_ratios``, setting 3
``scratch_flops`` at ``budgets.setting3_ratios``.

**Grid** (``Grid.from_config(cfg).runs()``): the parent; for every method and ratio the one-shot child and
setting 1 at the main budget (``seeds`` seeds at ``budgets.seed_ratios``, default every ratio); the scaling
curve for ``budgets.scaling_methods``; settings 2 and 3 at their ratios for ``budgets.setting{2,3}_methods``
(default every method), also with ``seeds`` seeds (the headline comparisons carry their noise). The default
study follows the paper's Figure 1 this way instead of a full cross product.

**Paths** (all under ``results/``)::

    models/parent                                the parent P
    models/pruned/{method}/r{ratio}              one-shot pruned child
    models/{arm}/{method}/r{ratio}/N{budget}     a trained child arm (N = the retraining budget it is matched to)
    models/{arm}/{method}/r{ratio}/N{budget}_seed{k}   the same run with the config's seed + k (k >= 1)
    eval/<same path as the model>.json           one results file per model
"""
from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from pvs.budget import format_tokens, parse_tokens
from pvs.cli import doc_parser
from pvs.config import load_config


# ---------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """One arm of the study: what it reads, how it starts, its token rule and its name in the paper."""
    name: str
    short: str                  # the paper's generic name (a table's column group)
    label: str                  # the paper's name of one run; {N} = the budget, {PN} = P + N
    splits: tuple[str, ...]     # token splits read as one stream from the start ('' for none)
    init: str                   # 'random' (parent.arch), 'pruned' (the prune stage), 'weights' or 'shape' of --init
    tokens: str                 # token rule: 'P', '0', 'N', 'P+N' or 'flops' (setting 3: pvs.compute)
    init_stream: int = 0        # offsets the init seed, so no two arms share a random init

    @property
    def trained(self) -> bool:
        """Whether the arm is a training run of pvs.train (every arm but the one-shot child)."""
        return self.init != "pruned"

    @property
    def child(self) -> bool:
        """A trained arm that starts from a pruned child (weights, or its shape and mask)."""
        return self.init in ("weights", "shape")

    @property
    def needs_budget_file(self) -> bool:
        """Its tokens follow from the pruned child's size (a budget JSON written before it trains)."""
        return self.tokens == "flops"

    def train_tokens(self, parent_tokens: int, budget: int | None) -> int | None:
        """Tokens its own training run sees; None for the FLOP-matched arm (read from its budget file)."""
        rule = {"P": parent_tokens, "0": 0, "N": budget,
                "P+N": None if budget is None else parent_tokens + budget, "flops": None}
        return rule[self.tokens]

    def display(self, parent_tokens: int | None, budget: int | None, train_tokens: int | None = None) -> str:
        """The paper's name of a run of this arm: P, P-R_0, P-R_300k, S_300k, S_1.3M (P+N), S_F300k."""
        if train_tokens is None and budget is not None and parent_tokens is not None:
            train_tokens = self.train_tokens(parent_tokens, budget)
        n = "" if budget is None else format_tokens(budget)
        pn = "" if train_tokens is None else format_tokens(train_tokens)
        return self.label.format(N=n, PN=pn)


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("parent", "P", "P", ("pretrain",), "random", "P"),
    Arm("pruned", "P-R_0", "P-R_0", (), "pruned", "0"),
    Arm("retrain", "P-R_N", "P-R_{N}", ("retrain",), "weights", "N"),
    Arm("scratch", "S_N", "S_{N}", ("pretrain", "retrain"), "shape", "N", init_stream=1),
    Arm("scratch_total", "S_P+N", "S_{PN}", ("pretrain", "retrain"), "shape", "P+N", init_stream=2),
    Arm("scratch_flops", "S_F", "S_F{N}", ("pretrain", "retrain"), "shape", "flops", init_stream=3),
)}
ARM_ORDER = tuple(ARMS)                                                   # every table and file listing
TRAINED_ARMS = tuple(name for name, arm in ARMS.items() if arm.child)      # the child arms (train_child rule)
TRAINER_ARMS = tuple(name for name, arm in ARMS.items() if arm.trained)    # what pvs.train --arm accepts


@dataclass(frozen=True)
class Setting:
    """A comparison of P-R_N (``retrain``) with a rival arm at the main budget."""
    number: int
    rival: str
    ratios_key: str             # the Grid field with its ratios
    methods_key: str            # the Grid field with its methods
    name: str


SETTINGS = (Setting(1, "scratch", "ratios", "methods", "equal training tokens"),
            Setting(2, "scratch_total", "setting2_ratios", "setting2_methods", "equal total tokens"),
            Setting(3, "scratch_flops", "setting3_ratios", "setting3_methods", "equal pipeline FLOPs"))


# ---------------------------------------------------------------- runs
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
        """Tokens this model's own training run sees (the arm's token rule); None for S_F, whose tokens
        follow from the pruned child's parameters (pvs.compute)."""
        return ARMS[self.arm].train_tokens(parent_tokens, self.budget)

    def tokens_estimate(self, parent_tokens: int) -> int:
        """Its tokens, with P + N standing in for S_F's (a lower bound: S_F matches the FLOPs of P + N
        tokens through a larger parent) — for resources and time limits before the budget file exists."""
        tokens = self.train_tokens(parent_tokens)
        return parent_tokens + (self.budget or 0) if tokens is None else tokens


def run_label(arm: str, budget: int | None, train_tokens: int | None) -> str:
    """The paper's name of a run from its evaluation record: P, P-R_0, P-R_300k, S_300k, S_1.3M, S_F300k."""
    return ARMS[arm].display(None, budget, train_tokens)


def epochs_read(arm: Arm, tokens: int, split_tokens: dict[str, int], seq_len: int, batch_size: int) -> float:
    """How many times a run of ``arm`` on ``tokens`` reads its splits: the tokens of its whole steps
    (steps = ceil(tokens / (batch x seq_len)), as the trainer rounds) over the tokens its splits hold."""
    steps = -(-tokens // (seq_len * batch_size))
    return steps * batch_size * seq_len / max(1, sum(split_tokens[s] for s in arm.splits))


def epoch_errors(cfg: dict, split_tokens: dict[str, int]) -> list[str]:
    """One message per arm and budget that would read its splits more than ``train.max_epochs`` times
    (the paper trains every arm for less than one epoch). S_F's tokens are known only once its budget file
    exists; the trainer checks it then."""
    grid, train, errors, seen = Grid.from_config(cfg), cfg["train"], [], set()
    for run in runs(cfg):
        arm, tokens = ARMS[run.arm], run.train_tokens(grid.parent_tokens)
        if not arm.trained or tokens is None or (run.arm, tokens) in seen:
            continue
        seen.add((run.arm, tokens))
        epochs = epochs_read(arm, tokens, split_tokens, train["seq_len"], train["batch_size"])
        if epochs > train["max_epochs"]:
            errors.append(epoch_message(run.arm, tokens, arm, split_tokens, epochs, train["max_epochs"]))
    return errors


def epoch_message(arm_name: str, tokens: int, arm: Arm, split_tokens: dict[str, int], epochs: float,
                  limit: float) -> str:
    splits = "+".join(arm.splits)
    held = sum(split_tokens[s] for s in arm.splits)
    return (f"train.max_epochs = {limit:g}: arm {arm_name} on {format_tokens(tokens)} tokens would read split "
            f"{splits} ({held} tokens) {epochs:.2f} times; lower the budget, add data, or raise train.max_epochs "
            "to allow it explicitly (the paper trains every arm for less than one epoch)")


def prepared_split_tokens(cfg: dict) -> tuple[dict[str, int] | None, str]:
    """Token counts per split from results_dir/data/manifest.json when that manifest was made with this
    config's data settings (seed, split fractions, document length, source); else (None, why not)."""
    path = Path(cfg["results_dir"]) / "data" / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, "data not prepared"
    same = (manifest.get("seed") == cfg["seed"] and manifest.get("split_fractions") == cfg["data"]["splits"]
            and manifest.get("doc_chars") == cfg["data"]["doc_chars"] and manifest.get("source") == cfg["data"]["source"])
    splits = {s: v["tokens"] for s, v in manifest.get("splits", {}).items() if "tokens" in v}
    if not same:
        return None, f"data not prepared ({path} was made with other data settings)"
    if not {"pretrain", "retrain"} <= splits.keys():
        return None, f"data not prepared ({path} lacks the pretrain/retrain token counts)"
    return splits, f"split sizes from {path}"


def data_epoch_errors(cfg: dict) -> list[str]:
    """Arms that would read a split more than train.max_epochs times, when this study's data already exist
    (``prepared_split_tokens``); before that the trainer checks each run."""
    splits, source = prepared_split_tokens(cfg)
    return [] if splits is None else [f"{e} ({source})" for e in epoch_errors(cfg, splits)]


def canonical_budget(value) -> str:
    """The budget as it appears in paths: '300k', '1.3M'."""
    return format_tokens(parse_tokens(value))


# ---------------------------------------------------------------- the grid
def order_methods(methods) -> list[str]:
    """Methods coarse -> fine (the registry's granularity rank), unknown ones after, alphabetically."""
    from pvs.prune.registry import GRANULARITY_ORDER      # pure data: no method module is imported

    methods = set(methods)
    return [m for m in GRANULARITY_ORDER if m in methods] + sorted(methods - set(GRANULARITY_ORDER))


def as_ratio(ratio) -> float | None:
    """Ratios are compared after rounding to 6 decimals (0.6 from JSON == 0.6 from YAML)."""
    return None if ratio is None else round(float(ratio), 6)


@dataclass(frozen=True)
class Grid:
    """The study's grid, from the config: which runs exist, and what every table has a row or column for."""
    study: str
    methods: tuple[str, ...]          # coarse -> fine
    ratios: tuple[float, ...]
    main: int
    scaling: tuple[int, ...]          # the scaling budgets plus the main budget, ascending
    scaling_ratio: float
    setting2_ratios: tuple[float, ...]
    setting3_ratios: tuple[float, ...]
    parent_tokens: int
    seeds: int = 1
    scaling_methods: tuple[str, ...] | None = None   # None = every method (so are the next three)
    setting2_methods: tuple[str, ...] | None = None
    setting3_methods: tuple[str, ...] | None = None
    seed_ratios: tuple[float, ...] | None = None     # setting-1 ratios that get every seed

    @classmethod
    def from_config(cls, cfg: dict) -> Grid:
        budgets, main = cfg["budgets"], parse_tokens(cfg["budgets"]["main"])
        methods = tuple(order_methods(cfg["prune"]["methods"]))

        def subset(key: str) -> tuple[str, ...] | None:
            chosen = budgets.get(key)
            return None if chosen is None else tuple(m for m in methods if m in chosen)

        seed_ratios = budgets.get("seed_ratios")
        return cls(study=cfg["study"], methods=methods,
                   ratios=tuple(sorted(as_ratio(r) for r in cfg["prune"]["ratios"])), main=main,
                   scaling=tuple(sorted({parse_tokens(b) for b in budgets["scaling"]} | {main})),
                   scaling_ratio=as_ratio(budgets["scaling_ratio"]),
                   setting2_ratios=tuple(sorted(as_ratio(r) for r in budgets["setting2_ratios"])),
                   setting3_ratios=tuple(sorted(as_ratio(r) for r in budgets["setting3_ratios"])),
                   parent_tokens=parse_tokens(cfg["parent"]["tokens"]), seeds=cfg.get("seeds", 1),
                   scaling_methods=subset("scaling_methods"), setting2_methods=subset("setting2_methods"),
                   setting3_methods=subset("setting3_methods"),
                   seed_ratios=None if seed_ratios is None else tuple(sorted(as_ratio(r) for r in seed_ratios)))

    def setting_ratios(self, setting: Setting) -> tuple[float, ...]:
        return getattr(self, setting.ratios_key)

    def setting_methods(self, setting: Setting) -> tuple[str, ...]:
        """The methods a setting runs for (``budgets.setting{2,3}_methods``; setting 1: every method)."""
        chosen = getattr(self, setting.methods_key)
        return self.methods if chosen is None else chosen

    @property
    def curve_methods(self) -> tuple[str, ...]:
        """The methods of the token-scaling curve (``budgets.scaling_methods``; default every method)."""
        return self.methods if self.scaling_methods is None else self.scaling_methods

    def ratio_seeds(self, ratio: float) -> int:
        """Seeds of setting 1 at the main budget at ``ratio``: ``seeds`` at ``budgets.seed_ratios`` (default
        every ratio), one elsewhere."""
        return self.seeds if self.seed_ratios is None or as_ratio(ratio) in self.seed_ratios else 1

    @property
    def scaling_label(self) -> str:
        """The token-scaling range as the report labels it: '50k–175k' (the main budget included)."""
        return f"{format_tokens(self.scaling[0])}–{format_tokens(self.scaling[-1])}"

    def label(self, arm: str, budget: int | None = None) -> str:
        """The paper's name of ``arm`` at ``budget`` (default: the main budget) in this grid."""
        return ARMS[arm].display(self.parent_tokens, self.main if budget is None else budget)

    def runs(self, config_ratios: list[float] | None = None) -> list[Run]:
        """Every model the study evaluates, without duplicates, in a stable order. Ratios keep the
        config's spelling (``config_ratios``) so paths read r0.5, not r0.500000."""
        ratios = config_ratios if config_ratios is not None else list(self.ratios)
        spelled = {as_ratio(r): r for r in ratios}
        grid = {Run("parent")}
        for method in self.methods:
            for ratio in ratios:
                grid.add(Run("pruned", method, ratio, 0))
                for k in range(self.ratio_seeds(ratio)):
                    grid |= {Run("retrain", method, ratio, self.main, k), Run("scratch", method, ratio, self.main, k)}
            for budget in self.scaling if method in self.curve_methods else ():
                ratio = spelled.get(self.scaling_ratio, self.scaling_ratio)
                grid |= {Run("retrain", method, ratio, budget), Run("scratch", method, ratio, budget)}
            for setting in SETTINGS[1:]:
                if method not in self.setting_methods(setting):
                    continue
                for ratio in self.setting_ratios(setting):
                    ratio = spelled.get(ratio, ratio)
                    for k in range(self.seeds):         # the rival, and P-R_N at its ratio, with every seed
                        grid |= {Run(setting.rival, method, ratio, self.main, k),
                                 Run("retrain", method, ratio, self.main, k)}
        return sorted(grid, key=lambda r: (ARM_ORDER.index(r.arm), r.method or "", r.ratio or 0, r.budget or 0,
                                           r.replica))


def runs(cfg: dict) -> list[Run]:
    """Every model the config's study evaluates (``Grid.runs``), ratios spelled as in the config."""
    return Grid.from_config(cfg).runs(cfg["prune"]["ratios"])


# ---------------------------------------------------------------- the report's outputs
@dataclass(frozen=True)
class ReportOutput:
    """One file the report stage writes: its path under results/, its kind and what it shows."""
    key: str
    path: str
    kind: str                   # 'summary', 'table', 'figure', 'findings', or 'file' (a twin: CSV, LaTeX, PDF)
    caption: str | None = None  # workflow/report/<caption>.rst
    settings: tuple[int, ...] = ()
    paper: str | None = None

    @property
    def ratios_of(self) -> str:
        """Which ratios the output covers: 'all', 'scaling', or a setting's ratios ('setting2')."""
        if self.key in ("loss_vs_tokens",):
            return "scaling"
        if len(self.settings) == 1 and self.settings[0] in (2, 3):
            return f"setting{self.settings[0]}"
        return "all"


REPORT_OUTPUTS = (
    ReportOutput("summary", "summary.csv", "summary", "summary", (1, 2, 3)),
    ReportOutput("findings", "findings.md", "findings", "findings", (1, 2, 3)),
    ReportOutput("main_md", "tables/main.md", "table", "table_main", (1, 2, 3)),
    ReportOutput("main_csv", "tables/main.csv", "file"),
    ReportOutput("main_tex", "tables/main.tex", "file"),
    ReportOutput("setting1_md", "tables/setting1.md", "table", "table_setting", (1,)),
    ReportOutput("setting1_csv", "tables/setting1.csv", "file"),
    ReportOutput("scaling_csv", "tables/setting1_scaling.csv", "file"),
    ReportOutput("setting2_md", "tables/setting2.md", "table", "table_setting", (2,)),
    ReportOutput("setting2_csv", "tables/setting2.csv", "file"),
    ReportOutput("setting3_md", "tables/setting3.md", "table", "table_setting", (3,)),
    ReportOutput("setting3_csv", "tables/setting3.csv", "file"),
    ReportOutput("loss_vs_tokens", "figures/loss_vs_tokens.png", "figure", "loss_vs_tokens", (1,), "Figure 1 left"),
    ReportOutput("setting2_fig", "figures/setting2.png", "figure", "setting2", (2,), "Figure 1 right"),
    ReportOutput("gap_vs_ratio", "figures/gap_vs_ratio.png", "figure", "gap_vs_ratio", (1,)),
    ReportOutput("heatmap_setting1", "figures/heatmap_setting1.png", "figure", "heatmap", (1,)),
    ReportOutput("heatmap_setting2", "figures/heatmap_setting2.png", "figure", "heatmap", (2,)),
    ReportOutput("heatmap_setting3", "figures/heatmap_setting3.png", "figure", "heatmap", (3,)),
)
# every figure is written as PNG (rendered in `snakemake --report`) and as a PDF twin
FIGURE_PDFS = tuple(o.path.removesuffix(".png") + ".pdf" for o in REPORT_OUTPUTS if o.kind == "figure")
REPORT_FILES = {o.key: o.path for o in REPORT_OUTPUTS}


# ---------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.study", __doc__)
    parser.add_argument("config", help="study config (YAML)")
    parser.add_argument("--regime", action="store_true",
                        help="print the study's regime (tokens per parameter, N/P, steps, epochs, LR per arm) "
                             "beside the paper's, computed from the config alone (pvs.regime)")
    parser.add_argument("--json", action="store_true", help="with --regime: print it as JSON")
    args = parser.parse_args(argv)
    if args.json and not args.regime:
        parser.error("--json goes with --regime")
    if args.regime:
        # pvs.regime is built on this module, so it is loaded at call time, never at import (no import cycle)
        return importlib.import_module("pvs.regime").main(args.config, args.json)
    cfg = load_config(args.config)
    errors = data_epoch_errors(cfg)
    if errors:
        print("python -m pvs.study: invalid config:\n  " + "\n  ".join(errors), file=sys.stderr)
        return 2
    all_runs = runs(cfg)
    for run in all_runs:
        print(run.model_path)
    counts = {arm: sum(r.arm == arm for r in all_runs) for arm in ARM_ORDER}
    print(f"# {len(all_runs)} models: " + ", ".join(f"{k} {v}" for k, v in counts.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
