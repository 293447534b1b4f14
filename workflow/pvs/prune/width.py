"""Minitron width pruning (Muralidharan et al., arXiv 2407.14679): drop hidden channels and MLP neurons.

Attention heads and head_dim are untouched. The child shape (hidden size, MLP width) comes from the
shape solver (:func:`pvs.prune.shapes.solve_configured`: the rule, ``prune.match``, or an explicit
``prune.minitron_width.shapes`` override). Importance is activation-based, from one forward pass of the
calibration windows with forward hooks (no layer is replaced):

* MLP neuron i of layer l: the magnitude of the ``down_proj`` input act(gate(x)) * up(x), channel i;
* hidden channel c: the magnitude of the output of the two per-layer RMSNorms (each layer's
  ``input_layernorm`` and ``post_attention_layernorm``), channel c, summed over those 2L norms. The final
  ``norm`` is not hooked, as in both references (zlab-princeton/llm-pruning-collection
  ``pruning/minitron/prune_width.py``, ``width_prune``: ``LN_hook`` on the two norms of every layer; NVIDIA
  Model-Optimizer ``modelopt/torch/nas/plugins/megatron.py``: the layer norms inside the decoder layers).

Aggregation over tokens, ``prune.minitron_width.aggregation`` as "<batch>_<sequence>": first |x| is reduced
over the sequence of each window, then over the windows (the batch). The default ``l2_mean`` takes the
mean of |x| over each window's tokens and the L2 norm of those means over the windows,
``sqrt(sum_b (mean_s |x_bsc|)^2)``: in the paper's ablation of (batch, sequence) aggregation metrics,
L2 over the batch with mean over the sequence is the combination it recommends for width pruning.
``mean_mean`` and ``mean_l2`` (mean over windows of the sequence L2 norm) are available for comparison.
Aggregating per window and accumulating sums (of squares) makes the result independent of how windows
are batched.

``sum_l2sq`` reproduces the authors' collection exactly (``prune_width.py``, ``ffn_hook`` and ``LN_hook``):
on a batch-first (batch, seq, channels) HF tensor it takes ``x.abs().mean(dim=0)`` (the mean over the batch,
which is one window: its scorer ``get_ppl`` runs ``batch_size=1``), then ``.pow(2).sum(dim=0)`` (the sum of
squares over the sequence), and adds it up over forwards without a square root. Per channel that is
``sum_b sum_s x_bsc^2``: the squared L2 norm over each window's tokens, summed over the windows (and, for
hidden channels, over the 2L norms). Model-Optimizer runs the same two lines on Megatron's sequence-first
(seq, batch, channels) tensors, so there they mean the sequence and sum squares over the batch: that is
``l2_mean`` (up to its final square root, which does not change the ranking of one structure). The collection
hooks fp16 activations; we accumulate in float64 (a deviation in rounding only).

The hidden channels kept are shared by every layer (the residual stream is one space); the MLP
neurons kept are chosen per layer. Slicing: embedding columns, every RMSNorm weight, q/k/v and
gate/up input columns, o_proj and down_proj output rows, gate/up output rows and down_proj input
columns for the neurons, LM head input columns; the config gets the new hidden_size /
intermediate_size with ``head_dim`` explicit. ``prune_random`` keeps the same shape with channels and
neurons drawn from the seed (the baseline of the tests).
"""
from __future__ import annotations

import torch

from pvs.prune import registry
from pvs.prune.common import PruneResult, decoder_layers, lm_loss, log
from pvs.prune.shapes import solution_info, solve_configured
from pvs.prune.structured import (calibration_forward, head_dim_of, random_subset, set_shape_, sorted_top,
                                  take_embedding_columns_, take_linear_, take_norm_)

AGGREGATIONS = ("l2_mean", "mean_mean", "mean_l2", "sum_l2sq")
DEFAULT_AGGREGATION = "l2_mean"
def option(options: dict, key: str):
    """An option of ``prune.minitron_width`` (defaults: the registry's record)."""
    return registry.option("minitron_width", options, key)


