"""Sheared-LLaMA targeted structured pruning (Xia, Gao, Zeng & Chen, arXiv 2310.06694), on a stock HF Llama.

1. Target: ``solve_configured("sheared_llama", ratio, parent, options)`` gives the child architecture
   (uniform across layers; head_dim kept): the solver's rule, ``prune.match``, or an explicit
   ``prune.sheared_llama.shapes`` override (the paper preset's 8B target at 0.5: hidden 3456, 32 / 8
   heads, MLP 7808).
2. Mask learning: hard-concrete masks over hidden channels, MLP neurons, KV groups / query heads (and
   optionally layers; see :mod:`pvs.prune.sheared_masks`) are applied by forward hooks and learned
   *jointly with the weights* on the LM loss plus the Lagrangian terms, which push each structure's
   expected size to the target (the multipliers are maximized). One AdamW with three groups, as the
   authors': weights (``prune.sheared_llama.lr``), log-alphas (``prune.sheared_llama.mask_lr``), lambdas (``prune.sheared_llama.lambda_lr``,
   ascent); no weight decay; 10 % linear warm-up then cosine to 10 % on every group; gradient clipping 1.0
   on the weights; the Lagrangian target ramps from the parent's size to the target over the first
   ``prune.sheared_llama.lagrangian_warmup`` of the steps. The tokens are windows of the calibration tensor, cycled
   in seeded random order when the budget ``prune.sheared_llama.mask_tokens`` exceeds it (recorded in the info).
3. Binarize and cut: per row keep exactly the target count (top-k by the deterministic gate value),
   fold the kept gate values into the weights and slice a stock Llama of exactly the target shape
   (:mod:`pvs.prune.sheared_cut`).

Under torchrun (an 8B parent: mask learning trains the whole model) the parent is sharded with FSDP2
(``pvs.train.distributed``; bf16 compute when ``train.precision`` is bf16, activation checkpointing when
``train.activation_checkpointing``); each rank reads its share of every step's windows, the masks and
multipliers are replicated with their gradients averaged over ranks, so the update equals one process
reading the whole batch. Rank 0 then gathers the full weights, binarizes, folds and cuts; other ranks
return no model.

``prune_random`` cuts the same target shape with seeded random units and no training (the baseline).
"""
from __future__ import annotations

import itertools
import math
import shutil
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from pvs.train import checkpoint, distributed
from pvs.prune import registry
from pvs.prune.common import PruneResult, Stopped, lm_loss, log, model_device
from pvs.prune.shapes import parent_shape, solve_configured
from pvs.prune.sheared_cut import cut_model, fold_masks_, plan_from_masks, random_plan
from pvs.prune.sheared_masks import ShearingMasks, masked

LR_WARMUP = 0.1  # fraction of steps of linear LR warm-up (authors' recipe)
MIN_LR_RATIO = 0.1  # cosine decays to this fraction of the peak
GRAD_CLIP = 1.0
BETAS, ADAM_EPS = (0.9, 0.95), 1e-8
HISTORY_POINTS = 40  # snapshots kept in info["history"]
REUSE_WARNING = 4  # log a warning when the budget cycles the calibration tokens more often than this


def option(options: dict, key: str):
    """An option of ``prune.sheared_llama`` (defaults: the registry's record)."""
    return registry.option("sheared_llama", options, key)


def target_shape(ratio: float, config, options: dict | None = None) -> dict:
    """The child shape the shape solver assigns Sheared-LLaMA at this ratio (``options``: its job options,
    holding the ``shapes`` override and ``match``)."""
    return solve_configured("sheared_llama", ratio, config, options or {}).shape


# -------------------------------------------------------------------- tokens
def calibration_windows_wanted(options: dict) -> int:
    """Distinct calibration windows that cover ``prune.sheared_llama.mask_tokens`` (the prune CLI caps it at the split)."""
    return max(options["calib_windows"], math.ceil(option(options, "mask_tokens") / options["calib_seq_len"]))


def mask_windows(calib: torch.Tensor, seq_len: int | None) -> torch.Tensor:
    """The calibration windows cut into windows of ``seq_len`` (never across two calibration windows)."""
    width = calib.shape[1]
    seq_len = seq_len or width
    if not 2 <= seq_len <= width:
        raise ValueError(f"prune.sheared_llama.seq_len {seq_len} must lie in 2..calib_seq_len ({width})")
    per_row = width // seq_len
    return calib[:, :per_row * seq_len].reshape(-1, seq_len)


