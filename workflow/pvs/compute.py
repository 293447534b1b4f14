"""Compute accounting: training FLOPs per run, whole-pipeline tokens and FLOPs, and setting 3's budget.

The setting-3 budget file of a run is written by ``python -m pvs.train.budget`` (the train stage's CLI).

Convention (stated in every table that shows FLOPs):
  * FLOPs parameters N = non-embedding (transformer-block) parameters + the LM head (vocab x hidden,
    counted once even when tied to the embedding; embedding lookups cost nothing). For a sparse model
    the block parameters are the kept (non-zero) weights, as in the study's pruning ratio, so a sparse
    and a structured child at the same ratio have the same N; dense hardware would spend the dense FLOPs.
  * Training FLOPs = 6 N D for D training tokens (forward + backward, attention's quadratic term ignored).
  * Pruning FLOPs = 2 N_parent T_calib x passes (forward passes over the calibration tokens; Minitron-Depth
    scores every candidate block with one more pass each) + 6 N_parent T_mask (Sheared-LLaMA's mask
    learning trains through the parent). SparseGPT's Hessian algebra is ignored (small next to the passes).
  * Pipeline of P-R_N = the parent's pretraining (6 N_parent P; also for an imported parent, with P =
    parent.tokens) + pruning + retraining (6 N_child N). Its tokens = P + T_calib + T_mask + N.
  * Parameters of a shape (``non_embedding_params``, used by the shape solver, pvs.resources and the
    regime table) count every decoder-layer weight, norm and bias; they equal
    :func:`pvs.modeling.count_params` of the built model (tested).
  * Setting 3, S_F: the child's shape trained from scratch on D = pipeline FLOPs / (6 N_S_F) tokens, N_S_F
    the parameters of the model it trains (the child's shape without FLAP's compensation biases, which a
    scratch twin does not have), so scratch gets the compute of the whole pruning pipeline.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


# ---------------------------------------------------------------- parameters of a shape (the one count)
def layer_params(hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                 attention_bias: bool = False, mlp_bias: bool = False) -> float:
    """Parameters of one Llama decoder layer (works for fractional sizes too, for the bisection)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = hidden * (2 * q + 2 * kv) + (q + 2 * kv + hidden if attention_bias else 0)
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if mlp_bias else 0)
    return attention + mlp + 2 * hidden  # + input_layernorm and post_attention_layernorm


def non_embedding_params(shape: dict, attention_bias: bool = False, mlp_bias: bool = False) -> int:
    """Exact parameter count of all decoder layers of ``shape`` (what :func:`pvs.modeling.count_params` calls non-embedding)."""
    per_layer = layer_params(shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"],
                             shape["num_key_value_heads"], shape["head_dim"], attention_bias, mlp_bias)
    return int(shape["num_hidden_layers"] * per_layer)


CONVENTION = ("FLOPs = 6·N·D, N = non-embedding (non-zero for sparse) + LM-head parameters; pipeline = "
              "parent pretraining + pruning passes + retraining")


def flops_params(shape: dict, non_embedding: int) -> int:
    """N of 6·N·D: block parameters (non-zero ones for sparse models) plus the LM head."""
    return int(non_embedding) + int(shape["vocab_size"]) * int(shape["hidden_size"])


def train_flops(params: int, tokens: int) -> float:
    return 6.0 * params * tokens


def prune_cost(meta: dict) -> dict:
    """Tokens and FLOPs that pruning the parent consumed, from the prune stage's meta.json."""
    n_parent = flops_params(meta["shape"]["parent"], meta["params"]["parent"]["non_embedding"])
    calib = int(meta["calibration"]["tokens"])
    mask = int(meta.get("mask_learning_tokens") or 0)
    passes = 1 + len((meta.get("info") or {}).get("candidates") or [])
    return {"tokens": calib + mask, "flops": 2.0 * n_parent * calib * passes + 6.0 * n_parent * mask,
            "calibration_tokens": calib, "mask_learning_tokens": mask, "forward_passes": passes}


def child_flops_params(meta: dict) -> int:
    """6·N·D's N of the pruned child in a prune meta.json."""
    return flops_params(meta["shape"]["child"], meta["params"]["child"]["non_embedding"])


def pipeline(meta: dict, parent_tokens: int, budget: int) -> dict:
    """Tokens and FLOPs of the whole P-R_N pipeline: parent pretraining + pruning + retraining N tokens."""
    n_parent = flops_params(meta["shape"]["parent"], meta["params"]["parent"]["non_embedding"])
    n_child = child_flops_params(meta)
    prune = prune_cost(meta)
    parts = {"parent": train_flops(n_parent, parent_tokens), "prune": prune["flops"],
             "retrain": train_flops(n_child, budget)}
    return {"tokens": parent_tokens + prune["tokens"] + budget, "flops": sum(parts.values()),
            "flops_parts": parts, "parent_params": n_parent, "child_params": n_child, "prune": prune}


def bias_params(config: dict) -> int:
    """Bias parameters of a Llama config.json's decoder layers (FLAP's children carry them; scratch twins
    are built without: pvs.train.trainer)."""
    h, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim") or h // heads
    shape = (h, config["intermediate_size"], heads, kv, d)
    with_biases = layer_params(*shape, bool(config.get("attention_bias")), bool(config.get("mlp_bias")))
    return int(config["num_hidden_layers"] * (with_biases - layer_params(*shape)))


def setting3_tokens(meta: dict, parent_tokens: int, budget: int, twin_params: int | None = None) -> int:
    """Scratch tokens with the FLOPs of the P-R_N pipeline: ceil(pipeline FLOPs / (6 N_S_F)), N_S_F the
    parameters of the model S_F trains (``twin_params``; default the pruned child's)."""
    n = twin_params if twin_params is not None else child_flops_params(meta)
    return math.ceil(pipeline(meta, parent_tokens, budget)["flops"] / (6.0 * n))


def setting3_record(pruned_dir: str | Path, parent_tokens: int, budget: int) -> dict:
    """The budget file of S_F: its tokens, for the model it trains — the child's shape from scratch, which
    has no biases (a FLAP child's compensation biases are not part of its scratch twin)."""
    meta_path = Path(pruned_dir) / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no prune meta.json (run python -m pvs.prune first)")
    meta = json.loads(meta_path.read_text())
    config_path = Path(pruned_dir) / "config.json"
    biases = bias_params(json.loads(config_path.read_text())) if config_path.is_file() else 0
    twin = child_flops_params(meta) - biases
    return {"tokens": setting3_tokens(meta, parent_tokens, budget, twin), "budget": budget,
            "parent_tokens": parent_tokens, "pipeline": pipeline(meta, parent_tokens, budget),
            "scratch_params": twin, "child_bias_params": biases, "convention": CONVENTION,
            "pruned": str(pruned_dir)}
