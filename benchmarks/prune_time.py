"""Seconds to prune the default parent with every registered method at every ratio (issue target: <= 60 s
per method and ratio on a 2-core CPU, Sheared-LLaMA excepted: its mask-learning budget is configured).

    .venv/bin/python benchmarks/prune_time.py                         # random-init parent of config.yaml's shape
    .venv/bin/python benchmarks/prune_time.py --model results/models/parent --data results/data

Times ``method.prune(...)`` (calibration windows already loaded, model in memory) on one thread and
writes ``benchmarks/results/prune_time.json`` with seconds, achieved ratio and peak RSS per run.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from pvs.cli import doc_parser
from pvs.config import load_config
from pvs.modeling import count_params, llama_config, load_model, new_model
from pvs.prune.__main__ import calibration_window_count, method_calibration, resolve_options
from pvs.prune.common import achieved_ratio
from pvs.prune.registry import METHOD_NAMES, get_method
from pvs.versions import library_versions


def parent_model(args, cfg):
    if args.model:
        return load_model(args.model)
    vocab = cfg["data"]["vocab_size"]
    return new_model(llama_config(cfg["parent"]["arch"], vocab, 0, 0), cfg["train"]["init_std"], cfg["seed"])


def calibration(args, method, options: dict, vocab: int) -> torch.Tensor:
    """The windows the prune CLI would give ``method`` (random tokens of that count without --data)."""
    if args.data:
        return method_calibration(method, args.data, options)
    count, length = calibration_window_count(method, options), options["calib_seq_len"]
    return torch.randint(0, vocab, (count, length), generator=torch.Generator().manual_seed(options["seed"]))


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/prune_time.py", __doc__)
    parser.add_argument("--config", default="config.yaml", help="study config giving the parent shape and prune options")
    parser.add_argument("--model", help="a parent checkpoint (default: random init of the config's shape)")
    parser.add_argument("--data", help="prepared data dir for real calibration windows (default: random tokens)")
    parser.add_argument("--methods", nargs="+", default=METHOD_NAMES, help="methods to time")
    parser.add_argument("--ratios", nargs="+", type=float, help="ratios to time (default: the config's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(ROOT / args.config)
    parent = parent_model(args, cfg).eval()
    parent_params = count_params(parent)
    rows = []
    for method in args.methods:
        for ratio in args.ratios or cfg["prune"]["ratios"]:
            options = resolve_options(argparse.Namespace(calib_windows=None, calib_seq_len=None, seed=None,
                                                         device="cpu", method=method, ratio=ratio,
                                                         ckpt=None, stop_after_steps=None), cfg)
            calib = calibration(args, get_method(method), options, parent.config.vocab_size)
            model = copy.deepcopy(parent)
            start = time.time()
            result = get_method(method).prune(model, calib, ratio, options)
            seconds = time.time() - start
            child = count_params(result.model, result.masks)
            rows.append({"method": method, "ratio": ratio, "seconds": round(seconds, 2),
                         "achieved_ratio": round(achieved_ratio(parent_params, child), 4),
                         "calibration": list(calib.shape),
                         "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
            print(json.dumps(rows[-1]), flush=True)
    out = ROOT / "benchmarks" / "results" / "prune_time.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": args.config, "model": args.model or "random init", "threads": 1,
                               "data": args.data or "random tokens", "runs": rows,
                               "versions": library_versions()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
