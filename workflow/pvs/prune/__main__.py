"""Prune a parent checkpoint with one method at one ratio: the prune stage of the study.

    python -m pvs.prune --method minitron_depth --ratio 0.5 --model results/models/parent \\
        --data results/data --out results/models/pruned/minitron_depth/r0.5 --config config.yaml

Calibration: ``prune.calib_windows`` windows of the method's calibration length (``prune.<method>.calib_seq_len``,
null = ``prune.calib_seq_len``) drawn from the calib split by the seed (flags override the config; the
defaults come from the schema and the method registry). A method that learns masks asks for more
(Sheared-LLaMA: enough distinct windows for ``prune.sheared_llama.mask_tokens``, at most the whole split).
The method's options are its ``prune.<method>`` section (pvs.prune.registry). Writes into OUT: a Hugging Face
checkpoint (safetensors, tokenizer files copied from the parent), ``masks.safetensors`` for sparse
methods, and ``meta.json`` last (method, target and achieved ratio over non-embedding and over total parameters,
what the shape solver matched, parameter counts, shapes,
calibration, time, device, library versions, method facts). A directory without meta.json is an
interrupted run.

Sheared-LLaMA trains the whole parent while it learns its masks, so at scale it runs under torchrun
(``torchrun --nproc_per_node 8 -m pvs.prune --method sheared_llama ...``; FSDP2, see pvs.prune.sheared);
the other methods work layer by layer in one process.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pvs.cli import doc_parser
from pvs.train import distributed
from pvs.config import load_config, validate_config
from pvs.modeling import MASKS_FILE, count_params, load_model, pick_device, save_model, shape_of
from pvs.prune.common import Stopped, achieved_ratio, calibration_windows, copy_tokenizer_files, log, write_meta
from pvs.prune.registry import METHOD_NAMES, TRAINS_PARENT, Method, get_method, job_options
from pvs.versions import library_versions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.prune", __doc__)
    parser.add_argument("--method", required=True, choices=METHOD_NAMES, help="pruning method (see pvs.prune.registry)")
    parser.add_argument("--ratio", required=True, type=float,
                        help="fraction of non-embedding parameters to remove, in (0, 1); for sparse methods the "
                             "sparsity of the block linear layers")
    parser.add_argument("--model", required=True, help="parent HF checkpoint directory")
    parser.add_argument("--data", required=True, help="prepared data directory holding calib.bin and manifest.json")
    parser.add_argument("--out", required=True, help="output directory for the pruned child")
    parser.add_argument("--config", help="study config (YAML); the schema's defaults when omitted")
    parser.add_argument("--calib-windows", type=int, help="override prune.calib_windows (calibration windows)")
    parser.add_argument("--calib-seq-len", type=int, help="override prune.calib_seq_len (tokens per window)")
    parser.add_argument("--seed", type=int, help="override the config's seed (picks the calibration windows)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: threads_per_job)")
    parser.add_argument("--ckpt", help="checkpoint directory of Sheared-LLaMA's mask learning: written every "
                                       "prune.<method>.checkpoint_every steps, resumed by a re-run, removed at the end")
    parser.add_argument("--stop-after-steps", type=int, help="Sheared-LLaMA: checkpoint and exit after this many "
                                                             "mask-learning steps (to test resume)")
    args = parser.parse_args(argv)
    if not 0 < args.ratio < 1:
        parser.error(f"--ratio {args.ratio!r}: a pruning ratio must lie in (0, 1)")
    for flag in ("calib_windows", "calib_seq_len"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)!r}: must be at least 1")
    return args


def resolve_options(args: argparse.Namespace, cfg: dict) -> dict:
    """The method's options (``prune.<method>`` over the registry's defaults, the shared calibration keys,
    its own calibration length) with the flags applied, plus seed, device and how a trained parent runs."""
    options = job_options(args.method, cfg["prune"])
    options["calib_windows"] = args.calib_windows or options["calib_windows"]
    options["calib_seq_len"] = args.calib_seq_len or options["calib_seq_len"]
    options["seed"] = cfg["seed"] if args.seed is None else args.seed
    options["device"] = args.device or cfg["device"]
    options["precision"] = cfg["train"]["precision"]                 # Sheared-LLaMA under torchrun (FSDP2)
    options["activation_checkpointing"] = cfg["train"]["activation_checkpointing"]
    options["ckpt"], options["stop_after_steps"] = args.ckpt, args.stop_after_steps
    return options


def calibration_window_count(method: Method, options: dict) -> int:
    """``calib_windows``, or more for methods that learn masks (Sheared-LLaMA asks for its token budget)."""
    wanted = getattr(method.module, "calibration_windows_wanted", None)
    return wanted(options) if wanted else options["calib_windows"]


def method_calibration(method: Method, data: str, options: dict) -> torch.Tensor:
    """The calibration windows ``method`` gets from DATA/calib.bin (mask learning: at most the whole split)."""
    count = calibration_window_count(method, options)
    return calibration_windows(data, count, options["calib_seq_len"], options["seed"],
                               at_most=count > options["calib_windows"])


def run(args: argparse.Namespace, cfg: dict, options: dict) -> dict:
    """Prune, save the child and return the meta.json contents."""
    torch.set_num_threads(args.threads or cfg["threads_per_job"])
    torch.manual_seed(options["seed"])
    method = get_method(args.method)
    ctx = distributed.setup(options["device"])
    if ctx.sharded and not method.trains_parent:
        raise ValueError(f"--method {args.method} runs in one process (layer by layer); only "
                         f"{', '.join(sorted(TRAINS_PARENT))} runs under torchrun")
    device = pick_device(options["device"])
    if ctx.sharded and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    options = {**options, "device": str(device)}
    out = Path(args.out)
    for stale in ("meta.json", MASKS_FILE):  # a leftover meta.json would hide an interrupted run
        (out / stale).unlink(missing_ok=True)
    calib = method_calibration(method, args.data, options)
    log(f"{args.method} r={args.ratio} on {args.model}: {len(calib)} x {calib.shape[1]} calibration tokens, "
        f"device {device}, {torch.get_num_threads()} threads")
    model = load_model(args.model, device)
    parent_params, parent_shape = count_params(model), shape_of(model.config)
    start = time.time()
    try:
        result = method.prune(model, calib, args.ratio, options)
    except Stopped as stopped:                        # --stop-after-steps: the checkpoint is written, no child
        log(str(stopped))
        distributed.teardown(ctx)
        return {}
    seconds = time.time() - start
    if not ctx.main:                                  # rank 0 writes the child
        distributed.teardown(ctx)
        return {}
    child = result.model.cpu()
    child_params = count_params(child, result.masks)
    save_model(child, out, masks=result.masks)
    copy_tokenizer_files(args.model, out)
    meta = {
        "method": args.method, "target_ratio": args.ratio,
        "achieved_ratio": achieved_ratio(parent_params, child_params),
        "achieved_ratio_total": 1.0 - child_params["total"] / parent_params["total"],
        "match": options.get("match"),         # what the shape solver matched (structured methods; sparse: null)
        "params": {"parent": parent_params, "child": child_params},
        "shape": {"parent": parent_shape, "child": shape_of(child.config)},
        "sparse": method.sparse,
        "calibration": {"split": "calib", "windows": len(calib), "seq_len": int(calib.shape[1]),
                        "seed": options["seed"], "tokens": int(calib.numel())},
        "mask_learning_tokens": int(result.info.get("mask_learning_tokens", 0)),
        "seconds": seconds, "device": str(device), "threads": torch.get_num_threads(),
        "parent": str(args.model), "data": str(args.data), "study": cfg["study"],
        "versions": library_versions(),
        "info": result.info,
    }
    write_meta(out, meta)
    distributed.teardown(ctx)
    log(f"done in {seconds:.1f}s: achieved ratio {meta['achieved_ratio']:.4f} (target {args.ratio}), "
        f"non-embedding params {parent_params['non_embedding']} -> {child_params['non_embedding']}")
    return meta


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config) if args.config else validate_config({})
    try:
        options = resolve_options(args, cfg)
    except ValueError as e:
        print(f"python -m pvs.prune: error: {e}", file=sys.stderr)
        return 2
    try:
        run(args, cfg, options)
    except ValueError as e:
        print(f"python -m pvs.prune: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
