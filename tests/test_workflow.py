"""End to end: the smoke study through snakemake, then the incremental-rebuild guarantees of the DAG.

Runs once per test session in a temporary working directory (about 3-5 minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pvs.budget import parse_tokens
from pvs.prune.registry import GRANULARITY_ORDER, display_name
from pvs.report.build import REPORT_FILES
from pvs.study import ARM_ORDER

ROOT = Path(__file__).resolve().parents[1]
BLIMP = ROOT.parent / "shared" / "data" / "blimp"


PERPLEXITY_TEXT = ROOT / "tests" / "data" / "perplexity_text"


def snakemake(workdir: Path, config: Path, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def job_counts(dry_run_output: str) -> dict[str, int]:
    """{rule: count} from the 'Job stats' table of a dry run."""
    block = dry_run_output.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m.group(1) != "total"}


def smoke_config(path: Path, prune: dict | None = None, top: dict | None = None, **budgets) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg.update(top or {})
    # one extra perplexity set, as WikiText/C4 at scale (eval_sets fetches it): README paragraphs kept in tests/data
    cfg["evaluate"].update(perplexity_datasets={"readme": {"name": str(PERPLEXITY_TEXT), "split": "test"}},
                           perplexity_max_tokens=2048)
    cfg["results_dir"] = "results"
    cfg["evaluate"]["blimp_dir"] = str(BLIMP) if BLIMP.is_dir() else None
    cfg["budgets"].update(budgets)
    cfg["prune"].update(prune or {})
    if prune and "methods" in prune:   # the smoke sweep's child methods that this grid still has (none: no child sweep)
        cfg["train"]["lr_sweep_methods"] = [m for m in cfg["train"]["lr_sweep_methods"] if m in prune["methods"]]
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = smoke_config(workdir / "smoke.yaml")
    result = snakemake(workdir, config)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # later tests add methods to this study; its own summary is kept for the tests that compare numbers
    (workdir / "summary.smoke.csv").write_bytes((workdir / "results" / "summary.csv").read_bytes())
    return workdir, config


def test_smoke_study_writes_tables_and_figures(smoke_run):
    workdir, config = smoke_run
    cfg = yaml.safe_load(config.read_text())
    results = workdir / "results"
    summary = pd.read_csv(results / "summary.csv")
    methods, ratios = cfg["prune"]["methods"], cfg["prune"]["ratios"]
    n_scaling_extra = len(set(cfg["budgets"]["scaling"]) - {cfg["budgets"]["main"]})
    per_ratio = 1 + 2 * cfg["seeds"]                     # one-shot + (P-R_N, S_N) per seed at the main budget
    settings23 = (len(cfg["budgets"]["setting2_ratios"]) + len(cfg["budgets"]["setting3_ratios"])) * cfg["seeds"]
    expected = 1 + len(methods) * (len(ratios) * per_ratio + 2 * n_scaling_extra + settings23)
    assert len(summary) == expected
    assert set(summary["arm"]) == set(ARM_ORDER) and set(summary.seed) == set(range(cfg["seeds"]))
    assert summary["val_loss"].notna().all() and (summary["val_loss"] < 10).all()
    assert json.loads((results / "data" / "evalsets" / "index.json").read_text())["perplexity_sets"]["readme"]["tokens"] == 2048
    assert summary["ppl/readme"].notna().all() and (summary["ppl/readme"] > 1).all()   # every model, same tokens
    parent_loss = summary.loc[summary.arm == "parent", "val_loss"].item()
    # pruning one-shot hurts; retraining recovers part of it
    for method in methods:
        pruned = summary[(summary.arm == "pruned") & (summary.method == method) & (summary.ratio == 0.5)]
        retrained = summary[(summary.arm == "retrain") & (summary.method == method) & (summary.ratio == 0.5)
                            & (summary.budget == summary.budget.max()) & (summary.seed == 0)]
        assert pruned.val_loss.item() >= parent_loss - 0.05
        assert retrained.val_loss.item() < pruned.val_loss.item()
    for table in ("setting1.md", "setting2.md", "setting3.md", "main.md", "main.tex"):
        text = (results / "tables" / table).read_text()
        assert all(display_name(m) in text for m in methods), table
    assert " ± " in (results / "tables" / "main.md").read_text()          # two seeds at the main budget
    for name in REPORT_FILES.values():
        assert (results / name).stat().st_size > 300, name
        if name.endswith(".png"):
            assert (results / name).with_suffix(".pdf").read_bytes().startswith(b"%PDF"), name
    flops = summary[summary.arm == "scratch_flops"]
    assert len(flops) == len(methods) * cfg["seeds"] and (flops.train_tokens > parse_tokens(cfg["budgets"]["main"])).all()
    retrain = summary[(summary.arm == "retrain") & summary.method.isin(flops.method) & (summary.ratio == 0.5)
                      & (summary.budget == flops.budget.iloc[0]) & (summary.seed == 0)].set_index("method")
    for row in flops.itertuples():   # S_F gets (at least) the FLOPs of the whole P-R_N pipeline
        assert 1.0 <= row.train_flops / retrain.loc[row.method, "pipeline_flops"] < 1.01, row.method
    findings = (results / "findings.md").read_text()
    assert all(f"| F{k}:" in findings for k in range(1, 6)) and "Scale caveat" in findings
    assert (results / "logs" / "train" / "parent.log").exists()


def test_snakemake_report_renders_captions_and_labels(smoke_run):
    workdir, config = smoke_run
    result = snakemake(workdir, config, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    import zipfile
    with zipfile.ZipFile(workdir / "report.zip") as archive:
        names = archive.namelist()
        text = "".join(archive.read(n).decode("utf-8", "ignore") for n in names if n.endswith((".html", ".js")))
    assert sum(n.endswith(".png") for n in names) >= 6 and any(n.endswith("findings.md") for n in names)
    for caption in ("Figure 1 (left), setting 1", "Figure 1 (right), setting 2", "Gap heatmap", "Main table",
                    "Findings."):
        assert caption in text, caption
    assert "granularity" in text and ("coarse → fine" in text or "coarse \\u2192 fine" in text)   # JSON-escaped


def test_second_run_does_nothing(smoke_run):
    workdir, config = smoke_run
    result = snakemake(workdir, config, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


def test_another_launcher_of_the_same_environment_reruns_nothing(smoke_run):
    """`.venv/bin/snakemake` runs as bin/python3, `python -m snakemake` as bin/python: the shell commands (a rerun
    trigger) must be the same, or a finished study re-runs from its data up (pvs.resources.job_python)."""
    workdir, config = smoke_run
    bin_dir = Path(sys.executable).parent
    other = bin_dir / ("python3" if Path(sys.executable).name == "python" else "python")
    assert os.path.samefile(other, sys.executable) and str(other) != sys.executable
    cmd = [str(other), "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2", "-n"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_job_python_names_the_environment_python_whatever_the_launcher():
    from pvs.resources import job_python

    bin_dir = Path(sys.executable).parent
    assert job_python(str(bin_dir / "python3")) == job_python(str(bin_dir / "python")) == str(bin_dir / "python3")
    assert job_python("/nonexistent/bin/python3") == "/nonexistent/bin/python3"


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


def test_changing_run_only_train_options_reruns_nothing(smoke_run, tmp_path):
    """pvs.config.RUN_ONLY_TRAIN_KEYS (checkpoint interval, logging, micro-batch, ...) are no rerun trigger."""
    workdir, _ = smoke_run
    changed = smoke_config(tmp_path / "run_only.yaml")
    cfg = yaml.safe_load(changed.read_text())
    cfg["train"].update(checkpoint_every=cfg["train"].get("checkpoint_every", 100) + 1,
                        micro_batch_size=1, activation_checkpointing=True)
    changed.write_text(yaml.safe_dump(cfg))
    result = snakemake(workdir, changed, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_all_six_methods_run_through_the_dag(smoke_run):
    """Every registered method at r = 0.5 (main budget, setting 2), reusing the smoke study's data and parent."""
    workdir, _ = smoke_run
    config = smoke_config(workdir / "six.yaml", prune={"methods": list(GRANULARITY_ORDER), "ratios": [0.5]},
                          top={"seeds": 1}, scaling=["20k"], setting2_ratios=[0.5], setting3_ratios=[])
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
    from pvs.data.tokens import load_split, spread_windows

    results = smoke_run[0] / "results"
    calib = calibration_windows(results / "data", 16, 128, seed=0)
    val = torch.from_numpy(spread_windows(load_split(results / "data", "val"), 128, 32))
    parent_loss = lm_loss(load_model(results / "models" / "parent"), val)
    for ratio in (0.5, 0.7):
        losses = {comp: lm_loss(flap.prune(load_model(results / "models" / "parent"), calib, ratio,
                                           {"bias_compensation": comp, "seed": 0}).model, val)
                  for comp in (True, False)}
        if losses[False] - parent_loss < 0.1:    # a parent with nothing to lose cannot show the ordering
            pytest.skip(f"the smoke parent loses only {losses[False] - parent_loss:.3f} nats to FLAP at r = {ratio} "
                        f"({parent_loss:.3f} -> {losses[False]:.3f}): too little trained to test compensation")
        assert losses[True] < losses[False] - 0.01, (ratio, losses)