def batches(windows: torch.Tensor, batch_size: int, steps: int, seed: int):
    """``steps`` batches of ``batch_size`` windows: seeded random order, a new permutation per pass."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(len(windows), generator=generator)])
        yield windows[order[:batch_size]]
        order = order[batch_size:]


def lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over LR_WARMUP of the steps, then cosine to MIN_LR_RATIO."""
    warmup = max(1, round(LR_WARMUP * steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


# -------------------------------------------------------------------- mask learning
def build_optimizer(model: torch.nn.Module, masks: ShearingMasks, options: dict) -> torch.optim.AdamW:
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": option(options, "lr")},
        {"params": list(masks.masks.parameters()), "lr": option(options, "mask_lr")},
        {"params": list(masks.lambdas.parameters()), "lr": option(options, "lambda_lr"), "maximize": True},
    ]
    for group in groups:
        group["peak_lr"] = group["lr"]
    return torch.optim.AdamW(groups, betas=BETAS, eps=ADAM_EPS, weight_decay=0.0)


def snapshot(step: int, lm: float, lag: float, masks: ShearingMasks) -> dict:
    return {"step": step, "lm_loss": lm, "lagrangian": lag, "gap": masks.final_gap(),
            "expected": masks.expected_sizes(),
            "lambdas": {k: v.item() for k, v in masks.lambdas.items()}}


def learn_masks(model: torch.nn.Module, masks: ShearingMasks, windows: torch.Tensor, options: dict,
                ctx: distributed.Dist = distributed.Dist()) -> dict:
    """Train weights, masks and multipliers jointly; returns token counts and the history of the gap.

    Sharded (``ctx.world`` > 1): rank r takes windows r, r + world, ... of each step's batch; FSDP2 averages
    the weights' gradients, ``average_grads_`` the masks' and multipliers' (replicated on every rank).
    With ``options["ckpt"]`` a checkpoint (weights, masks, multipliers, AdamW, gate-noise generator, history)
    is written every ``prune.sheared_llama.checkpoint_every`` steps and a re-run resumes from it; ``stop_after_steps``
    checkpoints and raises Stopped (tests)."""
    batch_size, seq_len = option(options, "batch_size"), windows.shape[1]
    if batch_size % ctx.world:
        raise ValueError(f"prune.sheared_llama.batch_size = {batch_size} is not divisible by the {ctx.world} processes")
    steps = max(1, option(options, "mask_tokens") // (batch_size * seq_len))
    warmup = option(options, "lagrangian_warmup")
    seed, device = options.get("seed", 0), model_device(model)
    if ctx.sharded:
        model.reshard()      # after a forward the root holds unsharded tensors; the optimizer needs the shards
    optimizer = build_optimizer(model, masks, options)
    generator = torch.Generator(device=device).manual_seed(seed)     # the same gate noise on every rank
    every = max(1, steps // HISTORY_POINTS)
    history = [snapshot(0, float("nan"), 0.0, masks)]
    trained = torch.nn.ModuleDict({"model": model, "masks": masks})  # one state dict for the checkpoints
    ckpt = Path(options["ckpt"]) if options.get("ckpt") else None
    signature = {"steps": steps, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
                 "windows": int(len(windows)), "target": {k: m.target for k, m in masks.masks.items()}}
    start = 0
    if ckpt is not None and checkpoint.load_state(ckpt) is not None:
        state = checkpoint.restore(ckpt, trained, optimizer, ctx)
        if state["signature"] != signature:
            raise ValueError(f"the mask-learning checkpoint in {ckpt} belongs to another run ({state['signature']} "
                             f"!= {signature}); delete it to start again")
        start, history = state["step"], state["history"]
        generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        log(f"sheared: resumed mask learning at step {start} of {steps} from {ckpt}")
    model.train()
    stream = itertools.islice(enumerate(batches(windows, batch_size, steps, seed)), start, None)
    bar = tqdm(stream, initial=start, total=steps, desc="sheared: mask learning", file=sys.stderr, mininterval=5,
               disable=not ctx.main)
    with masked(model, masks):
        for step, batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = group["peak_lr"] * lr_factor(step, steps)
            batch = batch[ctx.rank::ctx.world].to(device)
            masks.sample_(generator)
            lm = model(input_ids=batch, labels=batch, use_cache=False).loss
            lag = masks.lagrangian(step / steps, warmup)
            (lm + lag).backward()
            distributed.average_grads_(masks.parameters(), ctx)
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], GRAD_CLIP)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            masks.constrain_()
            if (step + 1) % every == 0 or step + 1 == steps:
                history.append(snapshot(step + 1, distributed.mean(lm.item(), ctx), lag.item(), masks))
                bar.set_postfix(lm=f"{history[-1]['lm_loss']:.3f}", gap=f"{history[-1]['gap']:.3f}")
            done = step + 1
            stop = bool(options.get("stop_after_steps")) and done - start >= options["stop_after_steps"]
            due = stop or done % option(options, "checkpoint_every") == 0
            if ckpt is not None and done < steps and due:
                state = {"step": done, "signature": signature, "history": history,
                         "generator": generator.get_state().tolist()}
                checkpoint.save(ckpt, trained, optimizer, state, ctx)
            if stop and done < steps:
                raise Stopped(f"sheared: stopped after step {step + 1} of {steps} (checkpoint in {ckpt})")
    model.eval()
    if ckpt is not None and ctx.main:
        shutil.rmtree(ckpt, ignore_errors=True)
    tokens = steps * batch_size * seq_len
    if tokens > REUSE_WARNING * windows.numel():
        log(f"sheared: warning: {tokens} mask-learning tokens cycled {tokens / windows.numel():.1f} times over "
            f"{windows.numel()} calibration tokens; the weights may overfit them (give more calibration windows)")
    return {"mask_learning_tokens": tokens, "mask_learning_steps": steps,
            "mask_learning_unique_tokens": int(windows.numel()),
            "mask_learning_passes": tokens / windows.numel(), "processes": ctx.world,
            "resumed_from_step": start, "history": history}


# -------------------------------------------------------------------- the method
def describe(masks: ShearingMasks) -> str:
    return ", ".join(f"{name} {tuple(m.log_alpha.shape)} keep {m.target}" for name, m in masks.masks.items())


def shear(model: torch.nn.Module, calib: torch.Tensor, target: dict, options: dict) -> PruneResult:
    """Learn masks toward ``target`` (a shape dict), binarize, fold and cut; the child has exactly ``target``.

    The parent ``model`` is consumed: its weights are trained and folded in place; the child is a new model.
    """
    parent = parent_shape(model.config)
    fewer_layers = target["num_hidden_layers"] < parent["num_hidden_layers"]
    prune_layers = bool(option(options, "prune_layers")) or fewer_layers
    windows = mask_windows(calib, option(options, "seq_len"))
    masks = ShearingMasks(parent, target, prune_layers, device=model_device(model))
    log(f"sheared: {parent} -> {target}; masks: {describe(masks)}")
    ctx = distributed.current()
    if ctx.sharded:
        distributed.shard(model, bf16=options.get("precision") == "bf16",
                          activation_checkpointing=bool(options.get("activation_checkpointing")))
    probe = calib[:options.get("calib_windows", len(calib))]   # the losses below: not the whole mask-learning pool
    parent_loss = lm_loss(model, probe)
    learning = learn_masks(model, masks, windows, options, ctx)
    masks.fix_()
    with masked(model, masks), torch.no_grad():
        masked_loss = lm_loss(model, probe)
    if ctx.sharded:
        model = gathered(model, model_device(model))  # a collective; the full weights on rank 0 only
        if not ctx.main:
            return PruneResult(model=None, masks=None, info={})
    plan = plan_from_masks(masks)
    fold_masks_(model, masks)
    child = cut_model(model, plan).eval()
    child_loss = lm_loss(child, probe)
    log(f"sheared: calib loss parent {parent_loss:.4f}, masked {masked_loss:.4f}, child {child_loss:.4f}; "
        f"{learning['mask_learning_tokens']} mask-learning tokens ({learning['mask_learning_passes']:.1f} passes)")
    info = {"target_shape": target,
            "masked_structures": {name: {"rows": m.log_alpha.shape[0], "size": m.size, "target": m.target}
                                  for name, m in masks.masks.items()},
            "kept": {"hidden": plan.hidden.tolist(), "layers": plan.layers,
                     "kv_heads": plan.kv_heads.tolist(), "q_heads": plan.q_heads.tolist()},
            "parent_calib_loss": parent_loss, "masked_calib_loss": masked_loss, "child_calib_loss": child_loss,
            "options": {key: option(options, key) for key in registry.record("sheared_llama").options}, **learning}
    return PruneResult(model=child, masks=None, info=info)


def gathered(model: torch.nn.Module, device: torch.device) -> torch.nn.Module | None:
    """An unsharded copy of a sharded model on rank 0's ``device`` (None on other ranks); every rank calls it.

    Rank 0 holds one full copy only: the gathered state dict (on its CPU) becomes the parameters of a model
    built on the meta device (``assign=True``), instead of being copied into a freshly initialized one.
    """
    from transformers import AutoModelForCausalLM

    from pvs.modeling import rebuild_rotary_

    state = distributed.full_model_state(model)
    if not distributed.current().main:
        return None
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
    full.load_state_dict(state, assign=True)
    rebuild_rotary_(full, "cpu")
    return full.to(device).eval()


def prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """Sheared-LLaMA to the shape solver's target for ``ratio``."""
    return shear(model, calib, target_shape(ratio, model.config, options), options)


@torch.no_grad()
def prune_random(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict,
                 target: dict | None = None) -> PruneResult:
    """Baseline: the same target shape with seeded random channels, neurons, heads and layers; no training."""
    target = target or target_shape(ratio, model.config, options)
    plan = random_plan(parent_shape(model.config), target, torch.Generator().manual_seed(options.get("seed", 0)))
    child = cut_model(model, plan).eval()
    return PruneResult(model=child, masks=None, info={"target_shape": target, "kept": {"layers": plan.layers},
                                                      "mask_learning_tokens": 0})
