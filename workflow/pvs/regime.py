"""The regime table: a config's dimensionless regime (tokens per parameter, N/P, steps, epochs) beside the paper's.

    python -m pvs.study --regime config.yaml           # the table, "this config" | "paper" | goal
    python -m pvs.study --regime config.yaml --json    # the same as JSON, for scripts

Computed from the config alone (no training): one row per trained arm of the study's grid (seed 0 only):
the parent; for each method x ratio at the main budget P-R_N and S_N; the token-scaling budgets at the
scaling ratio; S_{P+N} at the setting-2 ratios; S_F at the setting-3 ratios. Per row:

* ``non_embedding_params``: the one count, :func:`pvs.compute.non_embedding_params`, of the arm's shape.
  Structured children: the shape solver's child (``pvs.prune.shapes.solve``); a retrained FLAP child carries
  its compensation biases, its scratch twin is a plain Llama without them (as the trainer builds it).
  Sparse arms: the kept weights (``pvs.prune.shapes.sparse_kept_params``), as the study's ratio counts them.
* ``total_params``: non-embedding + embedding + LM head (+ the final RMSNorm), i.e. what
  ``pvs.modeling.count_params`` calls total: + 2·vocab·hidden + hidden (untied; vocab·hidden when tied).
* ``tokens``: the arm's token rule (``pvs.study.ARMS[arm].train_tokens``). S_F: the budget file
  (results_dir/compute/setting3/...) when it exists, otherwise estimated with pvs.compute's pipeline formula
  from the solver's parameter counts and the configured calibration / mask-learning tokens
  (``tokens_estimated: true``).
* ``steps`` = ceil(tokens / (train.batch_size x train.seq_len)), as the trainer rounds.
* ``tokens_per_param`` = tokens / non-embedding parameters; ``n_over_p`` = the arm's budget N / P.
* ``epochs``: reads of the arm's splits (``pvs.study.epochs_read``), from results_dir/data/manifest.json;
  null ("data not prepared") until the data exist with this config's data settings.
* ``lr``: :func:`arm_lr`: the run's peak LR by its key (``pvs.sweep``): fixed (train.lr_per_arm), chosen by the
  sweep (results_dir/lr/chosen.json once it exists; 'swept (pending)' before), else train.lr.

The paper's values are DESIGN.md §1; the goal column is issue 12's target for the default study.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from pvs import compute
from pvs.budget import approx_tokens, format_tokens, parse_tokens
from pvs.config import _local_checkpoint
from pvs.prune import shapes
from pvs.prune.registry import display_name, record
from pvs.study import ARM_ORDER, ARMS, Grid, epochs_read, prepared_split_tokens, runs
from pvs.sweep import Sweep

DATA_NOT_PREPARED = "data not prepared"


class RegimeError(ValueError):
    """The regime cannot be computed from the config (e.g. an imported parent that is not local yet)."""


# ---------------------------------------------------------------- the paper (DESIGN.md §1)
PAPER_PARENT = {"total": 8.03e9, "non_embedding": 6.98e9, "tokens": 200e9}
PAPER_CHILD = {"total": 4.5e9, "non_embedding": 3.5e9}                     # the r = 0.5 children
PAPER_TOKENS_PER_STEP = 4e6                                                  # the paper's "50B = 12,500 steps"
PAPER_BUDGETS = (10e9, 30e9, 50e9, 250e9, 500e9)                             # N; 50B is the main budget
PAPER_LR, PAPER_LR_SWEEP = 3e-4, (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)


def _paper_row(arm: str, label: str, params: dict, tokens: float, budget: float | None, ratio) -> dict:
    return {"arm": arm, "label": label, "method": None, "ratio": ratio,
            "non_embedding_params": params["non_embedding"], "total_params": params["total"], "tokens": tokens,
            "steps": round(tokens / PAPER_TOKENS_PER_STEP), "tokens_per_param": tokens / params["non_embedding"],
            "n_over_p": None if budget is None else budget / PAPER_PARENT["tokens"], "epochs": "< 1",
            "lr": PAPER_LR}


def paper() -> dict:
    """The paper's values of the table's quantities (DESIGN.md §1), with its per-arm rows at r = 0.5."""
    P, main = PAPER_PARENT["tokens"], 50e9
    arms = [_paper_row("parent", "P200", PAPER_PARENT, P, None, None)]
    arms += [_paper_row(arm, f"{label}{n / 1e9:g}", PAPER_CHILD, n, n, 0.5)
             for n in PAPER_BUDGETS for arm, label in (("retrain", "P200-R"), ("scratch", "S"))]
    arms.append(_paper_row("scratch_total", "S250 (S_{P+N})", PAPER_CHILD, P + main, main, 0.5))
    return {
        "parent_tokens_per_param": P / PAPER_PARENT["non_embedding"],                        # ≈ 29
        "embedding_share": 1 - PAPER_PARENT["non_embedding"] / PAPER_PARENT["total"],        # ≈ 13%
        "n_over_p": main / P,
        "scaling_n_over_p": [min(PAPER_BUDGETS) / P, max(PAPER_BUDGETS) / P],
        "scratch_total_tokens_per_param": [55.0, 70.0],     # 250B on a 4.5B child: 55 per total, ≈ 70 per block
        "max_epochs": "< 1",
        "parent_steps": 50_000, "main_retrain_steps": 12_500, "min_scaling_steps": 2_500,
        "lr": PAPER_LR, "lr_sweep": list(PAPER_LR_SWEEP), "arms": arms,
        "source": "DESIGN.md §1 (arXiv 2606.14150); steps at the paper's ≈4M tokens per step",
    }


# issue 12's goal for the default study: (key, text, check of this config's value)
GOAL = (
    ("parent_tokens_per_param", "≥ 5 (stretch 10)", lambda v: v >= 5),
    ("embedding_share", "≤ 25%", lambda v: v <= 0.25),
    ("n_over_p", "0.25", lambda v: math.isclose(v, 0.25, rel_tol=1e-9)),
    ("scaling_n_over_p", "⊇ 0.05–1.25", lambda v: v[0] <= 0.05 + 1e-12 and v[1] >= 1.25 - 1e-12),
    ("scratch_total_tokens_per_param", "≥ 10", lambda v: v[0] >= 10),
    ("max_epochs", "< 1", lambda v: v < 1),
    ("parent_steps", "≥ 1,000", lambda v: v >= 1000),
    ("main_retrain_steps", "≥ 250", lambda v: v >= 250),
    ("min_scaling_steps", "≥ 50", lambda v: v >= 50),
)


# ---------------------------------------------------------------- the config's parent and arms
def arm_lr(cfg: dict, arm: str, method: str | None = None, ratio: float | None = None) -> float | str:
    """The peak LR a run of ``arm`` trains with (pvs.sweep: one LR per arm family and granularity): fixed by
    train.lr_per_arm, chosen by the sweep (results_dir/lr/chosen.json; 'swept (pending)' until it exists),
    else train.lr."""
    return Sweep.from_config(cfg).lr_of(arm, method)


def parent_facts(cfg: dict) -> dict:
    """The parent's shape (with vocab_size), bias flags and tying: parent.arch + data.vocab_size for a trained
    parent; an imported one's config.json (a local checkpoint, or results_dir/models/parent once imported)."""
    if cfg["parent"]["source"] == "train":
        arch = {**cfg["parent"]["arch"], "vocab_size": cfg["data"]["vocab_size"]}
        source = "parent.arch, data.vocab_size"
    else:
        local = _local_checkpoint(cfg["parent"]["pretrained"])
        candidates = [p for p in (local, Path(cfg["results_dir"]) / "models" / "parent") if p is not None]
        found = next((p / "config.json" for p in candidates if (p / "config.json").is_file()), None)
        if found is None:
            raise RegimeError(f"parent.pretrained = {cfg['parent']['pretrained']!r}: the regime needs the parent's "
                              f"shape, and no config.json is local yet (looked in {', '.join(map(str, candidates))}); "
                              "import the parent first (snakemake import_parent)")
        arch, source = json.loads(found.read_text()), str(found)
    shape = {**shapes.parent_shape(arch), "vocab_size": int(arch["vocab_size"])}
    return {"shape": shape, "biases": shapes.parent_biases(arch), "tied": bool(arch.get("tie_word_embeddings")),
            "prune": cfg["prune"],
            "source": source}