def test_slurm_profile_submits_one_task_per_job_with_the_rules_resources(smoke_run, tmp_path):
    """The smoke study's next jobs through `--workflow-profile profiles/slurm` against the stand-in sbatch,
    squeue and sacct of tests/slurm_standin (they run each job here and record its sbatch options)."""
    import os

    workdir, _ = smoke_run
    config = smoke_config(workdir / "slurm.yaml", prune={"methods": ["sparsegpt"], "ratios": [0.5]},
                          top={"seeds": 1}, scaling=["20k"], setting2_ratios=[], setting3_ratios=[])
    env = {**os.environ, "PATH": f"{ROOT / 'tests' / 'slurm_standin'}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_DIR": str(tmp_path / "slurm")}
    targets = ["results/models/retrain/sparsegpt/r0.5/N15k", "results/eval/retrain/sparsegpt/r0.5/N15k.json"]
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--workflow-profile", str(ROOT / "profiles" / "slurm"),
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1", *targets]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    submitted = {json.loads(line)["argv"][json.loads(line)["argv"].index("--comment") + 1]: json.loads(line)["argv"]
                 for line in (tmp_path / "slurm" / "submissions.jsonl").read_text().splitlines()}
    train = next(argv for name, argv in submitted.items() if name.startswith("rule_train_child"))
    evaluate = next(argv for name, argv in submitted.items() if name.startswith("rule_evaluate"))
    assert len(submitted) == 2                                          # local rules are not queued
    for argv in (train, evaluate):
        text = " ".join(argv)
        assert "-p gpu" in text and "-A my_account" in text and "--requeue" in text     # from the profile only
        assert "--ntasks-per-gpu" not in text                          # one task per job, torchrun inside
    assert "--gpus=8" in train and "--cpus-per-task=64" in train and " ".join(train).count("--mem 960000") == 1
    assert "--gpus=1" in evaluate and "--cpus-per-task=8" in evaluate and "-t" in evaluate
    assert (workdir / targets[1]).is_file()


