"""One trainer for every arm of the study: the parent P, pruned retraining P-R_N, scratch S_N, S_{P+N} and S_F.

    python -m pvs.train --arm parent  --tokens 1M   --data results/data --out results/models/parent
    python -m pvs.train --arm retrain --tokens 300k --init results/models/pruned/sparsegpt/r0.5 --data ... --out ...
    python -m pvs.train --arm scratch --tokens 300k --init results/models/pruned/sparsegpt/r0.5 --data ... --out ...

What an arm decides (pvs.study.ARMS, the one definition): which splits it reads and what ``--init`` means.
  parent         reads pretrain;               shape from parent.arch, random init
  retrain        reads retrain (disjoint);     weights (and masks) of --init
  scratch        reads pretrain+retrain from the start; shape (and mask) of --init, random init
  scratch_total  same as scratch; the workflow passes P+N tokens (setting 2)
  scratch_flops  same as scratch; --tokens-from gives the tokens of setting 3 (python -m pvs.train.budget)

Data order: the run's windows (the first ``steps x batch`` windows of its stream, so the same tokens for
every seed) are visited in a permutation drawn from its seed; the seed also draws a scratch model's init.

The recipe is the paper's (AdamW, 5% warm-up, cosine to 10%, clip 1.0). Budgets are tokens; steps are
derived once and printed. Sparse arms zero the gradients of pruned weights before clipping and re-apply
their masks after every optimizer step. Under torchrun the model is built on the meta device, sharded, then
initialized or loaded (rank 0 reads, broadcasts); no rank holds a full copy. ``--ckpt`` holds
resumable checkpoints (model, optimizer, RNG, step, data position); re-running the same command
resumes from the latest one and reaches the same final weights as an uninterrupted run.

LR: ``--lr 0.01`` or ``--lr-from results/lr/chosen/retrain.width.json`` (a chosen file of
``python -m pvs.train.lr_choose``) replaces train.lr as the peak LR; train_meta.json states the LR used
(``lr``, ``lr_from``). ``--eval-split dev --eval-out FILE.json`` (the LR sweep, pvs.sweep) also scores the final
model on evaluate.val_windows windows of the development split and writes that dev loss, with the LR, to FILE.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pvs.cli import doc_parser, guarded
from pvs.train import checkpoint, distributed
from pvs.train.step import Batches, TrainStep, compile_layers, compiled_forward, use_compile_cache
from pvs.budget import format_tokens, parse_tokens, steps_for_budget
from pvs.config import RUN_ONLY_TRAIN_KEYS, load_config, result_recipe, validate_config
from pvs.modeling import (apply_masks_, count_params, freeze_forced_biases_, init_weights_, llama_config, load_masks,
                          load_model, load_tokenizer, pick_device, read_state_dict, rebuild_rotary_,
                          save_model, write_json)
from pvs.data.tokens import TokenStream, load_split, read_manifest, spread_windows
from pvs.study import ARMS, TRAINER_ARMS, Arm, epoch_message, epochs_read
from pvs.versions import library_versions
from transformers import AutoConfig, LlamaForCausalLM


def window_order(windows: int, seed: int) -> np.ndarray:
    """The order in which a run visits its training windows: a permutation drawn from its seed."""
    return np.random.default_rng(seed).permutation(windows)


def run_tokens(args: argparse.Namespace) -> int:
    """The token budget: --tokens, or the 'tokens' of the --tokens-from JSON (setting 3, pvs.compute)."""
    if args.tokens_from:
        record = json.loads(Path(args.tokens_from).read_text())
        if not isinstance(record.get("tokens"), int) or record["tokens"] <= 0:
            raise ValueError(f"{args.tokens_from}: needs a positive integer 'tokens'")
        return record["tokens"]
    return parse_tokens(args.tokens)


def compile_mode(recipe: dict, tokens: int):
    """The run's ``compile`` setting: train.compile, or false (eager) for a run of fewer tokens than
    train.compile_min_tokens, whose steps would not repay the tracing and compiling."""
    floor = recipe.get("compile_min_tokens")
    return False if floor is not None and tokens < parse_tokens(floor) else recipe["compile"]


def peak_lr(args: argparse.Namespace, cfg: dict) -> tuple[float, str]:
    """The run's peak LR and where it comes from: --lr, the 'lr' of the --lr-from JSON, else train.lr."""
    if getattr(args, "lr", None) is not None:
        lr, source = args.lr, "--lr"
    elif getattr(args, "lr_from", None):
        record = json.loads(Path(args.lr_from).read_text())
        lr, source = record.get("lr"), str(args.lr_from)
    else:
        return cfg["train"]["lr"], "train.lr"
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"{source}: the peak LR must be a number > 0, got {lr!r}")
    return float(lr), source