def embedding_params(shape: dict, tied: bool) -> int:
    """Embedding + LM head + final RMSNorm (what count_params calls embedding_and_head)."""
    return (1 if tied else 2) * shape["vocab_size"] * shape["hidden_size"] + shape["hidden_size"]


def arm_shape(arm: str, method: str | None, ratio: float | None, parent: dict) -> tuple[dict, int]:
    """(shape with vocab_size, non-embedding parameters) of a run of ``arm`` (see the module docstring)."""
    p = parent["shape"]
    if arm == "parent":
        return p, compute.non_embedding_params(p, *parent["biases"])
    rec = record(method)
    if rec.sparse:
        return p, shapes.sparse_kept_params(p, ratio, *parent["biases"])
    arch = {**p, "attention_bias": parent["biases"][0], "mlp_bias": parent["biases"][1]}
    child = {**shapes.solve_configured(rec.shape_rule, ratio, arch, parent["prune"], p["vocab_size"], section=method).shape,
             "vocab_size": p["vocab_size"]}
    biases = shapes.child_biases(rec.shape_rule, arch)
    if ARMS[arm].init == "shape":        # a scratch twin is a plain Llama: no biases (pvs.train.trainer)
        biases = (False, False)
    return child, compute.non_embedding_params(child, *biases)


