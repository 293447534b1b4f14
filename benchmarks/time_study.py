"""Time a whole study from an empty results folder, and the dry run, and sum the per-rule job times.

    .venv/bin/python benchmarks/time_study.py --configfile configs/smoke.yaml
    .venv/bin/python benchmarks/time_study.py --configfile config.yaml --cores 2

Writes ``benchmarks/results/<study>.json`` (wall seconds of the full run, of a `snakemake -n` on the
finished study and on an empty one, and per rule: job count, summed and maximum job seconds from
Snakemake's ``benchmark:`` files). The study's results folder is emptied first unless --keep is given; its
README, links and every folder holding another study at any depth (results/smoke, results/regime with its
tpp* studies and the report across them) are kept.
"""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

from pvs.cli import doc_parser
from pvs.config import load_config
from pvs.versions import library_versions, machine_info


def snakemake(configfile: str, cores: int, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [sys.executable, "-m", "snakemake", "--configfile", configfile, "--cores", str(cores), *extra]
    start = time.time()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.time() - start, result


def per_rule_seconds(bench_dir: Path) -> dict[str, dict]:
    """Group Snakemake benchmark TSVs by the rule folder they were written under."""
    rules: dict[str, list[float]] = defaultdict(list)
    for tsv in bench_dir.rglob("*.tsv"):
        stage = tsv.relative_to(bench_dir).parts[0].removesuffix(".tsv")
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        rules[stage].extend(float(r["s"]) for r in rows)
    return {k: {"jobs": len(v), "sum_s": round(sum(v), 1), "max_s": round(max(v), 1)} for k, v in sorted(rules.items())}


def other_study(path: Path) -> bool:
    """A folder (or a link) holding another study's results at any depth: results/smoke inside results/, or
    results/regime, whose studies are results/regime/tpp*/ beside the report across them."""
    return path.is_symlink() or (path.is_dir() and next(path.rglob("config.resolved.yaml"), None) is not None)


def empty_study_folder(results: Path) -> None:
    """Delete everything the study wrote under ``results``; its README and other studies' folders stay."""
    if not results.exists():
        return
    for child in results.iterdir():
        if child.name == "README.md" or other_study(child):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/time_study.py", __doc__)
    parser.add_argument("--configfile", default="config.yaml", help="study config to run")
    parser.add_argument("--cores", type=int, default=2, help="cores given to snakemake")
    parser.add_argument("--keep", action="store_true", help="do not delete the study's results folder first")
    args = parser.parse_args(argv)
    cfg = load_config(ROOT / args.configfile)
    results = ROOT / cfg["results_dir"]
    if not args.keep:
        empty_study_folder(results)
    dry_empty, _ = snakemake(args.configfile, args.cores, "-n")
    wall, run = snakemake(args.configfile, args.cores)
    if run.returncode != 0:
        print(run.stdout[-3000:], run.stderr[-3000:], file=sys.stderr)
        return run.returncode
    dry_done, again = snakemake(args.configfile, args.cores, "-n")
    record = {"study": cfg["study"], "configfile": args.configfile, "cores": args.cores,
              "wall_s": round(wall, 1), "dry_run_empty_s": round(dry_empty, 2), "dry_run_done_s": round(dry_done, 2),
              "second_run_does_nothing": "Nothing to be done" in again.stdout + again.stderr,
              "per_rule": per_rule_seconds(results / "benchmarks"),
              "machine": machine_info(),
              "versions": library_versions(), "date": time.strftime("%Y-%m-%d %H:%M")}
    out = ROOT / "benchmarks" / "results" / f"{cfg['study']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(yaml.safe_dump(record, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