def lr_at(step: int, total_steps: int, recipe: dict) -> float:
    """Linear warm-up over warmup_frac of the steps, then cosine decay to min_lr_ratio * peak."""
    peak, floor = recipe["lr"], recipe["lr"] * recipe["min_lr_ratio"]
    warmup = math.ceil(recipe["warmup_frac"] * total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def model_config(arm: Arm, init: str | None, cfg: dict, vocab_size: int, eos_id: int):
    """The starting model's config and its masks (None for dense) for an arm.

    A scratch twin takes the child's shape (and mask) as a plain Llama: no biases, whatever the child
    (a FLAP child with compensation) carries.
    """
    if arm.init == "random":
        return llama_config(cfg["parent"]["arch"], vocab_size, eos_id, eos_id), None
    if init is None:
        raise ValueError("--init is required for arms that start from a pruned model")
    config = AutoConfig.from_pretrained(init)
    if arm.init != "weights":
        config.attention_bias = config.mlp_bias = False
    return config, load_masks(init)


def init_generator(arm: Arm, seed: int) -> torch.Generator:
    """The generator a randomly initialized arm draws its weights from."""
    return torch.Generator().manual_seed(seed * 1000 + arm.init_stream)


def build_model(arm: Arm, init: str | None, cfg: dict, vocab_size: int, eos_id: int, seed: int):
    """The starting model (full, on the CPU) and its masks for an arm, in one process.

    A retrained child keeps its weights; of FLAP's biases only the compensation ones (o_proj, down_proj)
    train, the zero q/k/v/gate/up biases that stock LlamaConfig forces on are frozen.
    """
    config, masks = model_config(arm, init, cfg, vocab_size, eos_id)
    if arm.init == "weights":
        model = load_model(init)
        freeze_forced_biases_(model)
        return model, masks
    model = LlamaForCausalLM(config)
    init_weights_(model, cfg["train"]["init_std"], init_generator(arm, seed))
    return model, masks


def make_optimizer(model: torch.nn.Module, recipe: dict) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norms or biases); frozen parameters left out."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe["lr"], betas=tuple(recipe["betas"]), eps=recipe["eps"])


def make_train_step(model, optimizer, masks, recipe: dict, device: torch.device, sharded: bool = False) -> TrainStep:
    """The step the trainer runs (pvs.train.step.TrainStep) for the ``train`` recipe: bf16 autocast when
    ``precision`` is bf16 in one process (under FSDP2 the policy casts), the whole-model compiled forward
    for ``compile: true``, the chunked loss for ``loss_chunk_tokens``. Also used by benchmarks/train_throughput.py."""
    use_bf16 = recipe["precision"] == "bf16" and not sharded
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    return TrainStep(model, optimizer, masks, recipe["grad_clip"], autocast,
                     forward=compiled_forward(model, recipe["compile"]), loss_chunk_tokens=recipe["loss_chunk_tokens"])