def _prune_tokens(cfg: dict, method: str) -> tuple[int, int]:
    """(calibration tokens, mask-learning tokens) that pruning ``method`` is configured to read (pvs.prune)."""
    rec, prune = record(method), cfg["prune"]
    seq = rec.calibration_seq_len(prune)
    windows, mask = prune["calib_windows"], 0
    if rec.trains_parent:
        mask = int(rec.section(prune)["mask_tokens"])
        windows = max(windows, math.ceil(mask / seq))
    return windows * seq, mask


def scratch_flops_tokens(cfg: dict, method: str, ratio: float, budget: int, parent: dict) -> tuple[int, bool]:
    """S_F's tokens: its budget file when written, else pvs.compute's pipeline formula on the solver's counts."""
    path = Path(cfg["results_dir"]) / "compute" / "setting3" / method / f"r{ratio}" / f"N{format_tokens(budget)}.json"
    if path.is_file():
        return int(json.loads(path.read_text())["tokens"]), False
    child_shape, child_kept = arm_shape("retrain", method, ratio, parent)
    calib, mask = _prune_tokens(cfg, method)
    layers = parent["shape"]["num_hidden_layers"]
    removed = layers - child_shape["num_hidden_layers"]
    # Minitron-Depth scores every start of the removed block with one more forward pass each
    candidates = [{}] * (layers - removed + 1) if record(method).shape_rule == "minitron_depth" else []
    meta = {"shape": {"parent": parent["shape"], "child": child_shape},
            "params": {"parent": {"non_embedding": arm_shape("parent", None, None, parent)[1]},
                       "child": {"non_embedding": child_kept}},
            "calibration": {"tokens": calib}, "mask_learning_tokens": mask, "info": {"candidates": candidates}}
    return compute.setting3_tokens(meta, parse_tokens(cfg["parent"]["tokens"]), budget), True


