"""Process start-up seconds of the study's jobs, cold (``python -m pvs.<stage>``) vs warm (``python -m pvs.warm``).

    .venv/bin/python benchmarks/startup.py                 # 3 reps of a prune, a training and an evaluation job
    .venv/bin/python benchmarks/startup.py --reps 5 --work /tmp/pvs-startup

Prepares once, in --work, a study's data (``python -m pvs.data`` on --config, default config.yaml), its
lm-eval tasks (BLiMP included where the config names a directory), a parent of its shape trained briefly and
one pruned child; then times real jobs of the three warm-started rules at that study's settings (prune:
sparsegpt r0.5; train: retrain the child on --train-tokens; evaluate: the parent with every local lm-eval
task), each through both paths, interleaved (the order alternates per rep), with the thread variables
Snakemake sets for a 1-thread job. A warm no-op job (``python -m pvs.warm this``) gives the warm path's own
start-up S_warm (client, connection, fork); a job's in-process work is W = T_warm - S_warm and the cold
start-up S_cold = T_cold - W (work that neither path avoids, pvs's own imports included, counts as work).
Medians over the reps. The share of job-seconds is S / T per job, over these jobs, and weighted by the
study's own warm-started job counts, read from ``snakemake -n`` on --config (train = the parent, the children
and the LR sweep's runs; prune; evaluate), the warm path paying its servers' cold starts once each. The timed
training job runs the study's smallest training budget unless --train-tokens says otherwise, so the share is
overstated for the longer ones.
Every rep's outputs are compared (weights and JSON records, their ``seconds*`` keys aside): ``outputs_identical_cold_and_warm``.
Writes ``benchmarks/results/startup.json`` (with library versions, the machine and the job counts).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from pvs.cli import doc_parser  # noqa: E402
from pvs.versions import library_versions, machine_info  # noqa: E402

THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# the rules whose jobs start warm (workflow/rules/common.smk WARM_PY), by the kind of job this script times
WARM_RULES = {"train": ("train_parent", "train_child", "lr_sweep_parent", "lr_sweep_child"), "prune": ("prune",),
              "evaluate": ("evaluate",)}


def study_warm_jobs(configfile: str) -> dict[str, int]:
    """The study's warm-started jobs per kind, from the job stats of ``snakemake -n`` on ``configfile``."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1", "--configfile", configfile]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    counts: dict[str, int] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            counts.setdefault(fields[0], int(fields[1]))           # the first job-stats table
    return {kind: sum(counts.get(rule, 0) for rule in rules) for kind, rules in WARM_RULES.items()}


def smallest_training_budget(configfile: str) -> str:
    """The study's smallest training budget: the main and scaling budgets, and the LR sweep's where it runs."""
    from pvs.budget import format_tokens, parse_tokens
    from pvs.config import load_config
    from pvs.sweep import Sweep

    cfg = load_config(ROOT / configfile)
    budgets = [parse_tokens(b) for b in [cfg["budgets"]["main"], *cfg["budgets"]["scaling"]]]
    if cfg["train"].get("lr_sweep"):
        budgets.append(Sweep.from_config(cfg).tokens)              # the sweep's own default rule
    return format_tokens(min(budgets))


def environment(work: Path) -> dict[str, str]:
    env = dict(os.environ, PVS_WARM_DIR=str(work / "warm"), PVS_WARM_IDLE="600")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "workflow"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({name: "1" for name in THREAD_VARS})
    env.pop("SLURM_JOB_ID", None)
    return env


def run(cmd: list[str], env: dict, log: Path | None = None) -> float:
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode} (log: {log})")
    return seconds


def add_preparation_args(parser, work: str) -> None:
    """The options ``prepare`` reads: the study config, the prepared parent's tokens, the scratch directory."""
    parser.add_argument("--config", default="config.yaml",
                        help="study whose settings the jobs use (default: %(default)s)")
    parser.add_argument("--parent-tokens", default="20k", help="tokens of the prepared parent (default: %(default)s)")
    parser.add_argument("--work", default=work, help="scratch directory (kept for reruns; default: %(default)s)")


