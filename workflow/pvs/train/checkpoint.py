"""Resumable training checkpoints without pickles: safetensors for tensors, JSON for the rest.

A run's checkpoint directory holds one folder per saved step and a pointer to the newest complete one:
    step-000120/model.safetensors       model state dict
    step-000120/optimizer.safetensors   AdamW moments and step counts, keyed by parameter name
    step-000120/rng.safetensors         torch CPU (and CUDA) RNG states
    step-000120/state.json              step, data position, run signature
    latest                              name of the newest complete step folder (replaced atomically)

A job killed while saving leaves a step folder that ``latest`` does not name yet; the previous checkpoint
stays the one that is resumed. Older step folders are deleted once ``latest`` points past them.
Under FSDP2 (pvs.train.distributed) the tensors are gathered in full and rank 0 writes them, so a checkpoint
looks the same whatever the number of processes that wrote or resume it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"
LATEST = "latest"


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state flattened to {'exp_avg.<param>': t, 'exp_avg_sq.<param>': t, 'step.<param>': t}."""
    tensors = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            tensors[f"{key}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors


def load_optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           tensors: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters():
        state = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if f"{key}.{name}" in tensors:
                value = tensors[f"{key}.{name}"]
                state[key] = value.to(torch.float32) if key == "step" else value.to(p.device, p.dtype)
        if state:
            optimizer.state[p] = state


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save(ckpt_dir: str | os.PathLike, model, optimizer, state: dict, ctx=None) -> None:
    """Write a complete checkpoint for ``state['step']`` and make it the latest (rank 0 when sharded)."""
    if ctx is not None and ctx.sharded:
        from torch import distributed as dist

        from pvs.train import distributed
        model_state, optim = distributed.full_model_state(model), distributed.full_optimizer_tensors(model, optimizer)
        if ctx.main:
            _write(Path(ckpt_dir), model_state, optim, state)
        dist.barrier()
        return
    _write(Path(ckpt_dir), model.state_dict(), optimizer_tensors(model, optimizer), state)


def _write(ckpt_dir: Path, model_state: dict, optim: dict, state: dict) -> None:
    step_dir = ckpt_dir / f"step-{int(state['step']):06d}"
    step_dir.mkdir(parents=True, exist_ok=True)
    parts = {"model.safetensors": model_state, "optimizer.safetensors": optim, "rng.safetensors": rng_tensors()}
    for name, tensors in parts.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(step_dir / name))
    (step_dir / STATE).write_text(json.dumps(state))
    tmp = ckpt_dir / (LATEST + ".tmp")
    tmp.write_text(step_dir.name)
    os.replace(tmp, ckpt_dir / LATEST)
    for old in ckpt_dir.glob("step-*"):
        if old != step_dir:
            shutil.rmtree(old, ignore_errors=True)


def _latest_dir(ckpt_dir: str | os.PathLike) -> Path | None:
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.exists():
        return None
    step_dir = Path(ckpt_dir) / pointer.read_text().strip()
    return step_dir if (step_dir / STATE).exists() else None


def load_state(ckpt_dir: str | os.PathLike) -> dict | None:
    """The state of the latest complete checkpoint in ``ckpt_dir``, or None when there is none."""
    step_dir = _latest_dir(ckpt_dir)
    return None if step_dir is None else json.loads((step_dir / STATE).read_text())


def restore(ckpt_dir: str | os.PathLike, model, optimizer, ctx=None) -> dict:
    """Load model, optimizer and RNG from the latest complete checkpoint; returns its state dict."""
    step_dir = _latest_dir(ckpt_dir)
    if step_dir is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir}")
    if ctx is not None and ctx.sharded:
        from pvs.train import distributed
        read = (lambda name: load_file(str(step_dir / name))) if ctx.main else (lambda name: {})
        distributed.load_full_state(model, optimizer, read("model.safetensors"), read("optimizer.safetensors"))
    else:
        device = str(next(model.parameters()).device)
        model.load_state_dict(load_file(str(step_dir / "model.safetensors"), device=device))
        load_optimizer_tensors(model, optimizer, load_file(str(step_dir / "optimizer.safetensors")))
    restore_rng(load_file(str(step_dir / "rng.safetensors")))
    return json.loads((step_dir / STATE).read_text())