# ---------------------------------------------------------------- the smoke study's numbers, pinned
GOLDEN = ROOT / "tests" / "data" / "smoke_summary.csv"
GOLDEN_META = GOLDEN.with_suffix(".json")
IDENTITY = ["arm", "method", "ratio", "budget", "train_tokens", "seed"]
VOLATILE = {"seconds", "torch_version", "transformers_version", "model_path", "eval_file"}


def _numbers(summary: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in summary.columns if c not in VOLATILE]
    return summary[keep].sort_values(IDENTITY, na_position="first").reset_index(drop=True)


def _kernel_identity() -> dict:
    """What decides the smoke study's bits on a CPU: torch's kernel capability and the CPU model (MKL and
    oneDNN take other code paths on another vendor's CPU of the same capability)."""
    import torch

    from pvs.versions import machine_info

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": machine_info()["cpu"],
            "torch": torch.__version__}


def _loss_like(column: str) -> bool:
    return column == "val_loss" or column == "val_ppl" or column.startswith("ppl/")


def test_smoke_numbers_equal_the_pinned_summary(smoke_run):
    """Refactors must not change what the study computes: the smoke study's summary.csv (every metric of every
    model, timings and paths aside) equals tests/data/smoke_summary.csv exactly on a machine of the same torch
    capability, CPU model and torch as the one that wrote it (tests/data/smoke_summary.json). Elsewhere other
    kernels round differently and training amplifies it (measured: an AMD EPYC of the same AVX512 capability
    moved the smoke study's val losses by up to 0.12 nats, 2.2%, and its 10-40-example lm-eval accuracies by up
    to 0.3), so there the shapes, ratios, LRs, parameter and FLOP counts must still be exact, the losses and
    perplexities within 5% (in log space for perplexities), and the lm-eval accuracies are not compared.
    A deliberate change of the numbers rewrites the file: PVS_UPDATE_GOLDEN=1 make test."""
    current = _numbers(pd.read_csv(smoke_run[0] / "summary.smoke.csv"))
    here = _kernel_identity()
    if os.environ.get("PVS_UPDATE_GOLDEN") == "1" or not GOLDEN.exists():
        current.to_csv(GOLDEN, index=False)
        GOLDEN_META.write_text(json.dumps(here, indent=1) + "\n")
        assert os.environ.get("PVS_UPDATE_GOLDEN") == "1", f"{GOLDEN} was missing and has been written; commit it"
    golden = pd.read_csv(GOLDEN)
    assert list(current.columns) == list(golden.columns)
    assert current[IDENTITY].astype(str).equals(golden[IDENTITY].astype(str))
    numeric = [c for c in golden.columns if c not in IDENTITY and pd.api.types.is_numeric_dtype(golden[c])]
    if json.loads(GOLDEN_META.read_text()) == here:
        pd.testing.assert_frame_equal(current[numeric], golden[numeric], check_exact=True)
        return
    losses = [c for c in numeric if _loss_like(c)]
    exact = [c for c in numeric if not _loss_like(c) and not c.startswith("lmeval/")]
    assert {"val_loss", "params_total", "train_flops", "lr", "achieved_ratio"} <= set(losses + exact)
    pd.testing.assert_frame_equal(current[exact], golden[exact], check_exact=True)
    for column in losses:       # a loss as it is; a perplexity in log space (its loss)
        ours, pinned = ((current[column], golden[column]) if column == "val_loss"
                        else (np.log(current[column]), np.log(golden[column])))
        worst = float(((ours - pinned).abs() / pinned.abs()).max())
        assert worst < 0.05, f"{column}: {worst:.3f} relative to the pinned summary"


