"""FLAP (An, Zhao, Yu, Tang & Wang, arXiv 2312.11983): fluctuation-based structured pruning with bias compensation.

The child shape (KV groups and MLP width, the same in every layer; hidden size kept) comes from the
shape solver (:func:`pvs.prune.shapes.solve_configured`: the rule, ``prune.match``, or an explicit
``prune.flap.shapes`` override). One forward pass of the calibration windows
through the *unpruned* parent, with forward pre-hooks on every ``o_proj`` and ``down_proj``, gathers
per input channel the mean and the (unbiased) variance over all calibration tokens, as the reference
does before cutting anything.

* **WIFV score** of input channel j of a linear W: Var_tokens(x_j) * ||W[:, j]||^2. For ``down_proj`` a
  channel is an MLP neuron. For ``o_proj`` the per-channel score is **squared first, then summed** over
  the channels of one KV group (its query heads x head_dim): group g scores sum_{j in g} (Var(x_j) *
  ||W[:, j]||^2)^2. This is the reference's line in CASIA-IVA-Lab/FLAP ``lib/prune.py``, ``prune_flap``:
  ``W_metric = metrics[args.metrics](wrapped_layers, subset, name) ** 2`` for ``self_attn.o_proj`` (the
  MLP's metric is not squared), followed for uniform layers (UL-UM) by ``W_metric.reshape(-1, 128).sum(dim=1)``;
  the authors' GQA patch (Zephyr271828/llm-pruning-collection-fork ``pruning/FLAP/lib/prune.py``) reshapes
  by ``head_dim * gqa_groups`` instead, i.e. per KV group, as here. GQA is kept by removing a KV head
  together with all of its query heads. (For its adaptive AL-AM structure the reference standardizes the
  squared channel scores and averages them per head; with uniform per-layer counts, as here, the ranking
  within a layer is the UL-UM one.)
* **Standardization**: per layer and per structure (attention groups / MLP neurons) the scores become
  (s - mean) / std, the paper's normalization that makes scores comparable across layers and structures
  (a single score, or equal scores, standardize to 0). The per-layer counts are uniform here (stock
  Llama needs one shape for every layer), so selection is the top-k of the standardized scores in each
  layer; the standardized scores are also reported.
* **Bias compensation**: the removed channels are replaced by their calibration mean: W[:, removed] @
  mean(x[removed]) is added to the output bias of ``o_proj`` / ``down_proj``. Stock Llama has biases
  only through config flags, so the child gets ``attention_bias=True`` (q, k, v biases zero) and
  ``mlp_bias=True`` (gate, up biases zero); it reloads with ``AutoModelForCausalLM``. With
  ``prune.flap.bias_compensation: false`` nothing is added and no bias exists (the baseline).

``prune_random`` keeps the same shape (and compensation) with KV groups and neurons drawn from the seed:
the baseline against which the WIFV choice is tested.
"""
from __future__ import annotations

import torch

from pvs.prune import registry
from pvs.prune.common import PruneResult, decoder_layers, lm_loss, log
from pvs.prune.shapes import solution_info, solve_configured
from pvs.prune.structured import (add_to_bias_, calibration_forward, head_dim_of, random_subset, set_shape_, sorted_top,
                                  take_linear_)

def option(options: dict, key: str):
    """An option of ``prune.flap`` (defaults: the registry's record)."""
    return registry.option("flap", options, key)


# ---------------------------------------------------------------- statistics of a linear's input
class InputStats:
    """Forward pre-hook: per input channel, running sum and sum of squares over every token (float64)."""

    def __init__(self):
        self.sum = self.sumsq = None
        self.tokens = 0

    def __call__(self, module, inputs) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
        s, sq = x.sum(0), x.pow(2).sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.tokens += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sum / self.tokens

    def variance(self) -> torch.Tensor:
        """Unbiased variance over tokens (clamped at 0 against rounding)."""
        return ((self.sumsq - self.sum.pow(2) / self.tokens) / max(self.tokens - 1, 1)).clamp_min(0)