def prepare(work: Path, env: dict, args) -> dict[str, Path]:
    from pvs.config import load_config, write_resolved_config

    py = [sys.executable, "-m"]
    config = work / "config.resolved.yaml"
    cfg = load_config(ROOT / args.config)
    if not config.exists():
        write_resolved_config(cfg, str(config))
    ev = cfg["evaluate"]
    blimp = (["--blimp-dir", str(ROOT / ev["blimp_dir"]), "--blimp-limit", str(ev["blimp_limit"] or "all"),
              "--blimp-subtasks", *ev["blimp_subtasks"]] if ev["blimp_dir"] else [])
    data, tasks, parent, child = work / "data", work / "data/lmeval_tasks", work / "parent", work / "child"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    steps = [
        (data / "manifest.json",
         ["pvs.data", "--config", str(config), "--out", str(data), "--cache", str(work / "dl")]),
        (tasks, ["pvs.evaluate.tasks", "--data", str(data), "--out", str(tasks),
                 "--examples", str(ev["local_task_examples"]), "--seed", str(cfg["seed"]), *blimp]),
        (parent, ["pvs.train", "--arm", "parent", "--tokens", args.parent_tokens, "--data", str(data),
                  "--out", str(parent), "--ckpt", str(work / "ckpt/parent"), "--config", str(config),
                  "--threads", "1"]),
        (child, ["pvs.prune", "--method", "sparsegpt", "--ratio", "0.5", "--model", str(parent),
                 "--data", str(data), "--out", str(child), "--config", str(config), "--threads", "1"]),
    ]
    for target, cmd in steps:
        if not target.exists():
            print(f"prepare: {cmd[0]} -> {target}", file=sys.stderr)
            run(py + cmd, env, logs / f"prepare_{cmd[0]}.log")
    return {"config": config, "data": data, "tasks": tasks, "parent": parent, "child": child}


def jobs(p: dict[str, Path], out: Path, train_tokens: str) -> dict[str, list[str]]:
    common = ["--data", str(p["data"]), "--config", str(p["config"]), "--threads", "1"]
    return {
        "prune": ["pvs.prune", "--method", "sparsegpt", "--ratio", "0.5", "--model", str(p["parent"]),
                  "--out", str(out / "pruned"), *common],
        "train": ["pvs.train", "--arm", "retrain", "--tokens", train_tokens, "--init", str(p["child"]), "--out",
                  str(out / "trained"), "--ckpt", str(out / "ckpt"), *common],
        "evaluate": ["pvs.evaluate", "--model", str(p["parent"]), "--tasks", str(p["tasks"]), "--out",
                     str(out / "eval.json"), *common],
    }


def output_digest(run_dir: Path) -> str:
    """A digest of what a job wrote: every safetensors file, and every JSON file without its run-time keys."""
    digest = hashlib.sha256()
    for path in sorted(run_dir.rglob("*")):
        if path.suffix == ".safetensors":
            digest.update(path.relative_to(run_dir).as_posix().encode() + path.read_bytes())
        elif path.suffix == ".json":
            record = json.loads(path.read_text())
            if isinstance(record, dict):                             # run time: "seconds", "seconds_this_run"
                record = {key: value for key, value in record.items() if not key.startswith("seconds")}
            digest.update(path.relative_to(run_dir).as_posix().encode() + json.dumps(record, sort_keys=True).encode())
    return digest.hexdigest()


