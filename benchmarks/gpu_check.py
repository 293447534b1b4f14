"""The GPU check of issue 11 (run by benchmarks/gpu_check.sh): train, prune and evaluate once on one GPU.

    benchmarks/gpu_check.sh                                 # one H100/H200-class GPU, < 10 minutes
    benchmarks/gpu_check.sh --tiny --device cpu --out /tmp/check.json      # the plumbing at toy size

Parts, each in its own process (so each peak memory is its own), each with its own time limit; a part that
fails or times out is recorded under ``errors`` and the others still run:
  train            the trainer's step (benchmarks/gpu_train.py -> pvs.train.step.TrainStep) on a ~1.2B child
                   (hidden 2048, MLP 5632, 16 layers, 16/8 heads, vocab 128256) in bf16, 4096-token windows,
                   2 micro-batches of 2 per step, 3 warm-up + 20 timed steps, plain loss, eager: tokens/s,
                   MFU (6N + 12 L H Q T), torch.cuda.max_memory_allocated / reserved;
  train_optimized  the same with ``compile: layers`` and ``loss_chunk_tokens: 4096``;
  prune            SparseGPT at 0.5 (pvs.prune.sparsegpt.prune, the registry's default options) on both
                   decoder layers of a randomly initialized 2-layer Llama of Llama-3.1-8B's layer shape
                   (hidden 4096, MLP 14336, 32/8 heads, vocab 128256) in fp32, with 128 x 8192 calibration
                   tokens: seconds and peak memory;
  evaluate         lm-eval (pvs.evaluate.score.run_lmeval, the study's own HFLM wrapper) on the GPU: the two
                   generated local tasks (pvs.evaluate.tasks.write_local_tasks) over held-out text of the
                   Python standard library's documentation, with a BPE tokenizer trained on it and a
                   randomly initialized model of the train part's shape with that vocabulary, in bf16.
Estimates: when ``pvs.memory`` is importable, ``python -m pvs.memory --only ...`` estimates the train part
(the plain one: the estimator counts the plain loss) and the prune part from configs of the same shapes, on
the CPU while the GPU parts run; each part's JSON then holds ``estimate_gib`` and measured / estimated.
Otherwise ``estimate`` says "no estimate". One JSON (``--out``, default benchmarks/results/gpu_check.json).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2 ** 30
SHAPES = {
    "child_1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                     num_key_value_heads=8),
    "llama8b_2layers": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=2, num_attention_heads=32,
                            num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


def plan(tiny: bool, device: str) -> dict:
    """Every size and limit of the check (tiny: toy sizes for a CPU logic check)."""
    if tiny:
        return {"train_size": "tiny", "seq_len": 64, "micro_batch": 2, "accum": 2, "steps": 2, "warmup": 1,
                "precision": "fp32" if device == "cpu" else "bf16", "loss_chunk_tokens": 32,
                "prune_shape": "tiny", "vocab": 512, "calib": (4, 64), "eval_vocab": 512, "eval_shape": "tiny",
                "eval_examples": 8, "eval_seq": 64, "timeouts": {"train": 240, "prune": 120, "evaluate": 240}}
    return {"train_size": "1b", "seq_len": 4096, "micro_batch": 2, "accum": 2, "steps": 20, "warmup": 3,
            "precision": "bf16", "loss_chunk_tokens": 4096, "prune_shape": "llama8b_2layers", "vocab": 128256,
            "calib": (128, 8192), "eval_vocab": 8192, "eval_shape": "child_1b", "eval_examples": 200,
            "eval_seq": 4096, "timeouts": {"train": 130, "prune": 170, "evaluate": 90}}


def arch(shape: str, positions: int) -> dict:
    return {**SHAPES[shape], "head_dim": None, "rope_theta": 500000.0, "max_position_embeddings": positions}


# ---------------------------------------------------------------- estimates (pvs.memory, when present)
def estimator_configs(p: dict, workdir: Path) -> dict[str, tuple[Path, str]]:
    """Study configs whose 'train parent' / 'prune sparsegpt' jobs have the shapes of the train / prune parts."""
    import yaml

    train_shape = "tiny" if p["train_size"] == "tiny" else "child_1b"
    common = {"device": "cuda", "cluster": {"gpus": {"parent": 1, "child": 1}},
              "data": {"vocab_size": p["vocab"]}}
    train = {**common, "parent": {"source": "train", "arch": arch(train_shape, p["seq_len"])},
             "train": {"seq_len": p["seq_len"], "batch_size": p["micro_batch"] * p["accum"],
                       "micro_batch_size": p["micro_batch"], "precision": p["precision"]},
             "prune": {"methods": ["sparsegpt"], "ratios": [0.5], "calib_seq_len": p["seq_len"]}}
    windows, length = p["calib"]
    prune = {**common, "parent": {"source": "train", "arch": arch(p["prune_shape"], length)},
             "train": {"seq_len": length, "batch_size": 8},
             "prune": {"methods": ["sparsegpt"], "ratios": [0.5], "calib_windows": windows, "calib_seq_len": length}}
    out = {}
    for part, cfg, only in (("train", train, "train parent"), ("prune", prune, "prune sparsegpt")):
        path = workdir / f"estimate_{part}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        out[part] = (path, only)
    return out


def estimate(p: dict, workdir: Path, python: str) -> dict:
    """{part: {"estimate_gib": ...} or {"estimate": "no estimate", "why": ...}} from python -m pvs.memory."""
    if importlib.util.find_spec("pvs.memory") is None:
        return {part: {"estimate": "no estimate", "why": "pvs.memory is not importable"} for part in ("train", "prune")}
    out = {}
    for part, (config, only) in estimator_configs(p, workdir).items():
        rows = workdir / f"estimate_{part}.json"
        result = subprocess.run([python, "-m", "pvs.memory", "--config", str(config), "--only", only,
                                 "--json", str(rows)], capture_output=True, text=True, timeout=400)
        if rows.exists() and json.loads(rows.read_text())["rows"]:
            row = json.loads(rows.read_text())["rows"][0]
            out[part] = {"estimate_gib": row["peak_gib"], "estimate_job": row["job"], "estimate_config": str(config)}
        else:
            out[part] = {"estimate": "no estimate", "why": result.stderr[-1500:]}
    return out


# ---------------------------------------------------------------- the parts
def train_command(p: dict, device: str, out: Path, optimized: bool, python: str) -> list[str]:
    cmd = [python, str(ROOT / "benchmarks" / "gpu_train.py"), "--size", p["train_size"], "--seq-len", str(p["seq_len"]),
           "--micro-batch", str(p["micro_batch"]), "--accum", str(p["accum"]), "--steps", str(p["steps"]),
           "--warmup", str(p["warmup"]), "--precision", p["precision"], "--device", device, "--out", str(out)]
    if optimized:
        cmd += ["--compile", "layers", "--loss-chunk-tokens", str(p["loss_chunk_tokens"])]
    return cmd


def prune_part(p: dict, device: str) -> dict:
    """SparseGPT on both layers of a random 2-layer model of the prune shape; seconds and peak memory."""
    import torch
    from pvs.modeling import llama_config, rebuild_rotary_
    from pvs.prune import sparsegpt
    from transformers import LlamaForCausalLM

    windows, length = p["calib"]
    dev = torch.device(device)
    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(arch(p["prune_shape"], length), p["vocab"], 0, 0))
    model.to_empty(device=dev)
    rebuild_rotary_(model, dev)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            torch.nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04) if param.ndim >= 2 else param.fill_(1.0)
    calib = torch.randint(0, p["vocab"], (windows, length), generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    result = sparsegpt.prune(model, calib, 0.5, {})
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    return {"method": "sparsegpt", "ratio": 0.5, "shape": SHAPES[p["prune_shape"]], "vocab": p["vocab"],
            "calibration": [windows, length], "layers": len(result.info["layers"]),
            "sparsity": result.info["sparsity"], "seconds": seconds,
            "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None,
            "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / GIB if device == "cuda" else None}


def heldout_text(max_docs: int) -> list[dict]:
    """Held-out documents: the Python standard library's pydoc topics (real English, always present)."""
    from pydoc_data.topics import topics
    return [{"source": "prose", "text": text} for _, text in sorted(topics.items()) if len(text) > 400][:max_docs]


