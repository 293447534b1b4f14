"""pvs.report.regime on synthetic studies: three summary.csv files with known gaps, their table, markdown,
figure and CLI (fast: no training)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pvs.report import regime as report_regime

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("minitron_depth", "sparsegpt")
PARENT_TOKENS = {"a": 200_000, "b": 2_500_000, "c": 10_000_000}
NON_EMBEDDING = 492_800                                            # configs/smoke.yaml's parent
# known mean Δ loss (S − P-R) per (study, setting, method); seed 0 adds +0.01, seed 1 −0.01: SE = 0.01
DELTA = {("a", 1, "minitron_depth"): 0.50, ("b", 1, "minitron_depth"): 0.20, ("c", 1, "minitron_depth"): 0.005,
         ("a", 1, "sparsegpt"): 0.40, ("b", 1, "sparsegpt"): 0.10, ("c", 1, "sparsegpt"): 0.03,
         ("a", 2, "minitron_depth"): -0.30, ("b", 2, "minitron_depth"): -0.10, ("c", 2, "minitron_depth"): -0.01,
         ("a", 2, "sparsegpt"): -0.20, ("b", 2, "sparsegpt"): 0.05, ("c", 2, "sparsegpt"): 0.08}
JITTER = {0: 0.01, 1: -0.01}


def write_study(root: Path, name: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    P = PARENT_TOKENS[name]
    cfg.update(study=f"syn_{name}", results_dir=str(directory))
    cfg["parent"]["tokens"] = P
    cfg["prune"].update(methods=list(METHODS), ratios=[0.5])
    cfg["train"]["lr_sweep"] = []                                     # synthetic results: no sweep runs
    cfg["budgets"] = {"main": P // 4, "scaling": [P // 4], "scaling_ratio": 0.5, "setting2_ratios": [0.5],
                      "setting3_ratios": []}
    (directory / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    N, rows = P // 4, [{"study": f"syn_{name}", "arm": "parent", "method": None, "ratio": None, "budget": None,
                        "train_tokens": P, "seed": None, "val_loss": 3.0}]
    for method in METHODS:
        rows.append({"study": f"syn_{name}", "arm": "pruned", "method": method, "ratio": 0.5, "budget": None,
                     "train_tokens": 0, "seed": 0, "val_loss": 6.0})
        for seed, jitter in JITTER.items():
            retrain = 3.5 + 0.1 * seed
            rows.append({"study": f"syn_{name}", "arm": "retrain", "method": method, "ratio": 0.5, "budget": N,
                         "train_tokens": N, "seed": seed, "val_loss": retrain})
            for setting, arm, tokens in ((1, "scratch", N), (2, "scratch_total", P + N)):
                rows.append({"study": f"syn_{name}", "arm": arm, "method": method, "ratio": 0.5, "budget": N,
                             "train_tokens": tokens, "seed": seed,
                             "val_loss": retrain + DELTA[(name, setting, method)] + jitter})
    summary = pd.DataFrame(rows).assign(**{"lmeval/avg": float("nan"), "achieved_ratio": 0.5})
    summary.to_csv(directory / "summary.csv", index=False)
    return directory


@pytest.fixture()
def studies(tmp_path):
    return [write_study(tmp_path / "studies", name) for name in PARENT_TOKENS]


def test_table_has_the_known_gaps_ses_and_verdicts(studies, tmp_path):
    paths = report_regime.build(studies, tmp_path / "out")
    table = pd.read_csv(paths["csv"])
    assert len(table) == len(PARENT_TOKENS) * len(METHODS) * 2
    for row in table.itertuples():
        name = row.study.removeprefix("syn_")
        assert math.isclose(row.parent_tokens_per_param, PARENT_TOKENS[name] / NON_EMBEDDING, rel_tol=1e-9)
        assert math.isclose(row.delta_loss, DELTA[(name, row.setting, row.method)], abs_tol=1e-9)
        assert math.isclose(row.delta_loss_se, 0.01, rel_tol=1e-6) and row.delta_loss_n == 2 and row.delta_paired
        expected = DELTA[(name, row.setting, row.method)]
        assert row.verdict == ("within noise" if abs(expected) <= 0.02 else
                               "pruning wins" if expected > 0 else "scratch wins")
        assert row.rival == {1: "scratch", 2: "scratch_total"}[row.setting]
    one = table[(table.study == "syn_c") & (table.setting == 1) & (table.method == "minitron_depth")].iloc[0]
    assert one.verdict == "within noise" and one.delta_text == "Δ +0.005 ± 0.010 (n=2)"
    # sorted by setting, method (coarse -> fine), tokens per parameter
    assert list(table.setting) == [1] * 6 + [2] * 6
    assert list(table.method[:6]) == ["minitron_depth"] * 3 + ["sparsegpt"] * 3
    assert (paths["figure"]).stat().st_size > 0 and paths["figure_pdf"].stat().st_size > 0


def test_markdown_has_one_column_per_regime_and_the_papers_points(studies, tmp_path):
    paths = report_regime.build(studies, tmp_path / "out")
    md = paths["md"].read_text()
    for name in PARENT_TOKENS:
        assert f"{PARENT_TOKENS[name] / NON_EMBEDDING:.3g} tok/param (`syn_{name}`)" in md
    assert "Δ +0.500 ± 0.010 (n=2): pruning wins" in md
    assert "Δ -0.300 ± 0.010 (n=2): scratch wins" in md
    assert "Δ +0.005 ± 0.010 (n=2): within noise" in md
    assert "Δ +0.10 (val loss S50 2.64 vs P200-R50 2.54)" in md and "Δ -0.05 (val loss S250 2.49" in md
    assert "pruning wins (verdict by avg acc: 67.5 vs S250 66.3)" in md      # SparseGPT, setting 2


def test_single_seed_studies_have_no_noise_estimate(tmp_path):
    directory = write_study(tmp_path, "a")
    summary = pd.read_csv(directory / "summary.csv")
    summary[summary.seed.isna() | (summary.seed == 0)].to_csv(directory / "summary.csv", index=False)
    table = report_regime.regime_frame([report_regime.load_study(directory)])
    assert table.delta_loss_se.isna().all() and (table.delta_loss_n == 1).all()
    assert set(table.delta_text.str.endswith("no noise estimate (n=1)")) == {True}
    assert table.verdict.isin(["pruning wins", "scratch wins"]).all()


def test_cli_help_and_a_missing_study(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "pvs.report.regime", *a], capture_output=True,  # noqa: E731
                                    text=True, cwd=tmp_path)
    help_ = run("--help")
    assert help_.returncode == 0 and "tokens per parameter" in help_.stdout and "--studies" in help_.stdout
    missing = run("--studies", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "summary.csv: missing" in missing.stderr
