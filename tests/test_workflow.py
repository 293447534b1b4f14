"""End to end: the smoke study through snakemake, then the incremental-rebuild guarantees of the DAG.

Runs once per test session in a temporary working directory (about 3-5 minutes on 2 cores).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pvs.prune.registry import GRANULARITY_ORDER, display_name

ROOT = Path(__file__).resolve().parents[1]
BLIMP = ROOT.parent / "shared" / "data" / "blimp"


def snakemake(workdir: Path, config: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """{rule: count} from the 'Job stats' table of a dry run."""
    block = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m.group(1) != "total"}


def smoke_config(path: Path, prune: dict | None = None, **budgets) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["results_dir"] = "results"
    cfg["evaluate"]["blimp_dir"] = str(BLIMP) if BLIMP.is_dir() else None
    cfg["budgets"].update(budgets)
    cfg["prune"].update(prune or {})
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = smoke_config(workdir / "smoke.yaml")
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return workdir, config


def test_smoke_study_writes_tables_and_figures(smoke_run):
    workdir, config = smoke_run
    cfg = yaml.safe_load(config.read_text())
    results = workdir / "results"
    summary = pd.read_csv(results / "summary.csv")
    methods, ratios = cfg["prune"]["methods"], cfg["prune"]["ratios"]
    n_scaling_extra = len(set(cfg["budgets"]["scaling"]) - {cfg["budgets"]["main"]})
    expected = 1 + len(methods) * (len(ratios) * 3 + 2 * n_scaling_extra + len(cfg["budgets"]["setting2_ratios"]))
    assert len(summary) == expected
    assert set(summary["arm"]) == {"parent", "pruned", "retrain", "scratch", "scratch_total"}
    assert summary["val_loss"].notna().all() and (summary["val_loss"] < 10).all()
    parent_loss = summary.loc[summary.arm == "parent", "val_loss"].item()
    # pruning one-shot hurts; retraining recovers part of it
    for method in methods:
        pruned = summary[(summary.arm == "pruned") & (summary.method == method) & (summary.ratio == 0.5)]
        retrained = summary[(summary.arm == "retrain") & (summary.method == method) & (summary.ratio == 0.5)
                            & (summary.budget == summary.budget.max())]
        assert pruned.val_loss.item() >= parent_loss - 0.05
        assert retrained.val_loss.item() < pruned.val_loss.item()
    for table in ("setting1.md", "setting2.md"):
        text = (results / "tables" / table).read_text()
        assert all(display_name(m) in text for m in methods), table
    for figure in ("loss_vs_tokens.png", "setting2.png"):
        assert (results / "figures" / figure).stat().st_size > 10_000
    assert (results / "logs" / "train" / "parent.log").exists()


def test_second_run_does_nothing(smoke_run):
    workdir, config = smoke_run
    result = snakemake(workdir, config, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_changing_one_budget_reruns_only_its_dependents(smoke_run, tmp_path):
    workdir, _ = smoke_run
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    scaling = [b for b in cfg["budgets"]["scaling"] if b != cfg["budgets"]["main"]]
    changed = smoke_config(tmp_path / "changed.yaml",
                           scaling=[("15k" if b == scaling[0] else b) for b in cfg["budgets"]["scaling"]])
    result = snakemake(workdir, changed, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    n_methods = len(cfg["prune"]["methods"])
    assert job_counts(result.stdout) == {"train_child": 2 * n_methods, "evaluate": 2 * n_methods, "report": 1, "all": 1}


def test_all_six_methods_run_through_the_dag(smoke_run):
    """Every registered method at r = 0.5 (main budget, setting 2), reusing the smoke study's data and parent."""
    workdir, _ = smoke_run
    config = smoke_config(workdir / "six.yaml", prune={"methods": list(GRANULARITY_ORDER), "ratios": [0.5]},
                          scaling=["20k"], setting2_ratios=[0.5])
    dry = snakemake(workdir, config, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    new = len(set(GRANULARITY_ORDER) - set(yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())["prune"]["methods"]))
    assert job_counts(dry.stdout) == {"prune": new, "train_child": 3 * new, "evaluate": 4 * new, "report": 1, "all": 1}
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = pd.read_csv(workdir / "results" / "summary.csv")
    summary = summary[summary.ratio == 0.5]
    for method in GRANULARITY_ORDER:
        rows = summary[summary.method == method].set_index("arm")
        assert set(rows.index) == {"pruned", "retrain", "scratch", "scratch_total"}, method
        assert abs(rows.loc["pruned", "achieved_ratio"] - 0.5) <= 0.03, method
        assert rows.loc["retrain", "val_loss"] < rows.loc["pruned", "val_loss"], method
    meta = json.loads((workdir / "results" / "models" / "pruned" / "sheared_llama" / "r0.5" / "meta.json").read_text())
    assert meta["mask_learning_tokens"] > 0
    text = (workdir / "results" / "tables" / "setting2.md").read_text()
    assert all(display_name(m) in text for m in GRANULARITY_ORDER)


def test_flap_bias_compensation_beats_none_on_the_smoke_parent(smoke_run):
    """FLAP's ordering on the study's own parent (books; the stdlib test fixture does not show it, see
    tests/test_prune_structured.py): compensated children have the lower held-out loss at 0.5 and 0.7."""
    import torch

    from pvs.modeling import load_model
    from pvs.prune import flap
    from pvs.prune.common import calibration_windows, lm_loss
    from pvs.tokens import load_split, spread_windows

    results = smoke_run[0] / "results"
    calib = calibration_windows(results / "data", 16, 128, seed=0)
    val = torch.from_numpy(spread_windows(load_split(results / "data", "val"), 128, 32))
    for ratio in (0.5, 0.7):
        losses = {comp: lm_loss(flap.prune(load_model(results / "models" / "parent"), calib, ratio,
                                           {"flap_bias_compensation": comp, "seed": 0}).model, val)
                  for comp in (True, False)}
        assert losses[True] < losses[False] - 0.01, (ratio, losses)