# ---------------------------------------------------------------- a method added in three places, through the DAG
def test_a_toy_method_runs_through_the_dag_without_edits_elsewhere(smoke_run, tmp_path):
    """tests/toy_method.py adds a method to a copy of the repository (module, registry record, schema section);
    the copy's workflow prunes, retrains, trains from scratch, evaluates and reports it on the smoke study."""
    import os

    from toy_method import NAME, copy_with_toy_method

    repo = copy_with_toy_method(tmp_path / "repo")
    workdir = smoke_run[0]
    config = smoke_config(workdir / "toy.yaml", prune={"methods": [NAME], "ratios": [0.5]}, top={"seeds": 1},
                          scaling=["20k"], setting2_ratios=[], setting3_ratios=[])
    toy = yaml.safe_load(config.read_text())
    toy["train"]["lr_sweep_methods"] = []        # the smoke sweep's FLAP is not in this grid: no child sweep
    config.write_text(yaml.safe_dump(toy))
    env = {**os.environ, "PYTHONPATH": str(repo / "workflow")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "2"]
    dry = subprocess.run(cmd + ["-n"], capture_output=True, text=True, env=env, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    # lr_table: this grid's LR keys (parent, retrain.sparse, scratch.sparse) are not the smoke study's
    assert job_counts(dry.stdout) == {"prune": 1, "train_child": 2, "evaluate": 3, "lr_table": 1, "report": 1,
                                      "all": 1}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = pd.read_csv(workdir / "results" / "summary.csv").set_index("arm")
    assert set(rows.index) == {"parent", "pruned", "retrain", "scratch"} and set(rows.method.dropna()) == {NAME}
    assert rows.loc["retrain", "val_loss"] < rows.loc["pruned", "val_loss"]
    assert "Toy magnitude" in (workdir / "results" / "tables" / "setting1.md").read_text()


# ---------------------------------------------------------------- a hard kill, then the README's command
def test_the_readme_command_continues_after_kill_9_of_the_whole_workflow(smoke_run, tmp_path):
    """kill -9 of a small smoke study's process group while the parent trains (Snakemake's lock stays behind);
    the README's command (make study with CONFIG and WORKDIR) runs again past the stale lock, resumes from the
    checkpoint and gets the summary of an uninterrupted run (the smoke study's rows of the same models)."""
    import os
    import signal
    import time

    config = smoke_config(tmp_path / "small.yaml", prune={"methods": ["sparsegpt"], "ratios": [0.5]},
                          top={"seeds": 1}, scaling=["20k"], setting2_ratios=[0.5], setting3_ratios=[])
    command = ["make", "-s", "-C", str(ROOT), "study", f"CONFIG={config}", f"WORKDIR={tmp_path}", "CORES=2"]
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "results" / "ckpt" / "parent" / "latest"
    deadline = time.time() + 600
    while not checkpoint.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), "the parent never wrote a checkpoint"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert list((tmp_path / ".snakemake" / "locks").glob("*.lock")), "the kill left no lock (nothing tested)"
    again = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "stale Snakemake lock" in again.stderr
    assert "resumed from" in (tmp_path / "results" / "logs" / "train" / "parent.log").read_text()
    resumed = _numbers(pd.read_csv(tmp_path / "results" / "summary.csv"))
    reference = _numbers(pd.read_csv(smoke_run[0] / "summary.smoke.csv"))
    key = lambda frame: frame[IDENTITY].apply(lambda row: "/".join(map(str, row)), axis=1)   # noqa: E731
    reference = reference[key(reference).isin(set(key(resumed)))]
    reference = reference[resumed.columns].reset_index(drop=True)
    assert len(reference) == len(resumed) == 5                      # parent, one-shot, P-R_N, S_N, S_{P+N}
    numeric = [c for c in resumed.columns if c not in IDENTITY and pd.api.types.is_numeric_dtype(resumed[c])]
    pd.testing.assert_frame_equal(resumed[numeric], reference[numeric], check_exact=True)
