"""Cluster resources of each job, from the model's size and the job's token budget (config ``cluster``).

The rules attach these as Snakemake resources; a local run ignores them, the SLURM profile
(profiles/slurm) turns them into sbatch options: ``gpu`` -> --gpus (per node), ``nodes`` -> --nodes, ``cpus_per_task`` (cpus_per_gpu x
GPUs: one task per job), ``mem_mb`` -> --mem, ``runtime`` -> -t (minutes). A training job's runtime is its FLOPs (6·N·D, pvs.compute) at the configured
per-GPU peak and MFU, with a safety factor, clipped to ``cluster.max_runtime_min``: a longer run is cut
by the time limit and continues from its checkpoint when Snakemake retries it (profile ``retries``).

    python -m pvs.resources configs/paper.yaml     # the resources of every job of a study, as a table
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from pvs.cli import doc_parser
from pvs.budget import parse_tokens
from pvs.compute import non_embedding_params
from pvs.prune.registry import record   # pure data: no method module is imported


def block_params(arch: dict) -> int:
    """Non-embedding parameters of a Llama of shape ``arch`` (``pvs.compute.non_embedding_params``)."""
    return non_embedding_params(_shape(arch))


def _shape(arch: dict) -> dict:
    return {**arch, "head_dim": arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]}


def parent_params(cfg: dict) -> int:
    """6·N·D's N of the configured parent: blocks + LM head (vocab x hidden)."""
    arch = cfg["parent"]["arch"]
    return block_params(arch) + cfg["data"]["vocab_size"] * arch["hidden_size"]


def estimated_child_params(cfg: dict, ratio: float) -> int:
    """6·N·D's N of a child at ``ratio`` before it exists: (1 - ratio) of the parent's blocks + the LM head
    (the prune stage's meta.json has the exact count, pvs.compute.child_flops_params)."""
    arch = cfg["parent"]["arch"]
    return round(block_params(arch) * (1 - ratio)) + cfg["data"]["vocab_size"] * arch["hidden_size"]


def gpu_hours(cfg: dict, params: int, tokens: int) -> float:
    """Expected GPU-hours of training on ``tokens``: 6·N·D at the configured peak FLOP/s and MFU."""
    return 6.0 * params * tokens / (cfg["cluster"]["gpu_peak_flops"] * cfg["cluster"]["mfu"]) / 3600


def train_minutes(cfg: dict, params: int, tokens: int, gpus: int) -> int:
    """Wall minutes of a training job at the configured peak FLOP/s and MFU (x safety), clipped."""
    cluster = cfg["cluster"]
    seconds = 6.0 * params * tokens / (max(1, gpus) * cluster["gpu_peak_flops"] * cluster["mfu"])
    minutes = math.ceil(seconds * cluster["runtime_safety"] / 60) + cluster["min_runtime_min"]
    return min(minutes, cluster["max_runtime_min"])


def job_resources(cfg: dict, stage: str, params: int | None = None, tokens: int | None = None,
                  attempt: int = 1) -> dict:
    """Resources of one job of ``stage`` (parent, child, prune, evaluate, tokenize); memory grows with each retry."""
    cluster = cfg["cluster"]
    if stage == "tokenize":          # CPU only: stream and tokenize one shard (resumes on the next attempt)
        return {"gpu": 0, "nodes": 1, "cpus_per_task": cluster["tokenize"]["cpus"],
                "mem_mb": cluster["tokenize"]["mem_mb"] * attempt,
                "runtime": cluster["stage_runtime_min"]["tokenize"] * attempt, "mpi": "", "tasks_per_node": 0}
    gpus = cluster["gpus"][stage]
    minutes = cluster["min_runtime_min"] if tokens is None else train_minutes(cfg, params, tokens, gpus)
    if stage in ("prune", "evaluate"):
        minutes = cluster["stage_runtime_min"][stage]
    nodes = cluster["nodes"].get(stage, 1)
    if tokens is not None and nodes > 1:
        minutes = train_minutes(cfg, params, tokens, gpus * nodes)
    # several nodes: one task per node ("mpi": the plugin leaves srun to the job's own command, pvs launcher)
    multi = {"mpi": "srun", "tasks_per_node": 1} if nodes > 1 else {"mpi": "", "tasks_per_node": 0}
    return {"gpu": gpus, "nodes": nodes, "cpus_per_task": cluster["cpus_per_gpu"] * max(1, gpus),
            "mem_mb": cluster["mem_mb_per_gpu"] * max(1, gpus) * attempt, "runtime": minutes * attempt, **multi}


