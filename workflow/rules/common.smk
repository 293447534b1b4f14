# Config validation (fails before any job starts), the study grid, and input functions.
# the package pvs is installed into the environment (pyproject.toml; the Makefile's venv, envs/environment.yaml)
import sys

from pvs.config import ConfigError, result_recipe, validate_config, write_resolved_config
from pvs.prune.registry import method_options
from pvs.study import TRAINED_ARMS, Run, canonical_budget, runs
from pvs.budget import format_tokens, parse_tokens
from pvs.resources import child_params, job_resources, parent_params, prune_size_and_tokens, prune_stage
from pvs.resources import launcher as pvs_launcher

try:
    config = validate_config(config)
except ConfigError as error:
    raise WorkflowError(f"config: {error}") from None

R = config["results_dir"].rstrip("/")
CONFIG = write_resolved_config(config, f"{R}/config.resolved.yaml")
PY = sys.executable
PARENT_TOKENS = parse_tokens(config["parent"]["tokens"])
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
    if wildcards.arm == "scratch_flops":
        inputs["budget_file"] = f"{R}/compute/setting3/{wildcards.method}/r{wildcards.ratio}/N{wildcards.budget}.json"
    return inputs


def child_tokens_arg(wildcards):
    """--tokens N (P+N for S_{P+N}), or --tokens-from the setting-3 budget file for S_F."""
    tokens = child_run(wildcards).train_tokens(PARENT_TOKENS)
    if tokens is None:
        return "--tokens-from " + child_inputs(wildcards)["budget_file"]
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
    return child_params(config, run.ratio), run.train_tokens(PARENT_TOKENS) or PARENT_TOKENS + run.budget


PARENT_RESOURCES = _resources("parent", lambda wildcards: (parent_params(config), PARENT_TOKENS))
CHILD_RESOURCES = _resources("child", _child_size_and_tokens)
PRUNE_RESOURCES = _resources(lambda wildcards: prune_stage(wildcards.method),
                             lambda wildcards: prune_size_and_tokens(config, wildcards.method))
EVALUATE_RESOURCES = _resources("evaluate")
TOKENIZE_RESOURCES = _resources("tokenize")


def launcher(stage):
    """python, torchrun over the job's GPUs, or srun + torchrun per node (pvs.resources.launcher)."""
    return pvs_launcher(config, stage, PY)