def outputs_match(runs: Path, names=("prune", "train", "evaluate")) -> dict[str, bool]:
    """Per job: whether every rep on both paths (``<name>_<cold|warm>_<rep>``) wrote the same outputs."""
    return {name: len({output_digest(d) for d in runs.glob(f"{name}_*_*") if d.is_dir()}) == 1 for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/startup.py", __doc__)
    parser.add_argument("--reps", type=int, default=3, help="timed runs of each job on each path (default: 3)")
    add_preparation_args(parser, "/tmp/pvs-startup-bench")
    parser.add_argument("--train-tokens", default=None,
                        help="tokens of the timed retraining job (default: the study's smallest training budget)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/startup.json"), help="results JSON")
    args = parser.parse_args(argv)
    args.train_tokens = args.train_tokens or smallest_training_budget(args.config)
    n = study_warm_jobs(args.config)
    work = Path(args.work)
    env = environment(work)
    p = prepare(work, env, args)
    cold_cmd, warm_cmd = [sys.executable, "-m"], [sys.executable, "-m", "pvs.warm"]
    subprocess.run(warm_cmd + ["--stop"], env=env)
    server_start = run(warm_cmd + ["this"], env)  # the first warm job starts the server (once per study and key)
    times: dict[str, dict[str, list[float]]] = {}
    for rep in range(args.reps):
        times.setdefault("noop", {}).setdefault("warm", []).append(run(warm_cmd + ["this"], env))
        times["noop"].setdefault("cold", []).append(run(cold_cmd + ["this"], env))
        for name in ("prune", "train", "evaluate"):
            paths = ("cold", "warm") if rep % 2 == 0 else ("warm", "cold")
            for path in paths:
                out = work / "runs" / f"{name}_{path}_{rep}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                cmd = (cold_cmd if path == "cold" else warm_cmd) + jobs(p, out, args.train_tokens)[name]
                seconds = run(cmd, env, out / "job.log")
                times.setdefault(name, {}).setdefault(path, []).append(seconds)
                print(f"rep {rep} {name:8s} {path}: {seconds:6.2f} s", file=sys.stderr)
    subprocess.run(warm_cmd + ["--stop"], env=env)
    med = {name: {path: statistics.median(v) for path, v in paths.items()} for name, paths in times.items()}
    s_warm = med["noop"]["warm"]
    per_job = {}
    for name in ("prune", "train", "evaluate"):
        work_s = med[name]["warm"] - s_warm
        s_cold = med[name]["cold"] - work_s
        per_job[name] = {"total_cold_s": round(med[name]["cold"], 3), "total_warm_s": round(med[name]["warm"], 3),
                         "work_s": round(work_s, 3), "startup_cold_s": round(s_cold, 3),
                         "startup_warm_s": round(s_warm, 3), "share_cold": round(s_cold / med[name]["cold"], 4),
                         "share_warm": round(s_warm / med[name]["warm"], 4)}
    study = {}
    for path in ("cold", "warm"):
        startup = sum(n[k] * per_job[k][f"startup_{path}_s"] for k in per_job)
        total = sum(n[k] * per_job[k][f"total_{path}_s"] for k in per_job)
        if path == "warm":  # each server's first job waits for its imports: two keys (1- and 2-thread jobs)
            startup, total = startup + 2 * server_start, total + 2 * server_start
        study[path] = {"startup_s": round(startup, 1), "job_s": round(total, 1), "share": round(startup / total, 4)}
    these = {path: sum(per_job[k][f"startup_{path}_s"] for k in per_job) / sum(per_job[k][f"total_{path}_s"]
                                                                           for k in per_job)
             for path in ("cold", "warm")}
    result = {"reps": args.reps, "cpu_count": os.cpu_count(), "machine": machine_info(), "versions": library_versions(),
              "threads_env": "1 (as Snakemake sets for a 1-thread job)", "server_start_s": round(server_start, 3),
              "noop_s": {k: round(v, 3) for k, v in med["noop"].items()}, "jobs": per_job,
              "share_on_these_jobs": {k: round(v, 4) for k, v in these.items()},
              "outputs_identical_cold_and_warm": outputs_match(work / "runs"),
              "config": args.config, "parent_tokens": args.parent_tokens, "train_tokens": args.train_tokens,
              "weighted_by_default_study_jobs": {"jobs": n, **study},
              "raw_s": times}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("server_start_s", "noop_s", "jobs", "share_on_these_jobs",
                                              "weighted_by_default_study_jobs")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
