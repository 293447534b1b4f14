"""Dev loss of the parent against the std of its random init (``train.init_std``), one run per std.

    .venv/bin/python benchmarks/init_sweep.py                                   # config.yaml, results/data
    .venv/bin/python benchmarks/init_sweep.py --stds 0.02 0.05 --tokens 300k --sparse-init results/models/pruned/sparsegpt/r0.5

Each run is ``python -m pvs.train --arm parent`` on the prepared data (``--data``, from ``python -m pvs.data``)
with the config's recipe and only ``train.init_std`` changed, at one peak LR (``--lr``; default: the parent's
chosen LR in ``<results_dir>/lr/chosen/parent.json`` when the study has one, else ``train.lr``) and
``--tokens`` (default: ``train.lr_sweep_parent_tokens``, else half of ``parent.tokens``), scored on the dev
split like the LR sweep's runs (``--eval-split dev``: no reported number is measured on it). With
``--sparse-init`` the masked twin (``--arm scratch`` on that sparse child: the parent's shape, its mask,
random init at the same std) runs beside every std, the comparison finding F0 makes at P tokens.
``--jobs`` runs at a time, one thread each. Writes ``benchmarks/results/init_sweep.json`` (library versions,
CPU count, date).

Why: the paper's 0.02 is the Llama init at hidden 4096; the default study's parent has hidden 32, and the
init std decides how fast a model that small learns (README "The recipe").
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from pvs.budget import format_tokens, parse_tokens  # noqa: E402
from pvs.cli import doc_parser  # noqa: E402
from pvs.config import load_config  # noqa: E402
from pvs.versions import library_versions  # noqa: E402


def default_lr(cfg: dict) -> float:
    chosen = Path(cfg["results_dir"]) / "lr" / "chosen" / "parent.json"
    return json.loads(chosen.read_text())["lr"] if chosen.exists() else cfg["train"]["lr"]


def default_tokens(cfg: dict) -> int:
    swept = cfg["train"].get("lr_sweep_parent_tokens")
    return parse_tokens(swept) if swept is not None else parse_tokens(cfg["parent"]["tokens"]) // 2


def one_run(arm: str, std: float, args, raw: dict, work: Path) -> dict:
    name = f"{arm}_std{std:g}"
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**raw, "train": {**raw.get("train", {}), "init_std": std}}))
    out = work / f"{name}.json"
    cmd = [sys.executable, "-m", "pvs.train", "--arm", arm, "--tokens", str(args.tokens), "--data", args.data,
           "--out", str(work / name), "--config", str(config), "--threads", "1", "--lr", str(args.lr),
           "--eval-split", "dev", "--eval-out", str(out)]
    if arm == "scratch":
        cmd += ["--init", args.sparse_init]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "workflow"))
    start = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited with {done.returncode} (log: {work / name}.log)")
    result = json.loads(out.read_text())
    return {"arm": arm, "init_std": std, "dev_loss": result["dev_loss"], "final_val_loss": result["final_val_loss"],
            "steps": result["steps"], "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/init_sweep.py", __doc__)
    parser.add_argument("--config", default="config.yaml", help="study config whose recipe and arch are used")
    parser.add_argument("--data", default="results/data", help="prepared data directory (python -m pvs.data)")
    parser.add_argument("--tokens", help="tokens per run (default: train.lr_sweep_parent_tokens, else P/2)")
    parser.add_argument("--lr", type=float, help="peak LR of every run (default: the parent's chosen LR, else train.lr)")
    parser.add_argument("--stds", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2], help="init stds")
    parser.add_argument("--sparse-init", help="a sparse child (masks.safetensors): also run its masked twin per std")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--work", default="results/benchmarks/init_sweep", help="scratch folder for the runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "init_sweep.json"))
    args = parser.parse_args(argv)
    if not (Path(args.data) / "manifest.json").exists():
        parser.error(f"--data {args.data}: no manifest.json (prepare it: python -m pvs.data --config {args.config} "
                     f"--out {args.data})")
    if args.sparse_init and not (Path(args.sparse_init) / "masks.safetensors").exists():
        parser.error(f"--sparse-init {args.sparse_init}: no masks.safetensors (not a sparse child)")
    cfg, raw = load_config(args.config), yaml.safe_load(Path(args.config).read_text())
    args.tokens = parse_tokens(args.tokens) if args.tokens else default_tokens(cfg)
    args.lr = args.lr if args.lr is not None else default_lr(cfg)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    jobs = [(arm, std) for std in args.stds for arm in ("parent", "scratch")[:2 if args.sparse_init else 1]]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: one_run(*job, args, raw, work), jobs))
    for row in rows:
        print(f"{row['arm']:8s} init_std {row['init_std']:<6g} dev loss {row['dev_loss']:.4f}  ({row['seconds']} s)")
    report = {"config": args.config, "data": args.data, "tokens": args.tokens, "tokens_label": format_tokens(args.tokens),
              "lr": args.lr, "sparse_init": args.sparse_init, "runs": rows,
              "best": {arm: min((r for r in rows if r["arm"] == arm), key=lambda r: r["dev_loss"])["init_std"]
                       for arm in {r["arm"] for r in rows}},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "jobs": args.jobs,
              "versions": library_versions(), "date": time.strftime("%Y-%m-%d %H:%M")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
