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


def test_train_throughput_toy_attention_levers_and_profile(tmp_path):
    """The attention variants train like the bare loop (and, compiled, like the trainer), and --profile says
    where a step's time goes."""
    out = tmp_path / "throughput.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--toy", "--profile",
                    "--variants", "bare", "bare_attn_eager", "bare_sdpa_math", "pvs", "pvs_compile_attn_eager", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    (result,) = json.loads(out.read_text())["results"]
    losses = {name: row["loss_after"] for name, row in result["variants"].items()}
    assert abs(losses["bare_attn_eager"] - losses["bare"]) < 1e-4 and abs(losses["bare_sdpa_math"] - losses["bare"]) < 1e-4
    assert abs(losses["pvs_compile_attn_eager"] - losses["pvs"]) < 1e-4
    for name, row in result["variants"].items():
        profile = row["profile"]
        shares = [op["share"] for op in profile["top_ops"]]
        assert profile["self_cpu_ms_per_step"] > 0 and shares == sorted(shares, reverse=True) and sum(shares) <= 1.0001
        # the flash and math SDPA paths run aten scaled_dot_product ops; HF's eager attention does not call SDPA
        assert (profile["attention_share"] > 0) == (name not in ("bare_attn_eager", "pvs_compile_attn_eager")), (name, profile)
