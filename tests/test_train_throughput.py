"""benchmarks/train_throughput.py --toy: the three variants run and report positive tokens/s (no timing assertion)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_toy(tmp_path):
    out = tmp_path / "throughput.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--toy", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["threads"] >= 1 and record["versions"]["torch"] and "flags" in record["machine"]
    (result,) = record["results"]
    assert set(result["variants"]) == {"baseline", "pvs", "bare"}
    for row in result["variants"].values():
        assert row["tok_per_s"] > 0 and row["tok_per_s_cpu"] > 0
    # the same weights, batch and step count: the trainer's step trains like the 0768a99 one
    assert result["variants"]["pvs"]["loss_after"] == result["variants"]["baseline"]["loss_after"]
