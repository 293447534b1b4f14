"""Cutting a Llama to a smaller uniform shape: which units survive, folding the mask values, physical slicing.

A :class:`KeepPlan` names the surviving residual channels (one set for the whole model), layers, KV heads,
query heads and MLP neurons (the same counts in every layer, so stock Llama can load the child). It comes
from the learned Sheared-LLaMA masks (top-k by the deterministic gate value) or, as a baseline, from a
seeded random draw. Query heads are listed group by group in the order of the kept KV heads, so
query head j of the child reads KV head j // (Q_T / K_T) exactly as it did in the parent.

Folding (Sheared-LLaMA): the deterministic value of every kept gate is multiplied into the weights where
the mask acted, so the cut child computes what the masked parent computed: hidden z into the embedding
columns, every RMSNorm weight and the ``o_proj`` / ``down_proj`` output rows; layer z into that layer's
``o_proj`` / ``down_proj``; KV-group z into the group's ``v_proj`` rows; per-query-head z into that head's
``o_proj`` input columns; intermediate z into the ``up_proj`` rows.

The child is a fresh ``LlamaForCausalLM`` built from the parent's config with the new sizes (``head_dim``
explicit, per-layer config lists cut) and loaded with the sliced tensors (strict), so every module
attribute (head counts, KV groups, layer indices) is consistent.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from pvs.prune.shapes import parent_shape
from pvs.prune.sheared_masks import ShearingMasks

PER_LAYER_CONFIG_LISTS = ("layer_types",)


@dataclass
class KeepPlan:
    """Indices kept, per parent layer where it applies (rows = parent layers)."""
    hidden: torch.Tensor  # (d_T,)
    layers: list[int]  # parent layer indices kept, ascending
    kv_heads: torch.Tensor  # (L, K_T)
    q_heads: torch.Tensor  # (L, Q_T), grouped by kept KV head
    intermediate: torch.Tensor  # (L, I_T)

    def shape(self, head_dim: int) -> dict:
        return {"hidden_size": len(self.hidden), "intermediate_size": self.intermediate.shape[1],
                "num_hidden_layers": len(self.layers), "num_attention_heads": self.q_heads.shape[1],
                "num_key_value_heads": self.kv_heads.shape[1], "head_dim": head_dim}


def query_heads(kv_keep: torch.Tensor, within_keep: torch.Tensor, group: int) -> torch.Tensor:
    """Parent query-head indices (L, K_T * g_T) from kept KV heads (L, K_T) and kept heads per group (L, K, g_T)."""
    chosen = within_keep.gather(1, kv_keep.unsqueeze(-1).expand(-1, -1, within_keep.shape[-1]))
    return (kv_keep.unsqueeze(-1) * group + chosen).flatten(1)


def _all(rows: int, size: int, device) -> torch.Tensor:
    return torch.arange(size, device=device).expand(rows, size)


def plan_from_masks(masks: ShearingMasks) -> KeepPlan:
    """Top-k of every learned mask (exactly the target count per row); unmasked structures keep everything."""
    p, m = masks.parent, masks.masks
    L, K = p["num_hidden_layers"], p["num_key_value_heads"]
    group = p["num_attention_heads"] // K
    device = next(masks.parameters(), torch.empty(0)).device

    def keep(name, rows, size):
        return m[name].keep_indices() if name in m else _all(rows, size, device)

    kv = keep("kv_group", L, K)
    within = keep("head", L * K, group).reshape(L, K, -1)
    return KeepPlan(hidden=keep("hidden", 1, p["hidden_size"])[0],
                    layers=keep("layer", 1, L)[0].tolist(),
                    kv_heads=kv, q_heads=query_heads(kv, within, group),
                    intermediate=keep("intermediate", L, p["intermediate_size"]))


def random_plan(parent: dict, target: dict, generator: torch.Generator) -> KeepPlan:
    """A uniformly random plan with the target's counts (the baseline Sheared-LLaMA must beat)."""
    def draw(rows, size, k):
        return torch.stack([torch.randperm(size, generator=generator)[:k].sort().values for _ in range(rows)])

    L, K = parent["num_hidden_layers"], parent["num_key_value_heads"]
    group = parent["num_attention_heads"] // K
    k_t = target["num_key_value_heads"]
    kv = draw(L, K, k_t)
    within = draw(L * K, group, target["num_attention_heads"] // k_t).reshape(L, K, -1)
    return KeepPlan(hidden=draw(1, parent["hidden_size"], target["hidden_size"])[0],
                    layers=draw(1, L, target["num_hidden_layers"])[0].tolist(),
                    kv_heads=kv, q_heads=query_heads(kv, within, group),
                    intermediate=draw(L, parent["intermediate_size"], target["intermediate_size"]))


# -------------------------------------------------------------------- folding
def _rows(t: torch.Tensor, z: torch.Tensor) -> None:
    t.mul_(z.to(t.dtype).view(-1, *([1] * (t.ndim - 1))))


@torch.no_grad()
def fold_masks_(model: nn.Module, masks: ShearingMasks) -> None:
    """Multiply the current (deterministic) z of every mask into the weights where it acted, in place."""
    inner, hd = model.model, masks.head_dim
    hidden = masks.hidden_z()
    if hidden is not None:
        inner.embed_tokens.weight.mul_(hidden.to(inner.embed_tokens.weight.dtype))
        inner.norm.weight.mul_(hidden.to(inner.norm.weight.dtype))
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if hidden is not None:
            layer.input_layernorm.weight.mul_(hidden.to(layer.input_layernorm.weight.dtype))
            layer.post_attention_layernorm.weight.mul_(hidden.to(layer.post_attention_layernorm.weight.dtype))
        residual = masks.residual_z(i)
        if residual is not None:
            residual = residual.expand(attn.o_proj.out_features)
            for linear in (attn.o_proj, mlp.down_proj):
                _rows(linear.weight, residual)
                if linear.bias is not None:
                    linear.bias.mul_(residual.to(linear.bias.dtype))
        if "kv_group" in masks.z:
            _rows(attn.v_proj.weight, masks.z["kv_group"][i].repeat_interleave(hd))
            if attn.v_proj.bias is not None:
                attn.v_proj.bias.mul_(masks.z["kv_group"][i].repeat_interleave(hd).to(attn.v_proj.bias.dtype))
        if "head" in masks.z:
            own = masks.z["head"].view(len(inner.layers), -1)[i].repeat_interleave(hd)
            attn.o_proj.weight.mul_(own.to(attn.o_proj.weight.dtype))
        z_int = masks.intermediate_z(i)
        if z_int is not None:
            _rows(mlp.up_proj.weight, z_int)
            if mlp.up_proj.bias is not None:
                mlp.up_proj.bias.mul_(z_int.to(mlp.up_proj.bias.dtype))


# -------------------------------------------------------------------- slicing
def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads.unsqueeze(-1) * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def _take(tensor: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    if rows is not None:
        tensor = tensor.index_select(0, rows.to(tensor.device))
    if cols is not None:
        tensor = tensor.index_select(1, cols.to(tensor.device))
    return tensor.contiguous()


def sliced_state(model: nn.Module, plan: KeepPlan, head_dim: int) -> dict[str, torch.Tensor]:
    """The child's state dict: every tensor of the parent restricted to the kept units."""
    sd, h, out = model.state_dict(), plan.hidden, {}
    out["model.embed_tokens.weight"] = _take(sd["model.embed_tokens.weight"], None, h)
    out["model.norm.weight"] = _take(sd["model.norm.weight"], h, None)
    if "lm_head.weight" in sd:
        out["lm_head.weight"] = _take(sd["lm_head.weight"], None, h)
    for new, old in enumerate(plan.layers):
        src, dst = f"model.layers.{old}.", f"model.layers.{new}."
        q = _head_rows(plan.q_heads[old], head_dim)
        kv = _head_rows(plan.kv_heads[old], head_dim)
        neurons = plan.intermediate[old]
        linears = {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                   "self_attn.o_proj": (h, q), "mlp.gate_proj": (neurons, h), "mlp.up_proj": (neurons, h),
                   "mlp.down_proj": (h, neurons)}
        for name, (rows, cols) in linears.items():
            out[f"{dst}{name}.weight"] = _take(sd[f"{src}{name}.weight"], rows, cols)
            if f"{src}{name}.bias" in sd:
                out[f"{dst}{name}.bias"] = _take(sd[f"{src}{name}.bias"], rows, None)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{dst}{norm}.weight"] = _take(sd[f"{src}{norm}.weight"], h, None)
    return out


def child_config(config, plan: KeepPlan, head_dim: int):
    """A copy of the parent config with the child's sizes, head_dim explicit and per-layer lists cut."""
    cfg = copy.deepcopy(config)
    for key, value in plan.shape(head_dim).items():
        setattr(cfg, key, value)
    for name in PER_LAYER_CONFIG_LISTS:
        values = getattr(cfg, name, None)
        if isinstance(values, (list, tuple)) and len(values) == config.num_hidden_layers:
            setattr(cfg, name, [values[i] for i in plan.layers])
    return cfg


@torch.no_grad()
def cut_model(model: nn.Module, plan: KeepPlan) -> nn.Module:
    """A new stock model of the plan's shape holding the parent's kept weights (same class, device, dtype)."""
    head_dim = parent_shape(model.config)["head_dim"]
    state = sliced_state(model, plan, head_dim)
    param = next(model.parameters())
    with torch.device(param.device):
        child = type(model)(child_config(model.config, plan, head_dim))
    child.load_state_dict(state, strict=True)
    child.to(param.dtype)
    child.generation_config = copy.deepcopy(model.generation_config)
    return child.train(model.training)
