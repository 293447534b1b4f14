"""Data-parallel training with PyTorch FSDP2 (``fully_shard``) under torchrun; a no-op in one process.

    torchrun --standalone --nproc_per_node 8 -m pvs.train --arm retrain --tokens 50B ...   # one node, 8 GPUs
    srun torchrun --nnodes $SLURM_NNODES --nproc_per_node 8 --rdzv-backend c10d ... -m pvs.train ...

What the trainer gets from here:
  * ``setup()``: the process group (NCCL on GPUs, gloo on CPUs) from torchrun's environment;
  * start-up (in the trainer): the model is built on the meta device, ``shard()``-ed, materialized with
    ``to_empty``, then initialized tensor by tensor or loaded with ``load_full_model_state`` (rank 0 reads
    the checkpoint and broadcasts), so no rank holds a full copy of it;
  * ``shard()``: every decoder layer (optionally also the embedding and the norm + head) and then the root
    sharded with ``fully_shard``; with bf16 (GPU, or CPU in tests) the
    parameters are cast to bf16 for compute while the sharded fp32 copies stay the master weights and
    gradients are reduced in fp32; optional activation checkpointing (transformers' per-layer one);
  * ``shard_masks()``: sparse masks as DTensors placed like their parameters, so that the masked weights
    stay exactly zero on every shard;
  * ``full_model_state`` / ``full_optimizer_tensors`` / ``load_full_state``: checkpoints as full
    (unsharded) tensors, gathered to every rank and written by rank 0, so a run resumes with any number
    of processes; ``mean()`` / ``total()``: a number averaged / summed over ranks; ``average_grads_()``: gradients of replicated
    parameters (Sheared-LLaMA's masks and multipliers) averaged over ranks; ``current()``: the joined group.
Each rank reads its share (every world-th window) of each step's global batch; FSDP2 averages the
gradients, so the update equals one process reading the whole batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_preference: str) -> Dist:
    """Join torchrun's process group when WORLD_SIZE > 1; otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_preference != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank)


def current() -> Dist:
    """The process group this process already joined (a single process when none)."""
    if not dist.is_initialized():
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_grads_(params, ctx: Dist) -> None:
    """Average the gradients of replicated (unsharded) parameters over ranks, in place."""
    if not ctx.sharded:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= ctx.world


def teardown(ctx: Dist) -> None:
    if ctx.sharded and dist.is_initialized():
        dist.destroy_process_group()


def shard(model: torch.nn.Module, bf16: bool, activation_checkpointing: bool,
          shard_ends: bool = False) -> torch.nn.Module:
    """FSDP2: each decoder layer is its own unit, then the root (embeddings, final norm, head).

    With ``shard_ends`` (``train.shard_embeddings``) the token embedding and the final norm + LM head are units
    of their own too (torchtitan's layout): the (vocab x hidden) matrices are gathered only around their own
    use instead of with the root for the whole forward and backward; the head is not resharded after the
    forward (its backward follows at once). Tied embeddings stay with the root.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    separate = shard_ends and not getattr(model.config, "tie_word_embeddings", False)
    if separate:
        fully_shard(model.model.embed_tokens, mp_policy=policy)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    if separate:
        fully_shard([model.model.norm, model.lm_head], mp_policy=policy, reshard_after_forward=False)
    fully_shard(model, mp_policy=policy)
    return model


def shard_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> dict | None:
    """Masks as DTensors with their parameter's mesh and placements (dense masks when not sharded)."""
    if not masks:
        return masks
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        p = params[name]
        if isinstance(p, DTensor):
            out[name] = distribute_tensor(mask.to(device=p.device_mesh.device_type, dtype=p.dtype),
                                          p.device_mesh, p.placements)
        else:
            out[name] = mask
    return out


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict on rank 0's CPU, {} elsewhere (a collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options())


def full_optimizer_tensors(model, optimizer) -> dict[str, torch.Tensor]:
    """AdamW state as {'<key>.<param name>': full tensor} (a collective), like pvs.train.checkpoint's format."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    state = get_optimizer_state_dict(model, optimizer, options=_options()).get("state", {})   # {} off rank 0
    return {f"{key}.{name}": (value if torch.is_tensor(value) else torch.tensor(value))
            for name, entry in state.items() for key, value in entry.items()}


def load_full_model_state(model, model_state: dict) -> None:
    """Load full (unsharded) weights, read on rank 0 only ({} elsewhere), into a sharded model: rank 0
    broadcasts each tensor and every rank keeps its shard (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def load_full_state(model, optimizer, model_state: dict, optimizer_tensors: dict) -> None:
    """Shard full (unsharded) model and AdamW tensors, read on rank 0 only ({} elsewhere), into a sharded
    model and its optimizer: rank 0 broadcasts, so no other rank holds a full copy in memory."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)
    template = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, model_state, options=options)
    state = {}
    for name, _ in model.named_parameters():
        entry = {key: optimizer_tensors[f"{key}.{name}"] for key in ("step", "exp_avg", "exp_avg_sq")
                 if f"{key}.{name}" in optimizer_tensors}
        if entry:
            state[name] = entry
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": template["param_groups"]},
                             options=options)


def total(value: float, ctx: Dist) -> float:
    """``value`` summed over ranks, in float64 (itself in one process)."""
    if not ctx.sharded:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def mean(value: float, ctx: Dist) -> float:
    """``value`` averaged over ranks (itself in one process)."""
    return total(value, ctx) / ctx.world
