"""Calibrate pvs.memory on this CPU: real peak RSS of one training step against the estimator's number.

    python benchmarks/memory_calibration.py                      # writes benchmarks/results/memory_calibration.json
    python benchmarks/memory_calibration.py --out /tmp/cal.json --repeats 1

The step is pvs.train's (forward, cross_entropy on fp32 logits, backward, clip, AdamW step, zero_grad) on a
small Llama (hidden 256, 4 layers, 4 / 2 heads, MLP 768, vocab 2048), batch 8 x 256, fp32, one process,
the CPU's stock SDPA kernel. AdamW's state exists before the measured step (one warm-up step), as in
every step the estimator reports.

Measured (a fresh subprocess per repeat, one thread): the model, optimizer and batch are built, one
warm-up step runs, freed memory is returned to the OS (gc + malloc_trim), then VmRSS is read, the peak
(VmHWM) is reset through /proc/self/clear_refs, the step runs, and VmHWM is read again. The increase
VmHWM - VmRSS is the step's peak memory beyond what it starts with. It is measured twice: with glibc's
default malloc and with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=131072), under which every freed
block of 128 KiB or more goes back to the OS, so that RSS follows the live tensors.
Estimated: pvs.memory.train_step(target="cpu") on the same job under FakeTensorMode: its peak minus the
bytes it tracks when the step starts (parameters, AdamW state, batch).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "memory_calibration.json"
ARCH = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": None, "rope_theta": 500000.0, "max_position_embeddings": 256}
VOCAB, BATCH, SEQ = 2048, 8, 256
MIB = 2 ** 20


def calibration_config() -> dict:
    from pvs.config import validate_config
    return validate_config({"data": {"vocab_size": VOCAB}, "parent": {"arch": ARCH},
                            "train": {"seq_len": SEQ, "batch_size": BATCH, "precision": "fp32"},
                            "prune": {"methods": ["sparsegpt"], "ratios": [0.5]},
                            "cluster": {"gpus": {"parent": 1}}, "device": "cpu"})


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def measure() -> dict:
    """One measurement in this (fresh) process; prints nothing, returns bytes."""
    import torch
    from transformers import LlamaForCausalLM
    from pvs.modeling import llama_config
    from pvs.train.trainer import make_optimizer
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = calibration_config()
    model = LlamaForCausalLM(llama_config(ARCH, VOCAB, 0, 0)).train()
    optimizer = make_optimizer(model, cfg["train"])
    x, y = torch.randint(0, VOCAB, (BATCH, SEQ)), torch.randint(0, VOCAB, (BATCH, SEQ))

    def step():
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["train"]["grad_clip"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()                                    # warm-up: AdamW state, lazy initializations
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")          # reset VmHWM to the current RSS
    reset = _status("VmHWM")
    step()
    peak = _status("VmHWM")
    return {"rss_before": before, "hwm_after_reset": reset, "hwm_after_step": peak, "increase": peak - before,
            "params": sum(p.numel() for p in model.parameters())}


def estimate() -> dict:
    import torch
    from pvs import memory
    torch.set_num_threads(1)
    cfg = calibration_config()
    job = next(j for j in memory.grid_jobs(cfg) if j.name == "train parent")
    numbers = memory.train_step(job, cfg, target="cpu")
    return {"peak": numbers["step"], "before": numbers["before"], "increase": numbers["step"] - numbers["before"]}


MALLOC = {"default": {}, "fixed_mmap_threshold": {"MALLOC_MMAP_THRESHOLD_": "131072"}}


def measured(repeats: int, malloc: str) -> dict:
    """Median step increase over ``repeats`` fresh subprocesses under the glibc malloc setting ``malloc``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **MALLOC[malloc]}
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--measure"], capture_output=True, text=True, env=env,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"increase": statistics.median(r["increase"] for r in runs), "runs": runs}


def run(repeats: int) -> dict:
    est = estimate()
    rows = {}
    for malloc in MALLOC:
        m = measured(repeats, malloc)
        rows[malloc] = {"env": MALLOC[malloc], "increase_mib": round(m["increase"] / MIB, 2),
                        "runs_mib": [round(r["increase"] / MIB, 2) for r in m["runs"]],
                        "relative_error": round((est["increase"] - m["increase"]) / m["increase"], 4)}
    return {
        "what": "one fp32 training step of pvs.train on a CPU (one process, stock SDPA): peak memory beyond the "
                "step's start (parameters, AdamW state, batch)",
        "model": {**ARCH, "vocab_size": VOCAB, "params": m["runs"][0]["params"]}, "batch": [BATCH, SEQ],
        "measured": {"source": "VmHWM - VmRSS around the step, fresh subprocess per repeat (median); 'default' is "
                               "glibc's dynamic mmap threshold (freed large blocks stay in the heap and are reused "
                               "with fragmentation), 'fixed_mmap_threshold' returns every block >= 128 KiB to the OS",
                     **rows},
        "estimated": {"source": "pvs.memory.train_step(target='cpu') under FakeTensorMode + MemTracker",
                      "increase_mib": round(est["increase"] / MIB, 2), "peak_mib": round(est["peak"] / MIB, 2),
                      "tracked_at_start_mib": round(est["before"] / MIB, 2)},
        "relative_error": {malloc: rows[malloc]["relative_error"] for malloc in rows},
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT), help="JSON to write (default: benchmarks/results/...)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements (fresh subprocesses); the median counts")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure()))
        return 0
    import torch
    from pvs.versions import library_versions
    result = {**run(args.repeats), "versions": library_versions(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("measured", "estimated", "relative_error")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