@torch.no_grad()
def validation_loss(model, windows: torch.Tensor, micro_batch: int, autocast,
                    ctx: distributed.Dist = distributed.Dist()) -> float:
    """Mean next-token loss (nats per predicted token) over ``windows``, in micro-batches of ``micro_batch``.

    Under torchrun each rank scores its share (every world-th window) and the summed losses are reduced
    over ranks, so the value is the one process's. Every rank runs the same number of forward passes
    (FSDP2 gathers parameters in each); a rank short of windows scores a stand-in with weight zero.
    With ``compile: layers`` the layers run eagerly here (torch.compiler.set_stance "force_eager"): a
    no-grad forward of another batch size would otherwise trace and compile two more graphs per job.
    """
    model.eval()
    with torch.compiler.set_stance("force_eager"):   # compiled layers run eagerly here: no graphs for no-grad
        total = _summed_nll(model, windows, micro_batch, autocast, ctx)
    model.train()
    return distributed.total(float(total), ctx) / (len(windows) * (windows.shape[1] - 1))


def _summed_nll(model, windows: torch.Tensor, micro_batch: int, autocast, ctx: distributed.Dist) -> torch.Tensor:
    """This rank's summed next-token loss over its share of ``windows`` (float64), for validation_loss."""
    mine = windows[ctx.rank::ctx.world]
    passes = math.ceil(math.ceil(len(windows) / ctx.world) / micro_batch)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(passes):
        x = mine[i * micro_batch:(i + 1) * micro_batch]
        weight = 1.0 if len(x) else 0.0
        x = x if len(x) else windows[:1]
        with autocast():
            logits = model(input_ids=x, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)),
                                                x[:, 1:].reshape(-1), reduction="sum")
        total += weight * nll.double().cpu()
    return total


class MetricsLog:
    """JSONL metrics kept beside the checkpoint while training (so a resumed run continues the file)."""

    def __init__(self, path: Path, keep_until_step: int):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["step"] <= keep_until_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def train(args: argparse.Namespace, cfg: dict) -> dict:
    """One training run; under torchrun (WORLD_SIZE > 1) data-parallel with FSDP2 (pvs.train.distributed)."""
    ctx = distributed.setup(args.device or cfg["device"])
    try:
        return _train(args, cfg, ctx)
    finally:
        distributed.teardown(ctx)


def _say(ctx: distributed.Dist, text: str) -> None:
    if ctx.main:
        print(text, file=sys.stderr)


def _batch_geometry(recipe: dict, ctx: distributed.Dist) -> tuple[int, int]:
    """Windows per rank per step and per micro-batch (gradient accumulation up to the global batch)."""
    batch = recipe["batch_size"]
    if batch % ctx.world:
        raise ValueError(f"train.batch_size = {batch} is not divisible by the {ctx.world} processes")
    local = batch // ctx.world
    micro = min(recipe["micro_batch_size"] or local, local)
    if local % micro:
        raise ValueError(f"train.micro_batch_size = {micro} does not divide the {local} windows per process")
    return local, micro


