"""The learning-rate sweep (pvs.sweep, python -m pvs.train.lr_choose): keys, config errors, the choice, a real
tiny sweep through the trainer CLI, and the DAG edge that re-runs exactly the jobs of a changed key."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pvs.config import ConfigError, result_recipe, validate_config
from pvs.regime import arm_lr
from pvs.sweep import Sweep, format_lr, lr_key, pick
from pvs.train import lr_choose
from pvs.train import trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}


def sweep_cfg(**train):
    return validate_config({"prune": {"methods": ["minitron_depth", "flap", "minitron_width", "sparsegpt"],
                                      "ratios": [0.5, 0.7]}, "train": train})


# ---------------------------------------------------------------- keys and sources
def test_keys_sources_and_sweep_runs():
    sweep = Sweep.from_config(sweep_cfg(lr_sweep=[0.01, 0.003], lr_per_arm={"scratch": {"depth": 0.02}}))
    assert sweep.keys == ("parent", "retrain.depth", "retrain.width", "retrain.sparse", "scratch.depth",
                          "scratch.width", "scratch.sparse")
    assert sweep.methods == {"depth": "minitron_depth", "width": "flap", "sparse": "sparsegpt"}  # first of each
    assert sweep.source("scratch.depth") == "fixed" and sweep.source("retrain.width") == "sweep"
    assert [r.metrics_path for r in sweep.runs("retrain.width")] == [
        "lr/sweep/retrain/flap/r0.5/lr0.003.json", "lr/sweep/retrain/flap/r0.5/lr0.01.json"]
    assert [r.model_path for r in sweep.runs("parent")] == ["lr/sweep/parent/lr0.003", "lr/sweep/parent/lr0.01"]
    # the scratch LR applies to every from-scratch arm of the granularity
    assert {lr_key(a, "minitron_width") for a in ("scratch", "scratch_total", "scratch_flops")} == {"scratch.width"}
    assert lr_key("retrain", "sheared_llama") == "retrain.width" and lr_key("retrain", "sparsegpt_nm") == "retrain.sparse"
    # a job's params: its own LR for a swept or fixed key, the unchanged recipe on train.lr
    recipe = result_recipe(sweep_cfg()["train"])
    assert sweep.recipe(recipe, "retrain.width")["lr"] == "swept" and sweep.recipe(recipe, "scratch.depth")["lr"] == 0.02
    assert not any(k.startswith("lr_") for k in recipe)
    none = Sweep.from_config(sweep_cfg())
    assert not none.active and none.source("parent") == "train.lr" and none.runs() == []
    only = Sweep.from_config(sweep_cfg(lr_sweep=[0.01], lr_sweep_methods=["minitron_width"], lr_sweep_arms=["retrain"]))
    assert only.swept_keys == ("retrain.width",) and only.source("retrain.depth") == "train.lr"
    assert format_lr(1e-5) == "1e-05" and float(format_lr(3e-4)) == 3e-4


def test_regime_shows_each_runs_lr(tmp_path):
    cfg = sweep_cfg(lr_sweep=[0.01, 0.003], lr_per_arm={"parent": 0.005})
    cfg["results_dir"] = str(tmp_path)
    assert arm_lr(cfg, "parent") == 0.005
    assert arm_lr(cfg, "scratch_total", "flap", 0.5) == "swept (pending)"
    (tmp_path / "lr").mkdir()
    (tmp_path / "lr" / "chosen.json").write_text(json.dumps(
        {"keys": {"scratch.width": {"lr": 0.01, "source": "sweep"}}}))
    assert arm_lr(cfg, "scratch_total", "flap", 0.5) == 0.01 and arm_lr(cfg, "scratch", "minitron_width") == 0.01
    assert arm_lr(sweep_cfg(), "retrain", "flap") == 0.003


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("train, match", [
    ({"lr_sweep": [0.01, 0.0]}, r"train\.lr_sweep\[1\] = 0\.0"),
    ({"lr_sweep": [0.01], "lr_sweep_arms": ["parent", "teacher"]}, r"train\.lr_sweep_arms\[1\] = 'teacher'"),
    ({"lr_sweep": [0.01], "lr_sweep_methods": ["sheared_llama"]}, r"train\.lr_sweep_methods\[0\] = 'sheared_llama': not in prune\.methods"),
    ({"lr_sweep": [0.01], "lr_sweep_methods": ["flap", "minitron_width"]}, r"train\.lr_sweep_methods\[1\].*granularity 'width'"),
    ({"lr_sweep": [0.01], "lr_sweep_ratio": 0.6}, r"train\.lr_sweep_ratio = 0\.6: must be one of prune\.ratios"),
    ({"lr_sweep_tokens": "12x"}, r"train\.lr_sweep_tokens = '12x'"),
    ({"lr_per_arm": {"retrain": -0.1}}, r"train\.lr_per_arm\.retrain = -0\.1: a learning rate must be a number > 0"),
    ({"lr_per_arm": {"scratch": {"depth": 0.01, "heads": 0.1}}}, r"train\.lr_per_arm\.scratch\.heads: unknown granularity 'heads'"),
    ({"lr_per_arm": {"teacher": 0.1}}, r"train\.lr_per_arm: .*'teacher'"),
])
def test_bad_sweep_keys_fail_naming_the_key(train, match):
    with pytest.raises(ConfigError, match=match):
        sweep_cfg(**train)


def test_a_swept_parent_needs_a_trained_parent(tmp_path):
    cfg = {"parent": {"source": "pretrained", "pretrained": "HuggingFaceTB/SmolLM2-135M"}, "train": {"lr_sweep": [0.01]}}
    with pytest.raises(ConfigError, match=r"train\.lr_sweep_arms = .*the parent cannot be swept when parent\.source"):
        validate_config(cfg)
    cfg["train"]["lr_sweep_arms"] = ["retrain", "scratch"]
    assert Sweep.from_config(validate_config(cfg)).keys[0] == "retrain.depth"


# ---------------------------------------------------------------- the choice
def test_lowest_dev_loss_wins_ties_go_to_the_smaller_lr(tmp_path):
    metrics = [{"lr": 0.01, "dev_loss": 5.0}, {"lr": 0.003, "dev_loss": 4.2}, {"lr": 0.001, "dev_loss": 4.2},
               {"lr": 0.03, "dev_loss": float("nan")}, {"lr": 1e-4, "dev_loss": 6.0}]
    assert pick(metrics)["lr"] == 0.001
    assert pick([{"lr": 0.03, "dev_loss": float("nan")}, {"lr": 0.1, "dev_loss": 9.0}])["lr"] == 0.1
    paths = []
    for m in metrics:
        paths.append(tmp_path / f"lr{format_lr(m['lr'])}.json")
        paths[-1].write_text(json.dumps({**m, "tokens": 100, "arm": "retrain"}))
    out = tmp_path / "chosen" / "retrain.width.json"
    assert lr_choose.main(["pick", "--key", "retrain.width", "--metrics", *map(str, paths), "--out", str(out)]) == 0
    chosen = json.loads(out.read_text())
    assert chosen["lr"] == 0.001 and chosen["source"] == "sweep" and chosen["losses"]["0.003"] == 4.2
    assert list(chosen["losses"]) == ["0.0001", "0.001", "0.003", "0.01", "0.03"]
    # the table: every key of the study with its source
    cfg = sweep_cfg(lr_sweep=[1e-4, 0.001, 0.003, 0.01, 0.03], lr_sweep_arms=["retrain"],
                    lr_sweep_methods=["flap"], lr_per_arm={"scratch": 0.02})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert lr_choose.main(["table", "--config", str(config), "--chosen", str(out), "--out", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "lr" / "chosen.json").read_text())["keys"]
    assert table["retrain.width"] == {**table["retrain.width"], "lr": 0.001, "source": "sweep"}
    assert table["scratch.sparse"]["source"] == "fixed" and table["scratch.sparse"]["lr"] == 0.02
    assert table["parent"] == {"lr": cfg["train"]["lr"], "source": "train.lr", "losses": {}}
    csv = (tmp_path / "lr" / "sweep.csv").read_text().splitlines()
    assert csv[0] == "key,lr,dev_loss,chosen" and "retrain.width,0.001,4.2,True" in csv
    assert "**4.2000**" in (tmp_path / "lr" / "sweep.md").read_text()
    assert chosen["at_edge"] is None and table["retrain.width"]["at_edge"] is None    # 0.001: inside the sweep


def test_a_choice_at_the_edge_of_the_sweep_is_flagged(tmp_path, capsys):
    assert lr_choose.sweep_edge(0.001, [0.001, 0.003, 0.01]) == "lowest"
    assert lr_choose.sweep_edge(0.01, [0.001, 0.003, 0.01]) == "highest"
    assert lr_choose.sweep_edge(0.003, [0.001, 0.003, 0.01]) is None
    assert lr_choose.sweep_edge(0.01, [0.003, 0.01]) is None                    # two LRs: no inside to speak of
    paths = []
    for lr, loss in [(0.003, 4.8), (0.006, 4.6), (0.012, 4.55), (0.024, 4.5)]:
        paths.append(tmp_path / f"lr{lr}.json")
        paths[-1].write_text(json.dumps({"lr": lr, "dev_loss": loss}))
    out = tmp_path / "scratch.sparse.json"
    assert lr_choose.main(["pick", "--key", "scratch.sparse", "--metrics", *map(str, paths), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["at_edge"] == "highest"
    assert "scratch.sparse chose the highest swept LR" in capsys.readouterr().err


# ---------------------------------------------------------------- a real tiny sweep through the trainer CLI
@pytest.fixture
def data_with_dev(byte_splits, tmp_path):
    """The shared tiny data with a development split: the tail half of calib as dev.bin (disjoint from the rest)."""
    data = tmp_path / "data"
    shutil.copytree(byte_splits, data)
    manifest = json.loads((data / "manifest.json").read_text())
    calib = np.fromfile(data / "calib.bin", dtype=np.uint16)
    calib[len(calib) // 2:].tofile(data / "dev.bin")
    manifest["splits"]["dev"] = {"tokens": len(calib) - len(calib) // 2}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def test_a_tiny_parent_sweep_picks_the_lr_with_the_lowest_dev_loss(data_with_dev, tmp_path):
    cfg = {"parent": {"arch": SMALL}, "threads_per_job": 1, "prune": {"methods": ["sparsegpt"], "calib_seq_len": 32},
           "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "eval_every_tokens": 4096, "eval_windows": 4,
                     "lr_sweep": [1e-5, 3e-3]}, "evaluate": {"val_windows": 16}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    files = []
    for lr in ("1e-05", "0.003"):
        out, metrics = tmp_path / "lr" / "sweep" / "parent" / f"lr{lr}", tmp_path / "lr" / "sweep" / "parent" / f"lr{lr}.json"
        assert trainer.main(["--arm", "parent", "--tokens", "4096", "--lr", lr, "--eval-split", "dev",
                             "--eval-out", str(metrics), "--data", str(data_with_dev), "--out", str(out),
                             "--config", str(config)]) == 0
        record = json.loads(metrics.read_text())
        assert record["lr"] == float(lr) and record["eval_split"] == "dev" and record["eval_windows"] == 16
        assert math.isfinite(record["dev_loss"]) and record["tokens"] == 4096
        meta = json.loads((out / "train_meta.json").read_text())
        assert meta["lr"] == float(lr) and meta["lr_from"] == "--lr" and meta["final_dev_loss"] == record["dev_loss"]
        assert max(json.loads(line).get("lr", 0) for line in (out / "metrics.jsonl").read_text().splitlines()) \
            == pytest.approx(float(lr))
        files.append(metrics)
    losses = {json.loads(f.read_text())["lr"]: json.loads(f.read_text())["dev_loss"] for f in files}
    assert losses[3e-3] < losses[1e-5] - 0.5            # 1e-5 barely moves off the initial loss in 32 steps
    chosen = tmp_path / "lr" / "chosen" / "parent.json"
    assert lr_choose.main(["pick", "--key", "parent", "--metrics", *map(str, files), "--out", str(chosen)]) == 0
    assert json.loads(chosen.read_text())["lr"] == 3e-3
    # the chosen file drives a run: --lr-from
    out = tmp_path / "models" / "parent"
    assert trainer.main(["--arm", "parent", "--tokens", "512", "--lr-from", str(chosen), "--data", str(data_with_dev),
                         "--out", str(out), "--config", str(config)]) == 0
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["lr"] == 3e-3 and meta["lr_from"] == str(chosen) and meta["recipe"]["lr"] == 3e-3


# ---------------------------------------------------------------- the DAG edge
def _snakemake(workdir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(config), "--cores", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _job_counts(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m.group(1) != "total"}


FILE_SUFFIXES = {".json", ".bin", ".csv", ".md", ".tex", ".png", ".pdf", ".jsonl", ".yaml", ".tsv", ".txt"}


def _finished_study(workdir: Path, config: Path) -> None:
    """Every output of the smoke DAG as a stand-in (files and directories), then --touch: a finished study whose
    metadata (params, inputs) Snakemake recorded, in seconds instead of minutes."""
    dry = _snakemake(workdir, config, "-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    for match in re.finditer(r"^\s+output: (.+)$", dry.stdout, re.M):
        for name in match.group(1).split(", "):
            path = workdir / name
            if path.suffix in FILE_SUFFIXES:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}")
            else:
                path.mkdir(parents=True, exist_ok=True)
    touched = _snakemake(workdir, config, "--touch")
    assert touched.returncode == 0, touched.stderr[-3000:]
    again = _snakemake(workdir, config, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]


def test_a_changed_sweep_reruns_exactly_the_jobs_of_its_key(tmp_path):
    """On the smoke config (toy sweep: parent and the width children): forcing retrain.width's chosen file lists
    only the FLAP retraining runs (5: 2 ratios x 2 seeds + the scaling budget), their evaluations and the report;
    a changed fixed LR (lr_per_arm) re-runs exactly its key's jobs through params."""
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["results_dir"] = "results"
    cfg["evaluate"]["blimp_dir"] = None
    config = tmp_path / "smoke.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _finished_study(tmp_path, config)
    forced = _snakemake(tmp_path, config, "-n", "--forcerun", "results/lr/chosen/retrain.width.json")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert _job_counts(forced.stdout) == {"lr_choose": 1, "lr_table": 1, "train_child": 5, "evaluate": 5,
                                          "report": 1, "all": 1}
    trained = re.findall(r"output: results/models/(\w+)/(\w+)/", forced.stdout)
    assert trained and set(trained) == {("retrain", "flap")}
    # a fixed LR for the depth scratch arms goes in as a param (--lr): comparing every job's command with and
    # without it, exactly S_N, S_{P+N} and S_F of Minitron-Depth (and the LR table) change. (Snakemake's params
    # trigger needs the metadata of real runs, which --touch does not write; the params and the command hold
    # the same LR, pvs.sweep.Sweep.recipe / lr_arg.)
    empty = tmp_path / "empty"
    empty.mkdir()
    before = _commands(_snakemake(empty, config, "-n").stdout)
    cfg["train"]["lr_per_arm"] = {"scratch": {"depth": 0.005}}
    config.write_text(yaml.safe_dump(cfg))
    after = _commands(_snakemake(empty, config, "-n").stdout)
    assert before.keys() == after.keys()
    changed = {out for out in before if before[out] != after[out]}
    models = {tuple(out.split("/")[2:4]) for out in changed if out.startswith("results/models/")}
    assert models == {("scratch", "minitron_depth"), ("scratch_total", "minitron_depth"),
                      ("scratch_flops", "minitron_depth")}
    assert {out for out in changed if not out.startswith("results/models/")} <= {"results/lr/chosen.json"}
    assert all("--lr 0.005" in after[out] for out in changed if out.startswith("results/models/"))


def _commands(dry_run: str) -> dict[str, str]:
    """{first output: shell command} of every job in a dry run."""
    jobs = {}
    for block in dry_run.split("\nrule ")[1:]:
        output = re.search(r"^\s+output: ([^,\n]+)", block, re.M)
        command = re.search(r"^Shell command: (.+)$", block, re.M)
        if output and command:
            jobs[output.group(1)] = command.group(1)
    return jobs


def test_the_report_states_each_runs_lr():
    from pvs.report.build import _peak_lr

    assert _peak_lr({"model_meta": {"train": {"lr": 0.01, "recipe": {"lr": 0.003}}}}) == 0.01
    assert _peak_lr({"model_meta": {"train": {"recipe": {"lr": 0.003}}}}) == 0.003    # records before the sweep
    assert _peak_lr({"model_meta": {"prune": {}, "train": None}}) is None               # one-shot child
