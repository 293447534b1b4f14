"""benchmarks/compile_jobs.py at toy size: real pvs.train jobs through the warm launcher, eager and compiled."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TOY = {"parent": {"tokens": "2k", "arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                              "num_attention_heads": 4, "num_key_value_heads": 2,
                                              "max_position_embeddings": 64}},
       "threads_per_job": 1, "evaluate": {"val_windows": 4, "blimp_dir": None, "local_task_examples": 10},
       "prune": {"methods": ["sparsegpt"], "ratios": [0.5], "calib_seq_len": 32, "calib_windows": 4},
       "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "eval_every_tokens": 512, "eval_windows": 4}}


def test_eager_cold_and_warm_jobs_are_timed_and_train_the_same_model(byte_splits, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(byte_splits, work / "data")             # prepared data: the script's preparation skips pvs.data
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({**TOY, "results_dir": str(tmp_path / "results")}))
    out = tmp_path / "compile_jobs.json"
    done = subprocess.run([sys.executable, "benchmarks/compile_jobs.py", "--config", str(config), "--jobs",
                           "retrain:1k:sparsegpt", "--reps", "1", "--lr", "0.004", "--parent-tokens", "1k",
                           "--work", str(work), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    raw = report["raw"]
    assert [(r["variant"], r["compile"]) for r in raw] == [("eager", False), ("cold", "layers"), ("warm", "layers")]
    assert all(r["seconds"] > 0 and r["steps"] == 8 for r in raw)           # 1k tokens = 8 steps of 4 x 32
    job = report["jobs"]["retrain:1k:sparsegpt"]
    losses = job["val_loss_rep0"]
    assert losses["cold"] == pytest.approx(losses["eager"], abs=1e-4) and losses["warm"] == losses["cold"]
    assert job["eager_over_cold"] == pytest.approx(job["median_s"]["eager"] / job["median_s"]["cold"], abs=1e-3)
    assert any((work / "inductor").rglob("*"))                               # the compiled jobs filled a cache
    assert report["lr"] == 0.004 and report["versions"]["torch"]
