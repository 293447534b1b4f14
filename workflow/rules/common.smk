# Config validation (fails before any job starts), the study grid, and input functions.
# the package pvs is installed into the environment (pyproject.toml; the Makefile's venv, envs/environment.yaml)
import os
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from pvs.config import ConfigError, result_recipe, validate_config, write_resolved_config
from pvs.prune.registry import method_options
from pvs.prune.registry import record as method_record
from pvs.study import data_epoch_errors
from pvs.study import ARMS, FIGURE_PDFS, REPORT_OUTPUTS, SETTINGS, TRAINED_ARMS, Grid, Run, canonical_budget, runs
from pvs.budget import format_tokens, parse_tokens
from pvs.data.tokens import SPLITS
from pvs.resources import estimated_child_params, job_resources, parent_params, prune_size_and_tokens, prune_stage
from pvs.resources import job_python
from pvs.resources import launcher as pvs_launcher
from pvs.sweep import CHOSEN_JSON, SWEEP_CSV, SWEEP_MD, Sweep, chosen_path, lr_key

try:
    config = validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"config: {error}") from None
EPOCH_ERRORS = data_epoch_errors(config)  # budgets against the split sizes, once this study's data exist
if EPOCH_ERRORS:
    raise WorkflowError("config: invalid config:\n  " + "\n  ".join(EPOCH_ERRORS))

R = config["results_dir"].rstrip("/")
CONFIG = write_resolved_config(config, f"{R}/config.resolved.yaml")
# Jobs run pvs with this environment's Python; under `--software-deployment-method conda` with the rule's
# conda environment's (envs/environment.yaml, whose post-deploy script installs pvs from PVS_REPO).
os.environ.setdefault("PVS_REPO", workflow.basedir)
# (the same path however snakemake was launched: the shell commands are a rerun trigger, pvs.resources.job_python)
PY = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else job_python()
PARENT_TOKENS = parse_tokens(config["parent"]["tokens"])
GRID = Grid.from_config(config)
# a study on GPUs (device: cuda) first proves that every job fits cluster.gpu_memory_gib (python -m pvs.memory)
GPU_STUDY = config["device"] == "cuda"
MEMORY_CHECK = [f"{R}/memory/check.json"] if GPU_STUDY else []
RUNS = runs(config)
EVALS = [f"{R}/{run.eval_path}" for run in RUNS]


wildcard_constraints:
    method="[a-z0-9_]+",
    ratio="0\.[0-9]+",
    budget="[0-9.]+[kMBT]?",
    arm="|".join(TRAINED_ARMS),
    replica="(_seed[1-9][0-9]*)?",
    shard="[0-9]+",


def child_run(wildcards):
    return Run(wildcards.arm, wildcards.method, float(wildcards.ratio), parse_tokens(wildcards.budget),
               int(wildcards.replica.removeprefix("_seed") or 0))


def child_inputs(wildcards):
    """The pruned child (weights, or shape and mask); S_F also needs its setting-3 budget."""
    inputs = {"init": f"{R}/models/pruned/{wildcards.method}/r{wildcards.ratio}"}
    if ARMS[wildcards.arm].needs_budget_file:
        inputs["budget_file"] = f"{R}/compute/setting3/{wildcards.method}/r{wildcards.ratio}/N{wildcards.budget}.json"
    return inputs


def child_tokens_arg(wildcards):
    """--tokens by the arm's token rule (N, P+N), or --tokens-from the budget file of a FLOP-matched arm."""
    tokens = child_run(wildcards).train_tokens(PARENT_TOKENS)
    if tokens is None:
        return f"--tokens-from {child_inputs(wildcards)['budget_file']}"
    return f"--tokens {tokens}"


def child_seed(wildcards):
    return config["seed"] + child_run(wildcards).replica


# ---------------------------------------------------------------- cluster resources (pvs.resources)

def _resources(stage, size_and_tokens=lambda wildcards: (None, None)):
    """Snakemake resources of a stage (a name, or a function of the wildcards): each a function of the job's
    wildcards and attempt."""
    stage_of = stage if callable(stage) else (lambda wildcards: stage)

    def one(key):
        return lambda wildcards, attempt: job_resources(config, stage_of(wildcards), *size_and_tokens(wildcards),
                                                        attempt)[key]
    keys = ("gpu", "nodes", "cpus_per_task", "mem_mb", "runtime", "mpi", "tasks_per_node")
    return {key: one(key) for key in keys}


def _child_size_and_tokens(wildcards):
    run = child_run(wildcards)
    return estimated_child_params(config, run.ratio), run.tokens_estimate(PARENT_TOKENS)


