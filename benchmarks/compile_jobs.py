"""Whole training jobs, eager against ``train.compile: layers``: does compiling pay in a study's real jobs?

    .venv/bin/python benchmarks/compile_jobs.py                         # the default study's shapes, 2 reps
    .venv/bin/python benchmarks/compile_jobs.py --jobs parent:100k --reps 1 --work /tmp/pvs-compile

A compiled step is faster (benchmarks/train_throughput.py), but a job also pays for tracing and compiling
its graphs. This runs real ``pvs.train`` jobs through the warm-start launcher, as the study runs them
(``python -m pvs.warm -m pvs.train``, one thread, the thread variables Snakemake sets), in three variants
of the same config, interleaved within each repetition:

  eager      train.compile false (the default study today)
  cold       compile: layers with an empty inductor cache (the study's first job of a shape)
  warm       compile: layers with the cache the cold run filled (a later job of the same shape)

Every variant has the same LR and data; the jobs' final validation losses are recorded beside the times.
A job spec is ``ARM:TOKENS[:INIT]`` with INIT a pruning method (its child at r = 0.5 of the prepared parent,
benchmarks/startup.py's preparation: data, a briefly trained parent, pruned children). The seconds are the
whole job's wall clock (the client's, start to exit), so start-up, model set-up, compiling, the steps, the
validation passes and the writing of the model all count. Medians over the repetitions; eager / cold and
eager / warm are what a study gains per job (above 1: compiling pays for that job).
Writes ``benchmarks/results/compile_jobs.json`` (every repetition, versions, the machine: CPU model and flags).
"""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "workflow"))

from startup import add_preparation_args, environment, prepare, run  # noqa: E402  (benchmarks/startup.py)

from pvs.cli import doc_parser  # noqa: E402
from pvs.versions import library_versions, machine_info  # noqa: E402

VARIANTS = ("eager", "cold", "warm")
# the default study's longest jobs (S_{P+N} of a sparse child and the parent's size: 1.9375M tokens), its
# main budget (retraining a sparse child, 387.5k) and a Minitron-Depth child at the sweep budget (193.75k)
DEFAULT_JOBS = ("scratch_total:1.9375M:sparsegpt", "retrain:387.5k:sparsegpt", "scratch:193.75k:minitron_depth")


def variant_config(base: Path, variant: str, cache: Path, out: Path) -> Path:
    """The study's resolved config with the variant's compile setting (and its inductor cache)."""
    cfg = yaml.safe_load(base.read_text())
    cfg["train"].update(compile="layers" if variant != "eager" else False,
                        compile_cache_dir=str(cache) if variant != "eager" else None, compile_min_tokens=None)
    out.write_text(yaml.safe_dump(cfg))
    return out


def child(p: dict, method: str, env: dict, work: Path) -> Path:
    """The parent pruned at r = 0.5 by ``method`` (the prepared sparsegpt child, or a new one)."""
    out = work / f"child_{method}"
    if method == "sparsegpt":
        return p["child"]
    if not out.exists():
        run([sys.executable, "-m", "pvs.prune", "--method", method, "--ratio", "0.5", "--model", str(p["parent"]),
             "--data", str(p["data"]), "--out", str(out), "--config", str(p["config"]), "--threads", "1"],
            env, work / "logs" / f"prepare_{method}.log")
    return out


def job_command(spec: str, p: dict, config: Path, out: Path, lr: float, env: dict, work: Path) -> list[str]:
    arm, tokens, *init = spec.split(":")
    command = [sys.executable, "-m", "pvs.warm", "-m", "pvs.train", "--arm", arm, "--tokens", tokens,
               "--data", str(p["data"]), "--out", str(out / "model"), "--ckpt", str(out / "ckpt"),
               "--config", str(config), "--threads", "1", "--lr", str(lr)]
    return command + (["--init", str(child(p, init[0], env, work))] if init else [])


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/compile_jobs.py", __doc__)
    parser.add_argument("--jobs", nargs="+", default=list(DEFAULT_JOBS), metavar="ARM:TOKENS[:INIT]",
                        help="training jobs to time (default: %(default)s)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions of every variant (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=0.008, help="peak LR of every job (default: %(default)s)")
    add_preparation_args(parser, "/tmp/pvs-compile-bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/compile_jobs.json"), help="results JSON")
    args = parser.parse_args(argv)
    work = Path(args.work)
    env = environment(work)
    p = prepare(work, env, args)
    warm_launcher = [sys.executable, "-m", "pvs.warm"]
    subprocess.run(warm_launcher + ["--stop"], env=env)
    run(warm_launcher + ["this"], env)                       # the server's own start, once, outside the timings
    records = []
    for rep in range(args.reps):
        for spec in args.jobs:
            cache = work / "inductor" / f"{spec.replace(':', '_')}_{rep}"
            shutil.rmtree(cache, ignore_errors=True)
            order = VARIANTS if rep % 2 == 0 else ("cold", "warm", "eager")   # warm always after its cold
            for variant in order:
                out = work / "runs" / f"{spec.replace(':', '_')}_{variant}_{rep}"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                config = variant_config(p["config"], variant, cache, out / "config.yaml")
                seconds = run(job_command(spec, p, config, out, args.lr, env, work), env, out / "job.log")
                meta = json.loads((out / "model" / "train_meta.json").read_text())
                records.append({"job": spec, "variant": variant, "rep": rep, "seconds": round(seconds, 2),
                                "steps": meta["steps"], "final_val_loss": meta["final_val_loss"],
                                "compile": meta["run_options"]["compile"]})
                print(f"rep {rep} {spec:34s} {variant:5s}: {seconds:7.2f} s, val {meta['final_val_loss']:.4f}",
                      file=sys.stderr)
    subprocess.run(warm_launcher + ["--stop"], env=env)
    summary = {}
    for spec in args.jobs:
        med = {v: statistics.median(r["seconds"] for r in records if r["job"] == spec and r["variant"] == v)
               for v in VARIANTS}
        val = {v: next(r["final_val_loss"] for r in records if r["job"] == spec and r["variant"] == v)
               for v in VARIANTS}
        summary[spec] = {"median_s": med, "eager_over_cold": round(med["eager"] / med["cold"], 3),
                         "eager_over_warm": round(med["eager"] / med["warm"], 3),
                         "val_loss_rep0": val, "steps": next(r["steps"] for r in records if r["job"] == spec)}
    result = {"config": args.config, "lr": args.lr, "reps": args.reps, "jobs": summary, "raw": records,
              "machine": machine_info(), "versions": library_versions()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