def _prepare_model(args, cfg, ctx, arm, manifest, seed, device):
    """The starting model on ``device``, its masks (placed like the parameters) and the dense masks.

    Under torchrun no rank builds or loads a full copy: the model is built on the meta device, sharded
    (FSDP2), materialized shard by shard, then initialized (every rank draws each tensor from the same
    generator and keeps its shard, so the weights equal one process's) or loaded (rank 0 reads the
    safetensors and broadcasts, pvs.train.distributed.load_full_model_state).
    """
    recipe = cfg["train"]
    torch.manual_seed(seed)
    if not ctx.sharded:
        model, masks = build_model(arm, args.init, cfg, manifest["vocab_size"], manifest["eos_id"], seed)
        model.to(device).train()
        apply_masks_(model, masks)
        if recipe["activation_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if recipe["compile"] == "layers":
            compile_layers(model)
        return model, masks, masks
    config, masks = model_config(arm, args.init, cfg, manifest["vocab_size"], manifest["eos_id"])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if arm.init == "weights":
        freeze_forced_biases_(model)
    if recipe["compile"] == "layers":
        compile_layers(model)                      # before FSDP2 wraps the layers (torchtitan's order)
    distributed.shard(model, bf16=recipe["precision"] == "bf16",
                      activation_checkpointing=recipe["activation_checkpointing"],
                      shard_ends=recipe["shard_embeddings"])
    model.to_empty(device=device)
    rebuild_rotary_(model, device)
    if arm.init == "weights":
        distributed.load_full_model_state(model, read_state_dict(args.init) if ctx.main else {})
    else:
        init_weights_(model, recipe["init_std"], init_generator(arm, seed))
    model.train()
    sharded_masks = distributed.shard_masks(model, masks)
    apply_masks_(model, sharded_masks)
    return model, sharded_masks, masks


def _signature(args, arm_tokens: int, steps: int, seed: int, recipe: dict, manifest: dict) -> dict:
    """What decides a run's result; a checkpoint resumes only into the same signature.

    The recipe enters without its run-only keys (pvs.config.RUN_ONLY_TRAIN_KEYS: checkpoint interval,
    logging, micro-batch, activation checkpointing, compile), so changing those resumes the checkpoint.
    """
    return {"arm": args.arm, "tokens": arm_tokens, "steps": steps, "seed": seed, "init": args.init,
            "recipe": result_recipe(recipe), "data": manifest["splits"]}


def _resume_state(ckpt_dir: Path, signature: dict, ctx) -> dict | None:
    state = checkpoint.load_state(ckpt_dir)
    if state is not None and state["signature"] != json.loads(json.dumps(signature)):
        _say(ctx, f"[train] checkpoint in {ckpt_dir} belongs to another run configuration; starting over")
        if ctx.main:
            shutil.rmtree(ckpt_dir)
        if ctx.sharded:
            torch.distributed.barrier()
        return None
    return state


def _train(args: argparse.Namespace, cfg: dict, ctx: distributed.Dist) -> dict:
    arm = ARMS[args.arm]
    lr, lr_source = peak_lr(args, cfg)
    tokens = run_tokens(args)
    # the signature and every step see this LR; train_meta.json's run_options the compile setting in force
    cfg = {**cfg, "train": {**cfg["train"], "lr": lr, "compile": compile_mode(cfg["train"], tokens)}}
    recipe = cfg["train"]
    seed = cfg["seed"] if args.seed is None else args.seed
    torch.set_num_threads(args.threads or cfg["threads_per_job"])
    if recipe["compile"] and recipe["compile_cache_dir"]:
        use_compile_cache(recipe["compile_cache_dir"])
    device = pick_device(args.device or cfg["device"])
    if ctx.sharded and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    manifest = read_manifest(args.data)
    seq_len, batch_size = recipe["seq_len"], recipe["batch_size"]
    local, micro = _batch_geometry(recipe, ctx)
    steps = steps_for_budget(tokens, seq_len, batch_size)
    splits = {s: load_split(args.data, s) for s in arm.splits}
    split_tokens = {s: len(tokens) for s, tokens in splits.items()}
    stream = TokenStream(list(splits.values()))
    epochs = epochs_read(arm, tokens, split_tokens, seq_len, batch_size)
    if epochs > recipe["max_epochs"]:
        raise ValueError(f"{Path(args.data) / 'manifest.json'}: "
                         + epoch_message(args.arm, tokens, arm, split_tokens, epochs, recipe["max_epochs"]))
    eval_every = parse_tokens(recipe["eval_every_tokens"])
    _say(ctx, f"[train] peak LR {lr:g} ({lr_source})")
    _say(ctx, f"[train] arm={args.arm} budget={format_tokens(tokens)} tokens = {steps} steps x {batch_size} x "
              f"{seq_len} (warm-up {math.ceil(recipe['warmup_frac'] * steps)} steps; {ctx.world} process(es) x "
              f"{local // micro} micro-batch(es) of {micro}); data={'+'.join(arm.splits)} "
              f"({format_tokens(stream.length)} tokens, {steps * batch_size * seq_len / stream.length:.2f} epochs)")

    model, masks, dense_masks = _prepare_model(args, cfg, ctx, arm, manifest, seed, device)
    optimizer = make_optimizer(model, recipe)
    signature = _signature(args, tokens, steps, seed, recipe, manifest)
    ckpt_dir = Path(args.ckpt or str(args.out).rstrip("/") + ".ckpt")
    state = _resume_state(ckpt_dir, signature, ctx)
    start_step = 0
    if state is not None:
        state = checkpoint.restore(ckpt_dir, model, optimizer, ctx)
        start_step = state["step"]
        _say(ctx, f"[train] resumed from {ckpt_dir} at step {start_step}")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(ckpt_dir / "metrics.jsonl", start_step) if ctx.main else None

    val = torch.from_numpy(spread_windows(load_split(args.data, "val"), seq_len, recipe["eval_windows"])).to(device)
    train_step = make_train_step(model, optimizer, masks, recipe, device, ctx.sharded)
    autocast = train_step.autocast
    if start_step == 0:
        loss0 = validation_loss(model, val, micro, autocast, ctx)
        if log:
            log.write({"step": 0, "tokens": 0, "val_loss": loss0})

    batches = Batches(stream, window_order(steps * batch_size, seed), batch_size, seq_len, micro, ctx.rank,
                      ctx.world, device, prefetch=recipe["prefetch_batches"])
    t0, losses = time.time(), []
    progress = tqdm(range(start_step, steps), initial=start_step, total=steps, desc=f"train {args.arm}",
                    file=sys.stderr, mininterval=5, disable=not ctx.main)
    try:
        for step in progress:
            lr = lr_at(step, steps, recipe)
            tick = time.time()
            step_loss, grad_norm = train_step(batches.get(step), lr)
            seen = (step + 1) * batch_size * seq_len
            losses.append(distributed.mean(float(step_loss), ctx))       # the step's one host synchronization
            record = {"step": step + 1, "tokens": seen, "loss": losses[-1], "lr": lr,
                      "grad_norm": float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm),
                      "tok_per_s": batch_size * seq_len / max(time.time() - tick, 1e-9)}
            if seen // eval_every > (seen - batch_size * seq_len) // eval_every or step + 1 == steps:
                record["val_loss"] = validation_loss(model, val, micro, autocast, ctx)
            if log:
                log.write(record)
            progress.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}", refresh=False)
            stop = bool(args.stop_after_steps) and step + 1 - start_step >= args.stop_after_steps
            if ((step + 1) % recipe["checkpoint_every"] == 0 or stop) and step + 1 < steps:
                checkpoint.save(ckpt_dir, model, optimizer,
                                {"step": step + 1, "position": seen, "signature": signature}, ctx)
            if stop and step + 1 < steps:
                _say(ctx, f"[train] stopping early after step {step + 1} (--stop-after-steps)")
                return {"stopped_at": step + 1}
    finally:
        batches.close()
    seconds = time.time() - t0
    final = model
    if ctx.sharded:   # gather the full weights (a collective), then rank 0 writes a plain model
        full = distributed.full_model_state(model)
        if not ctx.main:
            torch.distributed.barrier()
            return {}
        with torch.device("meta"):                 # rank 0 holds the gathered copy only, as the parameters
            final = LlamaForCausalLM(model.config)
        final.load_state_dict(full, assign=True)
        rebuild_rotary_(final, "cpu")
    eval_split = None
    if args.eval_split:   # the LR sweep: the final model's loss on the development split (rank 0, one process)
        windows = torch.from_numpy(spread_windows(load_split(args.data, args.eval_split), seq_len,
                                                  cfg["evaluate"]["val_windows"])).to(device)
        eval_split = {"split": args.eval_split, "windows": len(windows),
                      "loss": validation_loss(final.to(device), windows, micro, autocast)}
    meta = finish(args, cfg, final, dense_masks, log, ckpt_dir, signature, seconds, start_step, ctx.world,
                  lr_source, eval_split)
    if ctx.sharded:
        torch.distributed.barrier()
    return meta