def prune_stage(method: str) -> str:
    """'sheared' for a method that trains the whole parent (Sheared-LLaMA's mask learning), else 'prune'."""
    return "sheared" if record(method).trains_parent else "prune"


def prune_size_and_tokens(cfg: dict, method: str) -> tuple[int | None, int | None]:
    """What a prune job trains: the parent on its ``mask_tokens`` for a method that trains the parent
    (Sheared-LLaMA's prune.sheared_llama.mask_tokens), nothing otherwise."""
    if prune_stage(method) == "sheared":
        return parent_params(cfg), record(method).section(cfg["prune"])["mask_tokens"]
    return None, None


def job_python(executable: str = sys.executable) -> str:
    """The interpreter path written into every job's shell command: the first of ``<bin>/python3`` and
    ``<bin>/python`` that is the same file as ``executable``, else ``executable``.

    Snakemake's code rerun trigger hashes each rule's shell command, so the path must not depend on how
    snakemake was launched: ``.venv/bin/snakemake`` (``make``) runs as ``.venv/bin/python3``, ``python -m
    snakemake`` as ``.venv/bin/python``; with ``sys.executable`` verbatim a finished study re-ran from its
    data up when the launcher changed. ``python3`` first keeps the studies that ``make`` ran valid."""
    bin_dir = Path(executable).parent
    for name in ("python3", "python"):
        try:
            if os.path.samefile(bin_dir / name, executable):
                return str(bin_dir / name)
        except OSError:   # no such file
            continue
    return executable


def launcher(cfg: dict, stage: str, python: str, warm: bool = False) -> str:
    """How a training job starts: python (``python -m pvs.warm`` with ``warm``: a local single-process job
    through the warm-start server); torchrun over one node's GPUs; or srun + torchrun on every node."""
    gpus, nodes = cfg["cluster"]["gpus"][stage], cfg["cluster"]["nodes"].get(stage, 1)
    if cfg["device"] != "cuda" or gpus * nodes <= 1:
        return f"{python} -m pvs.warm" if warm else python
    torchrun = f"{python} -m torch.distributed.run --nproc_per_node {gpus}"
    if nodes == 1:
        return f"{torchrun} --standalone"
    first_node = "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)"
    return (f"srun --nodes {nodes} --ntasks-per-node 1 {torchrun} --nnodes {nodes} --rdzv-backend c10d"
            f" --rdzv-id $SLURM_JOB_ID --rdzv-endpoint {first_node}:29500")



def main(argv: list[str] | None = None) -> int:
    from pvs.config import load_config
    from pvs.study import runs

    parser = doc_parser("python -m pvs.resources", __doc__)
    parser.add_argument("config", help="study config (YAML)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    parent_tokens = parse_tokens(cfg["parent"]["tokens"])
    print("job\tgpus\tmem_mb\ttime_limit_min\texpected_gpu_hours")
    totals: dict[str, float] = {}
    grid = runs(cfg)
    for run in grid:
        if run.arm == "parent":
            params, tokens, stage = parent_params(cfg), parent_tokens, "parent"
        elif run.arm == "pruned":
            stage = prune_stage(run.method)
            params, tokens = prune_size_and_tokens(cfg, run.method)
        else:
            params, stage = estimated_child_params(cfg, run.ratio), "child"
            tokens = run.tokens_estimate(parent_tokens)
        res = job_resources(cfg, stage, params, tokens)
        hours = gpu_hours(cfg, params, tokens) if tokens else res["gpu"] * res["runtime"] / 60
        totals[run.arm] = totals.get(run.arm, 0.0) + hours
        print(f"{run.model_path}\t{res['gpu']}\t{res['mem_mb']}\t{res['runtime']}\t{hours:.0f}")
    evals = len(grid) * cfg["cluster"]["gpus"]["evaluate"] * cfg["cluster"]["stage_runtime_min"]["evaluate"] / 60
    totals["evaluate (time limits)"] = evals
    summary = ", ".join(f"{arm} {hours:,.0f}" for arm, hours in totals.items())
    print(f"# expected GPU-hours by arm (6·N·D at MFU {cfg['cluster']['mfu']:g}; prune and evaluate: their time "
          f"limits): {summary}; total {sum(totals.values()):,.0f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
