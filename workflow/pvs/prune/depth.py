"""Minitron depth pruning (arXiv 2407.14679, 2408.11796): drop the contiguous block of layers that hurts least.

For a ratio r on a parent of L layers, k = round(r * L) consecutive layers are removed (1 <= k < L), or
the count the shape solver gives under ``prune.match: total`` or an explicit ``prune.minitron_depth.shapes``
override (:func:`pvs.prune.shapes.solve_configured`; the paper preset's 8B child at 0.5 keeps 16 of 32).
Every start position s in 0..L-k is scored by the language-modelling loss, on the calibration windows,
of the parent without layers s..s+k-1 (evaluated by the model's own forward with those layers left out);
the block with the lowest loss is removed for good. The remaining layers are re-indexed (each
attention's ``layer_idx``, which addresses the KV cache) and the config's layer count and per-layer
lists are cut to match, so the child saves, reloads and generates with a cache like any stock Llama.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager

import torch
from tqdm import tqdm

from pvs.prune.common import PruneResult, decoder_layers, lm_loss, log
from pvs.prune.shapes import solution_info, solve_configured

PER_LAYER_CONFIG_LISTS = ("layer_types",)  # config fields holding one entry per decoder layer


def layers_to_remove(ratio: float, num_layers: int) -> int:
    """k = round(ratio * L); raises ValueError naming the ratio unless 1 <= k < L."""
    k = round(ratio * num_layers)
    if not 1 <= k < num_layers:
        raise ValueError(f"minitron_depth: ratio {ratio!r} removes {k} of {num_layers} layers; "
                         f"need 1 <= round(ratio * layers) < {num_layers}")
    return k


@contextmanager
def without_block(model: torch.nn.Module, start: int, k: int):
    """Temporarily leave layers start..start+k-1 out of the forward (no cache; nothing is copied)."""
    inner, config = model.model, model.config
    layers, count = inner.layers, config.num_hidden_layers
    inner.layers = torch.nn.ModuleList([layer for i, layer in enumerate(layers) if not start <= i < start + k])
    config.num_hidden_layers = len(inner.layers)
    try:
        yield model
    finally:
        inner.layers = layers
        config.num_hidden_layers = count


def score_blocks(model: torch.nn.Module, calib: torch.Tensor, k: int) -> list[dict]:
    """Calibration LM loss of the model without each contiguous block of k layers, for every start."""
    num_layers = len(decoder_layers(model))
    scores = []
    for start in tqdm(range(num_layers - k + 1), desc=f"depth: score blocks of {k}", file=sys.stderr):
        with without_block(model, start, k):
            scores.append({"start": start, "end": start + k, "loss": lm_loss(model, calib)})
    return scores


def remove_block(model: torch.nn.Module, start: int, k: int) -> torch.nn.Module:
    """Physically drop layers start..start+k-1, re-index the rest and update the config (in place)."""
    config = model.config
    num_layers = config.num_hidden_layers
    kept = [layer for i, layer in enumerate(decoder_layers(model)) if not start <= i < start + k]
    model.model.layers = torch.nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    config.num_hidden_layers = len(kept)
    for name in PER_LAYER_CONFIG_LISTS:
        values = getattr(config, name, None)
        if isinstance(values, (list, tuple)) and len(values) == num_layers:
            setattr(config, name, [v for i, v in enumerate(values) if not start <= i < start + k])
    return model


@torch.no_grad()
def prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """Remove the contiguous block of round(ratio * L) layers with the lowest calibration loss."""
    model.eval()
    num_layers = model.config.num_hidden_layers
    configured = options.get("shapes") or options.get("match", "non_embedding") != "non_embedding"
    solution = solve_configured("minitron_depth", ratio, model.config, options) if configured else None
    k = num_layers - solution.shape["num_hidden_layers"] if solution else layers_to_remove(ratio, num_layers)
    parent_loss = lm_loss(model, calib)
    scores = score_blocks(model, calib, k)
    best = min(scores, key=lambda s: s["loss"])
    log(f"depth: parent calib loss {parent_loss:.4f}; removing layers {best['start']}..{best['end'] - 1} "
        f"(loss {best['loss']:.4f}) of {num_layers}")
    remove_block(model, best["start"], k)
    info = {"solver": solution_info(solution) if solution else {"match": "non_embedding", "source": "rule"},
            "layers_removed": k, "removed_start": best["start"], "removed_end": best["end"],
            "removed_layers": list(range(best["start"], best["end"])), "parent_calib_loss": parent_loss,
            "child_calib_loss": best["loss"], "candidates": scores}
    return PruneResult(model=model, masks=None, info=info)