def finish(args, cfg, model, masks, log: MetricsLog, ckpt_dir: Path, signature: dict, seconds: float,
           start_step: int, processes: int, lr_source: str = "train.lr", eval_split: dict | None = None) -> dict:
    """Write the trained model, its metrics and train_meta.json into --out; drop the checkpoint."""
    out = Path(args.out)
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    train_losses = [r["loss"] for r in records if "loss" in r]
    tail = train_losses[-max(1, len(train_losses) // 10):]
    save_model(model.cpu(), out, load_tokenizer(Path(args.data) / "tokenizer"), masks)
    shutil.copy(log.path, out / "metrics.jsonl")
    if args.init and (Path(args.init) / "meta.json").exists():
        shutil.copy(Path(args.init) / "meta.json", out / "meta.json")
    meta = {**signature, "run_options": {key: cfg["train"][key] for key in RUN_ONLY_TRAIN_KEYS},
            "tokens_seen": records[-1]["tokens"], "final_train_loss": sum(tail) / len(tail),
            "final_val_loss": next(r["val_loss"] for r in reversed(records) if "val_loss" in r),
            "params": count_params(model, masks), "seconds_this_run": seconds, "resumed_from_step": start_step,
            "processes": processes, "versions": library_versions(), "study": cfg["study"],
            "lr": cfg["train"]["lr"], "lr_from": lr_source}
    if eval_split:
        meta[f"final_{eval_split['split']}_loss"] = eval_split["loss"]
        meta["eval_split"] = eval_split
    write_json(out / "train_meta.json", meta)
    if eval_split and args.eval_out:
        write_json(Path(args.eval_out), {
            "arm": args.arm, "lr": meta["lr"], "lr_from": lr_source, "tokens": signature["tokens"],
            "steps": signature["steps"], "seed": signature["seed"], "init": args.init,
            "eval_split": eval_split["split"], "eval_windows": eval_split["windows"],
            f"{eval_split['split']}_loss": eval_split["loss"], "final_val_loss": meta["final_val_loss"],
            "final_train_loss": meta["final_train_loss"], "model": str(out), "study": cfg["study"]})
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(f"[train] done: {meta['tokens_seen']} tokens, final train loss {meta['final_train_loss']:.4f}, "
          f"val loss {meta['final_val_loss']:.4f}, {seconds:.0f}s", file=sys.stderr)
    return meta


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = doc_parser("python -m pvs.train", __doc__)
    parser.add_argument("--arm", required=True, choices=TRAINER_ARMS,
                        help="which arm of the study this run is (pvs.study.ARMS)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--tokens", help="token budget of this run, e.g. 300k, 1.5M, 50B")
    budget.add_argument("--tokens-from", metavar="JSON",
                        help="read the budget from the 'tokens' of this JSON (setting 3: python -m pvs.train.budget --out)")
    parser.add_argument("--data", required=True, help="prepared data directory (python -m pvs.data)")
    parser.add_argument("--out", required=True, help="output HF model directory")
    parser.add_argument("--init", help="pruned model directory (weights for retrain, shape+mask for scratch)")
    parser.add_argument("--config", help="study config (YAML); defaults of the schema when omitted")
    parser.add_argument("--ckpt", help="checkpoint directory for resuming (default: OUT.ckpt)")
    parser.add_argument("--seed", type=int, help="override the config's seed")
    parser.add_argument("--threads", type=int, help="torch threads (default: threads_per_job)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    lr = parser.add_mutually_exclusive_group()
    lr.add_argument("--lr", type=float, help="peak LR of this run, replacing train.lr")
    lr.add_argument("--lr-from", metavar="JSON",
                    help="read the peak LR from the 'lr' of this JSON (a chosen file: python -m pvs.train.lr_choose)")
    parser.add_argument("--eval-split", choices=["dev"],
                        help="also score the final model on this split (evaluate.val_windows windows): the LR sweep's "
                             "dev loss, in train_meta.json and --eval-out")
    parser.add_argument("--eval-out", metavar="JSON", help="with --eval-split: write its loss, the LR and the budget here")
    parser.add_argument("--stop-after-steps", type=int, help="checkpoint and exit after this many steps (to test resume)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config) if args.config else validate_config({})
    return guarded("python -m pvs.train", (ValueError, FileNotFoundError), train, args, cfg)


if __name__ == "__main__":
    sys.exit(main())
