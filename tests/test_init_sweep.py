"""benchmarks/init_sweep.py at toy size: one real pvs.train run per init std, scored on a dev split."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "init_sweep.py"
TOY = {"parent": {"tokens": "2k", "arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                              "num_attention_heads": 4, "num_key_value_heads": 2,
                                              "max_position_embeddings": 64}},
       "threads_per_job": 1, "evaluate": {"val_windows": 4},
       "prune": {"methods": ["sparsegpt"], "ratios": [0.5], "calib_seq_len": 32},
       "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "eval_every_tokens": 512, "eval_windows": 4}}


def data_with_dev(byte_splits: Path, out: Path) -> Path:
    """The session's token files plus a dev split (a copy of val: the script only needs one to score on)."""
    shutil.copytree(byte_splits, out)
    shutil.copy(out / "val.bin", out / "dev.bin")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["dev"] = dict(manifest["splits"]["val"])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_one_run_per_std_with_its_dev_loss(byte_splits, tmp_path):
    data = data_with_dev(byte_splits, tmp_path / "data")
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump({**TOY, "results_dir": str(tmp_path / "results")}))
    out = tmp_path / "init_sweep.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--data", str(data), "--stds", "0.02",
                           "0.2", "--tokens", "1k", "--jobs", "1", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["tokens"] == 1000 and report["lr"] == 0.003             # no chosen parent LR: train.lr
    runs = report["runs"]
    assert [(r["arm"], r["init_std"]) for r in runs] == [("parent", 0.02), ("parent", 0.2)]
    assert all(math.isfinite(r["dev_loss"]) and r["steps"] == math.ceil(1000 / 128) for r in runs)
    assert runs[0]["dev_loss"] != runs[1]["dev_loss"]                     # the std reached the model
    assert report["best"]["parent"] == min(runs, key=lambda r: r["dev_loss"])["init_std"]
    assert report["versions"]["torch"]
    for std in (0.02, 0.2):                                               # only init_std differs from the config
        run_cfg = yaml.safe_load((tmp_path / "work" / f"parent_std{std:g}.yaml").read_text())
        assert run_cfg["train"] == {**TOY["train"], "init_std": std}


def test_missing_data_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "nowhere")], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and f"--data {tmp_path / 'nowhere'}: no manifest.json" in done.stderr