# ---------------------------------------------------------------- aggregation
def parse_aggregation(name: str) -> tuple[str, str]:
    """'l2_mean' -> ('l2', 'mean') = (over the batch, over the sequence); ValueError naming the choices."""
    if name not in AGGREGATIONS:
        raise ValueError(f"prune.minitron_width.aggregation {name!r} unknown (choose from {', '.join(AGGREGATIONS)})")
    batch, seq = name.split("_")
    return batch, seq


def reduce_sequence(x: torch.Tensor, how: str) -> torch.Tensor:
    """(windows, tokens, channels) -> (windows, channels): mean, L2 norm or squared L2 norm of |x| over the tokens."""
    x = x.detach().double().abs()
    if how == "l2sq":
        return x.pow(2).sum(dim=1)
    return x.mean(dim=1) if how == "mean" else x.norm(dim=1)


class ChannelImportance:
    """Streaming (batch, sequence) aggregation of |activation| per channel, fed one batch of windows at a time."""

    def __init__(self, aggregation: str = DEFAULT_AGGREGATION):
        self.batch, self.seq = parse_aggregation(aggregation)
        self.total: torch.Tensor | None = None
        self.windows = 0

    def add(self, x: torch.Tensor) -> None:
        per_window = reduce_sequence(x, self.seq)
        part = per_window.pow(2).sum(0) if self.batch == "l2" else per_window.sum(0)
        self.total = part if self.total is None else self.total + part
        self.windows += per_window.shape[0]

    def value(self) -> torch.Tensor:
        if self.batch == "l2":
            return self.total.sqrt()
        return self.total if self.batch == "sum" else self.total / self.windows


def aggregate(x: torch.Tensor, aggregation: str = DEFAULT_AGGREGATION) -> torch.Tensor:
    """The importance of each channel of a whole (windows, tokens, channels) activation tensor."""
    importance = ChannelImportance(aggregation)
    importance.add(x)
    return importance.value()


# ---------------------------------------------------------------- importance from calibration data
def _output_hook(importance: ChannelImportance):
    def hook(module, inputs, output):
        importance.add(output)
    return hook


def _input_hook(importance: ChannelImportance):
    def hook(module, inputs):
        importance.add(inputs[0])
    return hook


def norms_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The hooked RMSNorms: input and post-attention norm of each layer (not the final norm, as the references)."""
    return [n for layer in decoder_layers(model) for n in (layer.input_layernorm, layer.post_attention_layernorm)]


@torch.no_grad()
def activation_importance(model: torch.nn.Module, calib: torch.Tensor,
                          aggregation: str = DEFAULT_AGGREGATION) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden channel importance (H,), MLP neuron importance (L, I)) from one pass over ``calib``."""
    norm_scores = [ChannelImportance(aggregation) for _ in norms_of(model)]
    neuron_scores = [ChannelImportance(aggregation) for _ in decoder_layers(model)]
    handles = [n.register_forward_hook(_output_hook(s)) for n, s in zip(norms_of(model), norm_scores)]
    handles += [layer.mlp.down_proj.register_forward_pre_hook(_input_hook(s))
                for layer, s in zip(decoder_layers(model), neuron_scores)]
    try:
        calibration_forward(model, calib)
    finally:
        for handle in handles:
            handle.remove()
    hidden = torch.stack([s.value() for s in norm_scores]).sum(0)
    return hidden, torch.stack([s.value() for s in neuron_scores])