PARENT_RESOURCES = _resources("parent", lambda wildcards: (parent_params(config), PARENT_TOKENS))
CHILD_RESOURCES = _resources("child", _child_size_and_tokens)
PRUNE_RESOURCES = _resources(lambda wildcards: prune_stage(wildcards.method),
                             lambda wildcards: prune_size_and_tokens(config, wildcards.method))
EVALUATE_RESOURCES = _resources("evaluate")
TOKENIZE_RESOURCES = _resources("tokenize")


# warm_start: local single-process jobs run `python -m pvs.warm -m pvs.<stage> ...` (a fork server that holds
# torch, transformers, lm_eval imported; README "Warm start"); cluster jobs and torchrun/srun launches do not
WARM = config["warm_start"] and config["device"] != "cuda" and workflow.local_exec and not workflow.remote_exec
WARM_PY = f"{PY} -m pvs.warm" if WARM else PY


def launcher(stage):
    """python (warm: python -m pvs.warm), torchrun over the job's GPUs, or srun + torchrun per node
    (pvs.resources.launcher)."""
    return pvs_launcher(config, stage, PY, warm=WARM)


# ---------------------------------------------------------------- the learning-rate sweep (train.smk, pvs.sweep)

SWEEP = Sweep.from_config(config)
SWEEP_RECIPE = result_recipe(config["train"])
SWEEP_PARENT_RESOURCES = _resources("parent", lambda wildcards: (parent_params(config), SWEEP.parent_tokens))
SWEEP_CHILD_RESOURCES = _resources(
    "child", lambda wildcards: (estimated_child_params(config, float(wildcards.ratio)), SWEEP.tokens)
)
LR_OUTPUTS = [f"{R}/{CHOSEN_JSON}", f"{R}/{SWEEP_MD}", f"{R}/{SWEEP_CSV}"] if SWEEP.active else []


def lr_inputs(key):
    """A train job's inputs for its LR: the chosen file of a swept key, else nothing."""
    return {"lr": f"{R}/{chosen_path(key)}"} if SWEEP.swept(key) else {}


def lr_arg(key):
    """--lr-from the chosen file (swept), --lr the fixed LR (train.lr_per_arm), or nothing (train.lr)."""
    source = SWEEP.source(key)
    if source == "sweep":
        return f"--lr-from {R}/{chosen_path(key)}"
    return f"--lr {SWEEP.fixed[key]!r}" if source == "fixed" else ""


def child_key(wildcards):
    return lr_key(wildcards.arm, wildcards.method)


def child_train_inputs(wildcards):
    """train_child's inputs: the pruned child (+ S_F's budget file, child_inputs) and its LR's chosen file."""
    return {**child_inputs(wildcards), **lr_inputs(child_key(wildcards))}


# ---------------------------------------------------------------- evaluation (evaluate.smk)

def eval_meta(wildcards):
    run = Run.from_model_path(wildcards.model)
    fields = dict(arm=run.arm, method=run.method, ratio=run.ratio, budget=run.budget,
                  train_tokens=run.train_tokens(PARENT_TOKENS), seed=config["seed"] + run.replica)
    return "--meta " + " ".join(f"{k}={'null' if v is None else v}" for k, v in fields.items())


# ---------------------------------------------------------------- report outputs (report.smk)

ALL_METHODS = "all, coarse → fine"
LISTED_RATIOS = {
    "all": ", ".join(f"{r:g}" for r in GRID.ratios),
    "scaling": f"{GRID.scaling_ratio:g}",
    **{f"setting{s.number}": ", ".join(f"{r:g}" for r in GRID.setting_ratios(s)) or "off" for s in SETTINGS},
}


def report_output(output):
    """A report() entry for a table, figure or findings file of pvs.study.REPORT_OUTPUTS; a twin file plainly."""
    path = f"{R}/{output.path}"
    if output.kind == "file":
        return path
    budget = GRID.scaling_label if output.ratios_of == "scaling" else canonical_budget(GRID.main)
    if output.key == "setting1_md":
        budget = f"{budget}; scaling {GRID.scaling_label}"
    labels = {"method": ALL_METHODS, "granularity": "coarse → fine", "ratio": LISTED_RATIOS[output.ratios_of],
              "budget": budget, "setting": ", ".join(map(str, output.settings))}
    if output.kind == "findings":
        labels = {"file": "findings.md", "setting": labels["setting"]}
    elif output.kind == "figure":
        labels = {"figure": Path(output.path).stem, **labels}
        if output.paper:
            labels["paper"] = output.paper
    else:
        labels = {"table": Path(output.path).name, **labels}
    category = {"figure": "Figures", "findings": "Findings"}.get(output.kind, "Tables")
    return report(path, caption=f"../report/{output.caption}.rst", category=category, labels=labels)
