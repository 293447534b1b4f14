"""Helpers shared by the structured methods (Minitron width, FLAP): calibration forwards and in-place slicing.

``calibration_forward`` runs the model's own forward over the calibration windows in batches, with
whatever forward hooks the caller has registered, and stops right after the final norm (the LM head's
logits are never needed for importance scores, and with a 128k vocabulary they are the most expensive
part). The ``take_*`` helpers cut a stock module in place to a subset of its rows / columns and keep the
module's size attributes in step, so the model stays a stock ``LlamaForCausalLM`` that saves and reloads
with ``AutoModelForCausalLM`` once the config carries the new sizes.
"""
from __future__ import annotations

import torch
from torch import nn

from pvs.prune.common import BATCH_WINDOWS, model_device


class _StopAfterNorm(Exception):
    """Raised by the hook on the final norm: nothing after it is needed."""


def _stop(module, inputs, output):
    raise _StopAfterNorm


@torch.no_grad()
def calibration_forward(model: nn.Module, calib: torch.Tensor, batch_size: int = BATCH_WINDOWS) -> int:
    """Run every batch of ``calib`` through the model up to its final norm (no cache); returns tokens seen.

    The caller's hooks fire as in a normal forward; the stop hook is registered last, so a caller's own
    hook on the final norm still runs first.
    """
    handle = model.model.norm.register_forward_hook(_stop)
    device = model_device(model)
    try:
        for batch in calib.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopAfterNorm:
                pass
    finally:
        handle.remove()
    return int(calib.numel())


def _param(tensor: torch.Tensor, like: nn.Parameter) -> nn.Parameter:
    return nn.Parameter(tensor.contiguous(), requires_grad=like.requires_grad)


@torch.no_grad()
def take_linear_(linear: nn.Linear, out_idx: torch.Tensor | None = None,
                 in_idx: torch.Tensor | None = None) -> None:
    """Keep the output rows ``out_idx`` and input columns ``in_idx`` of ``linear`` (None = all), in place."""
    weight = linear.weight
    if out_idx is not None:
        weight = weight.index_select(0, out_idx.to(weight.device))
        if linear.bias is not None:
            linear.bias = _param(linear.bias.index_select(0, out_idx.to(weight.device)), linear.bias)
        linear.out_features = len(out_idx)
    if in_idx is not None:
        weight = weight.index_select(1, in_idx.to(weight.device))
        linear.in_features = len(in_idx)
    linear.weight = _param(weight, linear.weight)


@torch.no_grad()
def take_norm_(norm: nn.Module, idx: torch.Tensor) -> None:
    """Keep the channels ``idx`` of an RMSNorm weight, in place."""
    norm.weight = _param(norm.weight.index_select(0, idx.to(norm.weight.device)), norm.weight)


@torch.no_grad()
def take_embedding_columns_(embedding: nn.Embedding, idx: torch.Tensor) -> None:
    """Keep the hidden channels ``idx`` of a token embedding, in place."""
    weight = embedding.weight
    embedding.weight = _param(weight.index_select(1, idx.to(weight.device)), weight)
    embedding.embedding_dim = len(idx)


@torch.no_grad()
def add_to_bias_(linear: nn.Linear, delta: torch.Tensor | None = None) -> None:
    """Give ``linear`` a bias if it has none (zeros), then add ``delta`` to it, in place."""
    weight = linear.weight
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device),
                                   requires_grad=weight.requires_grad)
    if delta is not None:
        linear.bias.add_(delta.to(linear.bias.dtype).to(linear.bias.device))


def sorted_top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores along the last dim, in ascending index order."""
    return torch.topk(scores, count, dim=-1).indices.sort(dim=-1).values


def random_subset(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices of ``range(size)`` chosen by ``generator``, in ascending order."""
    return torch.randperm(size, generator=generator)[:count].sort().values


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def set_shape_(config, shape: dict) -> None:
    """Write the solver's shape into ``config`` (head_dim explicit)."""
    for key, value in shape.items():
        setattr(config, key, int(value))