# ---------------------------------------------------------------- slicing
@torch.no_grad()
def slice_width_(model: torch.nn.Module, hidden_keep: torch.Tensor, neuron_keep: torch.Tensor) -> torch.nn.Module:
    """Cut the model in place to hidden channels ``hidden_keep`` (H',) and MLP neurons ``neuron_keep`` (L, I')."""
    config = model.config
    head_dim = head_dim_of(config)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    take_embedding_columns_(model.model.embed_tokens, hidden_keep)
    for layer, neurons in zip(decoder_layers(model), neuron_keep):
        attn, mlp = layer.self_attn, layer.mlp
        take_norm_(layer.input_layernorm, hidden_keep)
        take_norm_(layer.post_attention_layernorm, hidden_keep)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            take_linear_(proj, in_idx=hidden_keep)
        take_linear_(attn.o_proj, out_idx=hidden_keep)
        take_linear_(mlp.gate_proj, out_idx=neurons, in_idx=hidden_keep)
        take_linear_(mlp.up_proj, out_idx=neurons, in_idx=hidden_keep)
        take_linear_(mlp.down_proj, out_idx=hidden_keep, in_idx=neurons)
        mlp.hidden_size, mlp.intermediate_size = len(hidden_keep), neuron_keep.shape[1]
    take_norm_(model.model.norm, hidden_keep)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        take_linear_(model.lm_head, in_idx=hidden_keep)
    set_shape_(config, {"hidden_size": len(hidden_keep), "intermediate_size": neuron_keep.shape[1],
                        "head_dim": head_dim})
    return model


def _check_heads_kept(model: torch.nn.Module, shape: dict) -> None:
    config = model.config
    if (shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"],
            shape["num_hidden_layers"]) != (config.num_attention_heads, config.num_key_value_heads,
                                            head_dim_of(config), config.num_hidden_layers):
        raise ValueError(f"minitron_width keeps heads and layers, but the solver asked for {shape}")


# ---------------------------------------------------------------- the methods
def _kept_fraction(scores: torch.Tensor, keep: torch.Tensor) -> float:
    """Share of the total importance that the kept channels carry."""
    return float(scores[keep].sum() / scores.sum())


@torch.no_grad()
def prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """Keep the solver's number of hidden channels (shared) and MLP neurons (per layer) with the top importance."""
    model.eval()
    solution = solve_configured("minitron_width", ratio, model.config, options)
    shape = solution.shape
    _check_heads_kept(model, shape)
    aggregation = option(options, "aggregation")
    parent_loss = lm_loss(model, calib)
    hidden_scores, neuron_scores = activation_importance(model, calib, aggregation)
    hidden_scores, neuron_scores = hidden_scores.cpu(), neuron_scores.cpu()
    hidden_keep = sorted_top(hidden_scores, shape["hidden_size"])
    neuron_keep = sorted_top(neuron_scores, shape["intermediate_size"])
    slice_width_(model, hidden_keep, neuron_keep)
    child_loss = lm_loss(model, calib)
    log(f"minitron_width: hidden {len(hidden_scores)} -> {shape['hidden_size']}, MLP {neuron_scores.shape[1]} -> "
        f"{shape['intermediate_size']}; calib loss {parent_loss:.4f} -> {child_loss:.4f}")
    info = {"shape": shape, "solver": solution_info(solution), "aggregation": aggregation, "parent_calib_loss": parent_loss,
            "child_calib_loss": child_loss, "kept_hidden": hidden_keep.tolist(),
            "hidden_importance_kept": _kept_fraction(hidden_scores, hidden_keep),
            "neuron_importance_kept": [_kept_fraction(s, k) for s, k in zip(neuron_scores, neuron_keep)]}
    return PruneResult(model=model, masks=None, info=info)


@torch.no_grad()
def prune_random(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """The same shape as :func:`prune`, hidden channels and per-layer neurons drawn from ``options['seed']``."""
    model.eval()
    shape = solve_configured("minitron_width", ratio, model.config, options).shape
    _check_heads_kept(model, shape)
    generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
    config = model.config
    hidden_keep = random_subset(config.hidden_size, shape["hidden_size"], generator)
    neuron_keep = torch.stack([random_subset(config.intermediate_size, shape["intermediate_size"], generator)
                               for _ in range(config.num_hidden_layers)])
    slice_width_(model, hidden_keep, neuron_keep)
    info = {"shape": shape, "random": True, "kept_hidden": hidden_keep.tolist()}
    return PruneResult(model=model, masks=None, info=info)