def evaluate_part(p: dict, device: str) -> dict:
    """lm-eval on the device: local generated tasks, a tokenizer trained on the same text, a random model."""
    import torch
    from pvs.data.corpus.bpe import train_bpe
    from pvs.evaluate.score import run_lmeval
    from pvs.evaluate.tasks import read_heldout, write_local_tasks
    from pvs.modeling import llama_config

    docs = heldout_text(400)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_eval_"))
    (work / "tasks").mkdir()
    (work / "heldout_docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = write_local_tasks(read_heldout(work), work / "tasks", p["eval_examples"], seed=0)
    (work / "tasks" / "tasks.json").write_text(json.dumps(tasks))
    tokenizer = train_bpe([d["text"] for d in docs], p["eval_vocab"])
    config = llama_config(arch(p["eval_shape"], p["eval_seq"]), len(tokenizer), 0, 0)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    from transformers import LlamaForCausalLM
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    metrics, detail = run_lmeval(model, tokenizer, work / "tasks", batch_size=32, limit=None, separator_id=0)
    seconds = time.time() - start
    return {"tasks": tasks, "metrics": metrics, "n_samples": {k: v.get("n_samples") for k, v in detail.items()},
            "model_shape": SHAPES[p["eval_shape"]], "vocab": len(tokenizer), "dtype": str(dtype), "seconds": seconds,
            "device": str(next(model.parameters()).device),
            "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / GIB if device == "cuda" else None}


def run_part(name: str, cmd: list[str], timeout: int, out: Path) -> tuple[dict | None, str | None]:
    """Run one part as a subprocess; (its JSON, None) or (None, what went wrong)."""
    start = time.time()
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"{name}: timed out after {timeout}s"
    print(f"[gpu_check] {name}: rc {result.returncode} in {time.time() - start:.0f}s", file=sys.stderr, flush=True)
    if result.returncode != 0 or not out.exists():
        return None, f"{name}: exit {result.returncode}: {result.stderr[-3000:]}"
    return json.loads(out.read_text()), None


def compare(part: dict | None, est: dict) -> None:
    if part is None:
        return
    part.update(est)
    measured = part.get("max_memory_allocated_gib")
    if measured is not None and est.get("estimate_gib"):
        part["measured_over_estimate"] = measured / est["estimate_gib"]


def main(argv: list[str] | None = None) -> int:
    from pvs.cli import doc_parser
    parser = doc_parser("benchmarks/gpu_check.sh", __doc__)
    parser.add_argument("--tiny", action="store_true", help="toy sizes (a logic check, e.g. with --device cpu)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"),
                        help="the JSON written (default: benchmarks/results/gpu_check.json)")
    parser.add_argument("--part", choices=["prune", "evaluate"], help=argparse.SUPPRESS)   # internal: one part
    parser.add_argument("--part-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    p = plan(args.tiny, args.device)
    if args.part:
        import torch
        torch.backends.cuda.matmul.allow_tf32 = False          # fp32 pruning is fp32, as on the study's GPUs
        result = (prune_part if args.part == "prune" else evaluate_part)(p, args.device)
        Path(args.part_out).write_text(json.dumps(result, indent=2) + "\n")
        return 0
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here (use --tiny --device cpu for a logic check)")
    python, started = sys.executable, time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    estimates: dict = {}
    thread = threading.Thread(target=lambda: estimates.update(estimate(p, work, python)), daemon=True)
    thread.start()                                              # on the CPU while the GPU parts run
    parts, errors = {}, {}
    jobs = [("train", train_command(p, args.device, work / "train.json", False, python), "train"),
            ("train_optimized", train_command(p, args.device, work / "train_optimized.json", True, python), "train")]
    jobs += [(part, [python, str(Path(__file__).resolve()), "--part", part, "--part-out", str(work / f"{part}.json"),
                     "--device", args.device] + (["--tiny"] if args.tiny else []), part)
             for part in ("prune", "evaluate")]
    for name, cmd, limit in jobs:
        parts[name], error = run_part(name, cmd, p["timeouts"][limit], work / f"{name}.json")
        if error:
            errors[name] = error
    thread.join(timeout=max(1.0, 560 - (time.time() - started)))
    for part in ("train", "prune"):
        compare(parts.get(part), estimates.get(part, {"estimate": "no estimate", "why": "the estimate did not finish"}))
    record = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "tiny": args.tiny,
              "plan": {k: v for k, v in p.items() if k != "timeouts"}, **parts, "errors": errors,
              "seconds_total": time.time() - started}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("plan",)}, indent=2)[:4000])
    return 1 if errors else 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    sys.exit(main())
