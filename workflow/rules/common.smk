# Config validation (fails before any job starts), the study grid, and input functions.
import os
import sys

sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(workflow.basedir, "workflow"), os.environ.get("PYTHONPATH", "")]
)

from pvs.config import ConfigError, validate_config, write_resolved_config
from pvs.prune.registry import method_options
from pvs.study import TRAINED_ARMS, Run, canonical_budget, runs
from pvs.budget import format_tokens, parse_tokens

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


def child_tokens(wildcards):
    """Tokens of one training run: N, or P+N for S_{P+N}."""
    run = Run(wildcards.arm, wildcards.method, float(wildcards.ratio), parse_tokens(wildcards.budget))
    return run.train_tokens(PARENT_TOKENS)