@torch.no_grad()
def input_statistics(model: torch.nn.Module, calib: torch.Tensor) -> list[dict[str, InputStats]]:
    """Per layer, {'o_proj': stats, 'down_proj': stats} of the parent's inputs on ``calib``."""
    stats = [{"o_proj": InputStats(), "down_proj": InputStats()} for _ in decoder_layers(model)]
    handles = []
    for layer, layer_stats in zip(decoder_layers(model), stats):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(layer_stats["o_proj"]))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(layer_stats["down_proj"]))
    try:
        calibration_forward(model, calib)
    finally:
        for handle in handles:
            handle.remove()
    return stats


# ---------------------------------------------------------------- scores
def wifv(variance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted input feature variance per input channel: Var(x_j) * ||W[:, j]||^2."""
    return variance * weight.float().pow(2).sum(0).double()


def group_scores(channel_scores: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Per KV group, the sum of the *squared* o_proj channel scores over its query heads' head_dim channels
    (contiguous): the reference squares the WIFV of each channel before summing (see the module docstring)."""
    return channel_scores.pow(2).reshape(kv_heads, -1).sum(1)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std along the last dim (per layer); 0 where the std is 0 (one unit, or all equal)."""
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, keepdim=True) if scores.shape[-1] > 1 else torch.zeros_like(mean)
    return torch.where(std > 0, (scores - mean) / std.clamp_min(1e-300), torch.zeros_like(scores))


def layer_scores(model: torch.nn.Module, stats: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardized (L, K) KV-group scores and (L, I) MLP-neuron scores."""
    kv_heads = model.config.num_key_value_heads
    groups, neurons = [], []
    for layer, layer_stats in zip(decoder_layers(model), stats):
        o = wifv(layer_stats["o_proj"].variance(), layer.self_attn.o_proj.weight)
        groups.append(group_scores(o, kv_heads))
        neurons.append(wifv(layer_stats["down_proj"].variance(), layer.mlp.down_proj.weight))
    return standardize(torch.stack(groups)), standardize(torch.stack(neurons))


# ---------------------------------------------------------------- cutting one layer
def group_channels(groups: torch.Tensor, width: int) -> torch.Tensor:
    """Channel indices of the kept groups, each group ``width`` contiguous channels."""
    return (groups[:, None] * width + torch.arange(width, device=groups.device)).flatten()


def _compensation(linear: torch.nn.Linear, stats: InputStats, removed: torch.Tensor) -> torch.Tensor:
    """W[:, removed] @ mean(x[removed]): the removed channels' average contribution to the output."""
    device = linear.weight.device
    removed = removed.to(device)
    return linear.weight[:, removed].double() @ stats.mean().to(device)[removed]


@torch.no_grad()
def cut_layer_(layer: torch.nn.Module, keep_groups: torch.Tensor, keep_neurons: torch.Tensor, stats: dict,
               head_dim: int, queries_per_group: int, compensate: bool) -> None:
    """Keep KV groups ``keep_groups`` and MLP neurons ``keep_neurons`` of one layer, in place."""
    attn, mlp = layer.self_attn, layer.mlp
    q_keep = group_channels(keep_groups, queries_per_group * head_dim)
    kv_keep = group_channels(keep_groups, head_dim)
    q_removed = _complement(q_keep, attn.o_proj.in_features)
    n_removed = _complement(keep_neurons, mlp.down_proj.in_features)
    if compensate:
        attn_bias = _compensation(attn.o_proj, stats["o_proj"], q_removed)
        mlp_bias = _compensation(mlp.down_proj, stats["down_proj"], n_removed)
    take_linear_(attn.q_proj, out_idx=q_keep)
    take_linear_(attn.k_proj, out_idx=kv_keep)
    take_linear_(attn.v_proj, out_idx=kv_keep)
    take_linear_(attn.o_proj, in_idx=q_keep)
    take_linear_(mlp.gate_proj, out_idx=keep_neurons)
    take_linear_(mlp.up_proj, out_idx=keep_neurons)
    take_linear_(mlp.down_proj, in_idx=keep_neurons)
    mlp.intermediate_size = len(keep_neurons)
    if compensate:
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            add_to_bias_(proj)
        add_to_bias_(attn.o_proj, attn_bias)
        add_to_bias_(mlp.down_proj, mlp_bias)


def _complement(keep: torch.Tensor, size: int) -> torch.Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[keep.cpu()] = False
    return mask.nonzero().flatten()


def _check_shape(model: torch.nn.Module, shape: dict) -> int:
    """Queries per KV group (unchanged); ValueError unless the solver kept hidden, layers and head_dim."""
    config = model.config
    per_group = config.num_attention_heads // config.num_key_value_heads
    if (shape["hidden_size"], shape["num_hidden_layers"], shape["head_dim"]) != (
            config.hidden_size, config.num_hidden_layers, head_dim_of(config)) or \
            shape["num_attention_heads"] != shape["num_key_value_heads"] * per_group:
        raise ValueError(f"flap removes whole KV groups and MLP neurons only, but the solver asked for {shape}")
    return per_group


# ---------------------------------------------------------------- the method
@torch.no_grad()
def prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """Keep the solver's KV groups and MLP neurons with the highest standardized WIFV in every layer."""
    return _prune(model, calib, ratio, options, random_units=False)


@torch.no_grad()
def prune_random(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """The baseline: same shape and bias compensation, KV groups and neurons drawn from ``options['seed']``."""
    return _prune(model, calib, ratio, options, random_units=True)


def _random_rows(rows: int, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.stack([random_subset(size, count, generator) for _ in range(rows)])


def _prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict,
           random_units: bool) -> PruneResult:
    model.eval()
    config = model.config
    solution = solve_configured("flap", ratio, config, options)
    shape = solution.shape
    per_group = _check_shape(model, shape)
    compensate = bool(option(options, "bias_compensation"))
    parent_loss = lm_loss(model, calib)
    stats = input_statistics(model, calib)
    group_score, neuron_score = layer_scores(model, stats)
    keep_groups = sorted_top(group_score, shape["num_key_value_heads"]).cpu()
    keep_neurons = sorted_top(neuron_score, shape["intermediate_size"]).cpu()
    if random_units:
        generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
        keep_groups = _random_rows(*group_score.shape, shape["num_key_value_heads"], generator)
        keep_neurons = _random_rows(*neuron_score.shape, shape["intermediate_size"], generator)
    for layer, groups, neurons, layer_stats in zip(decoder_layers(model), keep_groups, keep_neurons, stats):
        cut_layer_(layer, groups, neurons, layer_stats, head_dim_of(config), per_group, compensate)
    set_shape_(config, {k: shape[k] for k in ("num_attention_heads", "num_key_value_heads",
                                              "intermediate_size", "head_dim")})
    if compensate:
        config.attention_bias = config.mlp_bias = True
    child_loss = lm_loss(model, calib)
    log(f"flap{' (random units)' if random_units else ''}: KV groups {group_score.shape[1]} -> "
        f"{shape['num_key_value_heads']}, MLP {neuron_score.shape[1]} -> {shape['intermediate_size']} per layer, "
        f"bias compensation {compensate}; calib loss {parent_loss:.4f} -> {child_loss:.4f}")
    info = {"shape": shape, "solver": solution_info(solution), "metric": "random" if random_units else "WIFV", "bias_compensation": compensate,
            "calibration_tokens": stats[0]["o_proj"].tokens, "parent_calib_loss": parent_loss,
            "child_calib_loss": child_loss, "kept_kv_groups": keep_groups.tolist(),
            "standardized_group_scores": group_score.tolist()}
    return PruneResult(model=model, masks=None, info=info)