def regime(cfg: dict, config_path: str | None = None) -> dict:
    """The whole regime of ``cfg`` (a validated config): summary quantities, one row per arm, the paper's."""
    grid, parent, train = Grid.from_config(cfg), parent_facts(cfg), cfg["train"]
    P, per_step = grid.parent_tokens, train["batch_size"] * train["seq_len"]
    splits, data_note = prepared_split_tokens(cfg)
    rows, method_rank = [], {m: i for i, m in enumerate(grid.methods)}
    trained = [r for r in runs(cfg) if not r.replica and ARMS[r.arm].trained]
    # the parent, then per method (coarse -> fine) and ratio its arms side by side, budgets ascending
    trained.sort(key=lambda r: (r.arm != "parent", method_rank.get(r.method, -1), r.ratio or 0,
                                ARM_ORDER.index(r.arm), r.budget or 0))
    for run in trained:
        arm = ARMS[run.arm]
        shape, non_embedding = arm_shape(run.arm, run.method, run.ratio, parent)
        tokens, estimated = run.train_tokens(P), False
        if tokens is None:
            tokens, estimated = scratch_flops_tokens(cfg, run.method, run.ratio, run.budget, parent)
        steps = -(-tokens // per_step)
        epochs = None if splits is None else epochs_read(arm, tokens, splits, train["seq_len"], train["batch_size"])
        rows.append({"arm": run.arm, "label": arm.display(P, run.budget, tokens), "method": run.method,
                     "ratio": run.ratio, "budget": run.budget, "shape": shape, "non_embedding_params": non_embedding,
                     "total_params": non_embedding + embedding_params(shape, parent["tied"]), "tokens": tokens,
                     "tokens_estimated": estimated, "steps": steps, "tokens_per_param": tokens / non_embedding,
                     "n_over_p": None if run.budget is None else run.budget / P, "splits": "+".join(arm.splits),
                     "epochs": epochs, "lr": arm_lr(cfg, run.arm, run.method, run.ratio)})
    parent_row = rows[0]
    totals = [r["tokens_per_param"] for r in rows if r["arm"] == "scratch_total"]
    out = {
        "study": cfg["study"], "config": config_path,
        "parent_tokens_per_param": parent_row["tokens_per_param"],
        "embedding_share": 1 - parent_row["non_embedding_params"] / parent_row["total_params"],
        "n_over_p": grid.main / P,
        "scaling_n_over_p": [grid.scaling[0] / P, grid.scaling[-1] / P],
        "scratch_total_tokens_per_param": [min(totals), max(totals)] if totals else None,
        "max_epochs": None if splits is None else max(r["epochs"] for r in rows),
        "parent_steps": parent_row["steps"],
        "main_retrain_steps": -(-grid.main // per_step),
        "min_scaling_steps": -(-grid.scaling[0] // per_step),
        "tokens_per_step": per_step, "batch_size": train["batch_size"], "seq_len": train["seq_len"],
        "vocab_size": parent["shape"]["vocab_size"], "parent_shape_from": parent["source"],
        "data": data_note, "arms": rows, "paper": paper(),
    }
    out["goal"] = {key: text for key, text, _ in GOAL}
    out["meets_goal"] = {key: (None if out[key] is None else bool(check(out[key]))) for key, _, check in GOAL}
    return out


# ---------------------------------------------------------------- rendering
SUMMARY = (("parent_tokens_per_param", "parent tokens per non-embedding parameter"),
           ("embedding_share", "embedding + head share of the parent's parameters"),
           ("n_over_p", "N / P at the main budget"),
           ("scaling_n_over_p", "scaling budgets, N / P"),
           ("scratch_total_tokens_per_param", "S_{P+N} tokens per non-embedding parameter"),
           ("max_epochs", "epochs over any split (max)"),
           ("parent_steps", "optimizer steps: parent"),
           ("main_retrain_steps", "optimizer steps: main retraining budget"),
           ("min_scaling_steps", "optimizer steps: smallest scaling budget"))


def _fmt(key: str, value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "–".join(_fmt(key, v) for v in value)
    if key == "embedding_share":
        return f"{100 * value:.1f}%"
    if key.endswith("steps"):
        return f"{value:,}"
    return f"{value:.3g}"


def _arm_cells(row: dict) -> list[str]:
    tokens = approx_tokens(row["tokens"]) + ("*" if row.get("tokens_estimated") else "")
    epochs = "–" if row["epochs"] is None else (row["epochs"] if isinstance(row["epochs"], str)
                                                else f"{row['epochs']:.2f}")
    return [row["label"], display_name(row["method"]) if row["method"] else "–",
            "–" if row["ratio"] is None else f"{row['ratio']:g}", approx_tokens(row["non_embedding_params"]),
            approx_tokens(row["total_params"]), tokens, f"{row['steps']:,}", f"{row['tokens_per_param']:.3g}",
            "–" if row["n_over_p"] is None else f"{row['n_over_p']:.3g}", epochs,
            row["lr"] if isinstance(row["lr"], str) else f"{row['lr']:g}"]


ARM_HEADER = ["arm", "method", "ratio", "non-emb params", "total params", "tokens", "steps", "tokens/param",
              "N/P", "epochs", "LR"]


def _summary_rows(reg: dict) -> list[list[str]]:
    marks = {True: "yes", False: "NO", None: "–"}
    return [[text, _fmt(key, reg[key]), _fmt(key, reg["paper"][key]), reg["goal"][key],
             marks[reg["meets_goal"][key]]] for key, text in SUMMARY]


def _notes(reg: dict) -> list[str]:
    return [f"tokens per step {reg['tokens_per_step']:,} (batch {reg['batch_size']} x seq {reg['seq_len']}); "
            f"vocab {reg['vocab_size']:,}; epochs: {reg['data']} (reads of the arm's own splits: parent pretrain, "
            "P-R_N retrain, scratch arms pretrain+retrain from the start)",
            "parameters as pvs.compute counts them (sparse arms: the kept weights); total = + embedding, LM head "
            "and final norm; * = S_F tokens estimated from pvs.compute's pipeline formula (no budget file yet)",
            f"paper: {reg['paper']['source']}; LR swept over "
            f"{', '.join(f'{v:g}' for v in reg['paper']['lr_sweep'])}"]


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def render_text(reg: dict) -> str:
    """The table for a terminal: summary quantities side by side (this config | paper | goal), then the arms."""
    title = f"Regime of study `{reg['study']}`" + (f" ({reg['config']})" if reg["config"] else "")
    lines = [title + " beside the paper (arXiv 2606.14150)", ""]
    lines += _text_table(["quantity", "this config", "paper", "goal (issue 12)", "meets"], _summary_rows(reg))
    lines += [""] + [f"  {n}" for n in _notes(reg)] + ["", "Arms of this config:"]
    lines += _text_table(ARM_HEADER, [_arm_cells(r) for r in reg["arms"]])
    lines += ["", "The paper's arms (r = 0.5 children, ≈ 4.5B total):"]
    lines += _text_table(ARM_HEADER, [_arm_cells(r) for r in reg["paper"]["arms"]])
    return "\n".join(lines) + "\n"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def render_markdown(reg: dict) -> str:
    """The same as a markdown section (findings.md, README)."""
    lines = [f"## Regime of study `{reg['study']}` beside the paper", "",
             "Computed from the config (python -m pvs.study --regime); the paper's values from DESIGN.md §1.", ""]
    lines += _md_table(["quantity", "this config", "paper", "goal (issue 12)", "meets"], _summary_rows(reg))
    lines += [""] + [f"- {n}" for n in _notes(reg)] + ["", "<details><summary>Arms of this config</summary>", ""]
    lines += _md_table(ARM_HEADER, [_arm_cells(r) for r in reg["arms"]])
    lines += ["", "The paper's arms (r = 0.5 children):", ""]
    lines += _md_table(ARM_HEADER, [_arm_cells(r) for r in reg["paper"]["arms"]])
    return "\n".join(lines + ["", "</details>", ""])


def with_regime(findings_text: str, cfg: dict) -> str:
    """``findings_text`` with the regime section inserted after its title (the top of findings.md)."""
    try:
        section = render_markdown(regime(cfg))
    except ValueError as e:          # RegimeError, or a shape the solver refuses: the findings still get written
        section = f"## Regime\n\nNot computed: {e}\n"
    title, _, rest = findings_text.partition("\n")
    return f"{title}\n\n{section}\n{rest.lstrip(chr(10))}"


def main(config_path: str, as_json: bool = False) -> int:
    """``python -m pvs.study --regime CONFIG [--json]``: print the table (or its JSON)."""
    import sys

    from pvs.config import load_config

    try:
        reg = regime(load_config(config_path), config_path)
    except RegimeError as e:
        print(f"python -m pvs.study --regime: {e}", file=sys.stderr)
        return 2
    print(json.dumps(reg, indent=1) if as_json else render_text(reg), end="\n" if as_json else "")
    return 0
