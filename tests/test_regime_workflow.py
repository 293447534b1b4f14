"""End to end: `make regime` at toy size (slow: three tiny studies through snakemake, then pvs.report.regime).

Three configs derived from configs/smoke.yaml (Minitron-Depth at 0.5, two seeds, lm-eval off) differ only in
parent.tokens and the budgets (N = P/4), as configs/regime/*.yaml do; the same Makefile target runs them and
the report. 62 s measured with warm start (873 s cold, on shared cores). Also
checks the real configs' regimes (fast).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY = {"toy_a": "12k", "toy_b": "24k", "toy_c": "48k"}          # parent.tokens; main = P/4
# configs/regime/<name>.yaml: the parent's tokens per non-embedding parameter (154,240 of them: config.yaml's arch)
REGIMES = {"tpp0.4": 0.402, "tpp5": 5.03, "tpp20": 20.1}


def toy_configs(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, parent_tokens in TOY.items():
        cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
        main = f"{int(parent_tokens[:-1]) // 4}k"
        cfg.update(study=f"regime_{name}", results_dir=f"results/regime/{name}")
        cfg["parent"]["tokens"] = parent_tokens
        cfg["prune"].update(methods=["minitron_depth"], ratios=[0.5])
        cfg["budgets"] = {"main": main, "scaling": [main], "scaling_ratio": 0.5, "setting2_ratios": [0.5],
                          "setting3_ratios": []}
        cfg["train"].update(eval_every_tokens="4k", lr_sweep=[])      # the sweep has its own tests (test_sweep.py)
        cfg["evaluate"].update(lmeval=False, blimp_dir=None, val_windows=16)
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return directory


def make_regime(workdir: Path, configs: Path) -> subprocess.CompletedProcess:
    """`make regime` on the toy configs, with this interpreter's environment (never re-installed: -o)."""
    venv = Path(sys.prefix)
    cmd = ["make", "-C", str(ROOT), "regime", f"VENV={venv}", "-o", f"{venv}/.installed", f"WORKDIR={workdir}",
           f"REGIME_CONFIGS={configs}", f"REGIME_STUDIES={' '.join(TOY)}", "REGIME_OUT=results/regime"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=2400)


@pytest.mark.parametrize("name", list(REGIMES))
def test_regime_configs_sit_at_their_tokens_per_parameter(name):
    out = subprocess.run([sys.executable, "-m", "pvs.study", "--regime", str(ROOT / "configs" / "regime" / f"{name}.yaml"),
                          "--json"], capture_output=True, text=True, check=True, cwd=ROOT)
    reg = json.loads(out.stdout)
    assert math.isclose(reg["parent_tokens_per_param"], REGIMES[name], rel_tol=0.01)
    assert math.isclose(reg["n_over_p"], 0.25)
    assert reg["arms"][0]["non_embedding_params"] == 154_240
    cfg = yaml.safe_load((ROOT / "configs" / "regime" / f"{name}.yaml").read_text())
    assert cfg["results_dir"] == f"results/regime/{name}"                 # where `make regime` reads it


def test_regime_configs_differ_only_in_size():
    size = {("parent", "tokens"), ("budgets", "main"), ("budgets", "scaling"), ("train", "eval_every_tokens"),
            ("train", "checkpoint_every"), ("train", "max_epochs")}
    flat = {}
    for name in REGIMES:
        cfg = yaml.safe_load((ROOT / "configs" / "regime" / f"{name}.yaml").read_text())
        flat[name] = {(k, s): v for k, sec in cfg.items() if isinstance(sec, dict) for s, v in sec.items()}
    first, *rest = flat.values()
    for other in rest:
        differ = {k for k in set(first) | set(other) if first.get(k) != other.get(k)}
        assert differ <= size, differ


@pytest.fixture(scope="module")
def regime_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("regime")
    configs = toy_configs(workdir / "configs")
    start = time.monotonic()
    result = make_regime(workdir, configs)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    print(f"make regime (toy, {len(TOY)} studies): {seconds:.0f} s")
    if os.environ.get("PVS_REGIME_TIME"):
        Path(os.environ["PVS_REGIME_TIME"]).write_text(f"{seconds:.1f}\n")
    return workdir / "results" / "regime"


def test_make_regime_writes_figure_and_one_finite_row_per_study_method_setting(regime_run):
    out = regime_run
    for rel in ("figures/regime.png", "figures/regime.pdf", "tables/regime.csv", "tables/regime.md"):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    table = pd.read_csv(out / "tables" / "regime.csv")
    keys = {(s, m, k) for s in (f"regime_{n}" for n in TOY) for m in ("minitron_depth",) for k in (1, 2)}
    assert set(zip(table.study, table.method, table.setting)) == keys and len(table) == len(keys)
    assert table.delta_loss.map(math.isfinite).all() and table.delta_loss_se.map(math.isfinite).all()
    assert (table.delta_loss_n == 2).all() and table.verdict.isin(["pruning wins", "scratch wins", "within noise"]).all()
    for _, part in table.groupby(["setting", "method"]):
        assert part.parent_tokens_per_param.is_monotonic_increasing and part.parent_tokens_per_param.is_unique
    for name in TOY:                                   # each a full study with its own report
        assert (out / name / "summary.csv").is_file() and (out / name / "findings.md").is_file()
