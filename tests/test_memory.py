"""pvs.memory: the paper grid fits 80 GiB per GPU, an 8B config without a micro-batch fails naming the job and the
key, and the estimate matches a measured peak RSS on this CPU within the stated error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pvs import memory
from pvs.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_grid_jobs_cover_every_job_type_of_the_paper():
    jobs = memory.grid_jobs(load_config(PAPER))
    names = [j.name for j in jobs]
    kinds = {j.kind for j in jobs}
    assert kinds == {"train", "sheared", "sparsegpt", "minitron_depth", "minitron_width", "flap", "evaluate"}
    assert "train parent" in names and "evaluate" in names
    for method in ("minitron_depth", "minitron_width", "sheared_llama", "flap"):     # every structured child shape
        assert [n for n in names if n.startswith(f"train {method} r")] == [f"train {method} r{r}"
                                                                              for r in (0.5, 0.6, 0.7, 0.8)]
    assert {"train sparsegpt (any ratio)", "train sparsegpt_nm (any ratio)"} <= set(names)
    assert sum(j.kind == "sheared" for j in jobs) == 4
    train = {j.name: j for j in jobs if j.kind == "train"}
    assert train["train parent"].gpus == 8 and train["train sparsegpt (any ratio)"].sparse
    assert train["train flap r0.5"].biases == (True, True)
    assert memory.vocab_size(load_config(PAPER)) == memory.LLAMA3_VOCAB


def test_flash_attention_memory_saves_no_seq_squared_tensor():
    """At seq 4096 the stock math path holds seq^2 scores per head; the flash stand-in holds O(seq) per head."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker
    b, h, kv, s, d = 1, 8, 2, 4096, 64
    with FakeTensorMode():
        q = torch.empty(b, h, s, d, requires_grad=True)
        k, v = torch.empty(b, kv, s, d, requires_grad=True), torch.empty(b, kv, s, d, requires_grad=True)
        tracker = MemTracker()
        tracker.track_external(q, k, v)
        with tracker:
            out = memory._FlashAttentionMemory.apply(q, k, v)
            out.sum().backward()
        peak = sum(x["Total"] for x in tracker.get_tracker_snapshot("peak").values())
    assert out.shape == (b, s, h, d)
    assert peak < 12 * b * h * s * d * 4          # q/k/v/out/grads/fp32 accumulators, far below ...
    assert b * h * s * s * 4 > 5 * peak           # ... one fp32 seq x seq score tensor


def test_paper_preset_fits_80_gib():
    """The largest training job (a sparse child: the dense parent plus its mask shards) and evaluation fit."""
    cfg = load_config(PAPER)
    assert cfg["cluster"]["gpu_memory_gib"] == 80
    rows = [row for only in ("train sparsegpt (any", "evaluate") for row in memory.check(cfg, only)]
    assert [r["job"] for r in rows] == ["train sparsegpt (any ratio)", "evaluate"]
    for row in rows:
        assert row["fits"] and 20 < row["peak_gib"] < 80, row
    assert rows[0]["micro_batch"] == cfg["train"]["micro_batch_size"]


def test_8b_config_without_micro_batch_fails_naming_job_and_key(tmp_path, capsys):
    raw = yaml.safe_load(PAPER.read_text())
    raw["train"]["micro_batch_size"] = None
    path = tmp_path / "no_micro_batch.yaml"
    path.write_text(yaml.safe_dump(raw))
    code = memory.main(["--config", str(path), "--only", "train parent", "--json", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 1
    assert "train parent needs" in err and "train.micro_batch_size" in err
    row = json.loads((tmp_path / "m.json").read_text())["rows"][0]
    assert row["micro_batch"] == 64 and not row["fits"] and row["peak_gib"] > 80


def test_estimate_matches_measured_peak_rss(tmp_path):
    """benchmarks/memory_calibration.py in subprocesses: live tensors within CALIBRATION_ERROR of peak RSS (glibc
    returning freed blocks), and never above peak RSS by glibc's default allocator, within ALLOCATOR_OVERHEAD."""
    out = tmp_path / "calibration.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory_calibration.py"), "--repeats", "1",
                    "--out", str(out)], check=True, capture_output=True, timeout=600)
    errors = json.loads(out.read_text())["relative_error"]
    assert abs(errors["fixed_mmap_threshold"]) <= memory.CALIBRATION_ERROR, errors
    assert -memory.ALLOCATOR_OVERHEAD <= errors["default"] <= memory.CALIBRATION_ERROR, errors
