"""Building, saving, loading and measuring the Llama models of the study (stock transformers classes only).

A model directory is a plain Hugging Face checkpoint: ``config.json``, ``model.safetensors``, tokenizer
files, plus for sparse children ``masks.safetensors`` ({parameter name: bool mask}, True = kept).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pvs.jsonio import write_json  # noqa: F401  (re-exported: pvs.modeling.write_json)

MASKS_FILE = "masks.safetensors"


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' fails loudly when no GPU is present."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' was configured but no CUDA GPU is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def llama_config(arch: dict, vocab_size: int, bos_id: int, eos_id: int) -> LlamaConfig:
    """A Llama-3.1-shaped config (GQA, SwiGLU, RMSNorm, RoPE, untied embeddings) from ``parent.arch``."""
    head_dim = arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch["hidden_size"],
        intermediate_size=arch["intermediate_size"],
        num_hidden_layers=arch["num_hidden_layers"],
        num_attention_heads=arch["num_attention_heads"],
        num_key_value_heads=arch["num_key_value_heads"],
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=arch["max_position_embeddings"],
        rms_norm_eps=1e-5,
        rope_theta=arch["rope_theta"],
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


@torch.no_grad()
def init_weights_(model: torch.nn.Module, std: float, generator: torch.Generator | None = None) -> None:
    """Re-initialize every weight: truncated normal for matrices, ones for norms, zeros for biases.

    The truncated normal is the real one (mean 0, ``std`` before truncation, cut at +-2 std, i.e. sampled
    from the normal restricted to [-2 std, 2 std] by inverse-CDF sampling, ``torch.nn.init.trunc_normal_``);
    its standard deviation is 0.8796 std. Values are not clamped, so no entry sits at +-2 std. Every
    tensor is drawn in fp32 on the CPU in parameter order, deterministic given ``generator``; a sharded
    parameter (a DTensor) is filled from the same full draw, so a sharded model gets the same weights
    as one process.
    """
    for name, p in model.named_parameters():
        if p.ndim >= 2:
            tmp = torch.empty(p.shape, dtype=torch.float32)
            torch.nn.init.trunc_normal_(tmp, 0.0, std, -2 * std, 2 * std, generator=generator)
        else:
            tmp = torch.zeros(p.shape) if name.endswith("bias") else torch.ones(p.shape)
        _copy_full_(p, tmp)


def _copy_full_(p: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (unsharded) CPU tensor into ``p``, which may be a sharded DTensor."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(p, DTensor):
        p.copy_(distribute_tensor(full.to(p.device_mesh.device_type), p.device_mesh, p.placements).to(p.dtype))
    else:
        p.copy_(full)


TRAINED_BIASES = ("self_attn.o_proj.bias", "mlp.down_proj.bias")


def freeze_forced_biases_(model: torch.nn.Module) -> list[str]:
    """Freeze every bias but FLAP's compensation biases (o_proj, down_proj); returns the frozen names.

    Stock ``LlamaConfig`` switches biases per block only (``attention_bias`` gives q, k, v and o a bias,
    ``mlp_bias`` gives gate, up and down one), so a FLAP child carries zero q/k/v/gate/up biases that the
    method never set; frozen, they stay exactly zero while the child is retrained.
    """
    frozen = []
    for name, p in model.named_parameters():
        if name.endswith(".bias") and not name.endswith(TRAINED_BIASES):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def new_model(config: LlamaConfig, std: float, seed: int) -> LlamaForCausalLM:
    """A randomly initialized Llama of ``config`` (fp32), deterministic given ``seed``."""
    model = LlamaForCausalLM(config)
    init_weights_(model, std, torch.Generator().manual_seed(seed))
    return model


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """Load a checkpoint directory with the stock Auto class (no remote code)."""
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an HF checkpoint directory (one ``model.safetensors`` or an index of shards), on the CPU."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else \
        ["model.safetensors"]
    state = {}
    for name in files:
        state.update(load_file(str(path / name)))
    return state


@torch.no_grad()
def rebuild_rotary_(model: torch.nn.Module, device: torch.device | str) -> None:
    """Recompute the RoPE buffers (``inv_freq``, not saved in checkpoints) of a model built on the meta
    device, after ``to_empty`` left them uninitialized; every other buffer-free module is untouched."""
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=model.config).to(device)
    leftover = [name for name, _ in model.named_buffers() if "rotary_emb" not in name]
    if leftover:
        raise RuntimeError(f"buffers not rebuilt after a meta-device build: {leftover}")


def load_tokenizer(path: str | os.PathLike):
    return AutoTokenizer.from_pretrained(str(path))


def save_model(model: torch.nn.Module, out_dir: str | os.PathLike, tokenizer=None,
               masks: dict[str, torch.Tensor] | None = None) -> None:
    """Write an HF directory (safetensors) and, for sparse models, the masks next to it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if masks:
        save_masks(masks, out_dir / MASKS_FILE)


def save_masks(masks: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    save_file({k: v.to(torch.bool).contiguous().cpu() for k, v in masks.items()}, str(path))


def load_masks(model_dir: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The masks of a sparse child, or None for dense models."""
    path = Path(model_dir) / MASKS_FILE
    return load_file(str(path)) if path.exists() else None


@torch.no_grad()
def mask_grads_(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Zero the gradients of masked weights in place (sparse arms, before clipping and the optimizer step).

    The clip norm and the logged gradient norm then cover only kept weights, and AdamW's moments of the
    pruned positions stay exactly zero (a zero gradient on a zero weight: decay and update are zero too).
    ``masks`` may be DTensors placed like their (sharded) parameters (pvs.train.distributed.shard_masks).
    """
    if not masks:
        return
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.mul_(mask.to(device=grad.device, dtype=grad.dtype))


@torch.no_grad()
def apply_masks_(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Zero every masked weight in place (called after each optimizer step for sparse arms)."""
    if not masks:
        return
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


def is_block_param(name: str) -> bool:
    """Non-embedding parameters are those of the transformer blocks (``model.layers.*``)."""
    return ".layers." in name


def count_params(model: torch.nn.Module, masks: dict[str, torch.Tensor] | None = None) -> dict[str, int]:
    """Total, block (non-embedding) and embedding+head parameters; with masks, block counts only kept weights."""
    total = block = 0
    for name, p in model.named_parameters():
        n = int(masks[name].sum()) if masks and name in masks else p.numel()
        total += n
        if is_block_param(name):
            block += n
    return {"total": total, "non_embedding": block, "embedding_and_head": total - block}


def shape_of(config) -> dict:
    """The architecture fields that pruning changes, as a plain dict (for meta.json and tables)."""
    keys = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size"]
    return {k: getattr(config, k) for k in keys}


