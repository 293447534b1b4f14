"""What every pruning method shares: calibration windows, the result type, LM loss, layer-input capture, meta.json.

Calibration data are ``calib_windows`` non-overlapping windows of ``calib_seq_len`` tokens drawn from the
calibration split (``calib.bin``) at positions chosen by the seed, so a run is reproducible and the
windows do not depend on the method.

Layer inputs are captured with a forward pre-hook on the decoder layer (``with_kwargs=True``): the hook
stores the hidden states and *every* keyword argument the model passes (position embeddings, masks,
position ids, ...) and stops the forward. Replaying ``layer(hidden, **kwargs)`` therefore keeps working
when transformers changes the decoder-layer signature; no layer is ever replaced by a wrapper module.
"""
from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pvs.data.tokens import load_split

CALIB_SPLIT = "calib"
BATCH_WINDOWS = 8  # windows per forward pass when scoring or capturing (bounds activation memory)
LOGITS_BUDGET = 2 ** 28  # logits elements per loss forward (1 GiB fp32): 1 window of 2048 x 128k vocab
TOKENIZER_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json")


@dataclass
class PruneResult:
    """A pruned model, its masks (param name -> bool, True = kept; None for dense methods) and method facts."""
    model: torch.nn.Module
    masks: dict[str, torch.Tensor] | None = None
    info: dict = field(default_factory=dict)


@dataclass
class LayerInput:
    """One batch of a decoder layer's input: hidden states plus the other arguments the model passed."""
    hidden: torch.Tensor
    args: tuple
    kwargs: dict


class Stopped(Exception):
    """A method that trains stopped early after writing a checkpoint (``stop_after_steps``, to test resume)."""


class _StopForward(Exception):
    """Raised by the capture hook once the first decoder layer's input is recorded."""


def log(message: str) -> None:
    """One line on stderr (through tqdm, so it does not break a progress bar)."""
    tqdm.write(f"[prune] {message}", file=sys.stderr)


def calibration_windows(data_dir: str | os.PathLike, windows: int, seq_len: int, seed: int,
                        at_most: bool = False) -> torch.Tensor:
    """``windows`` distinct non-overlapping windows of ``seq_len`` tokens from the calib split (int64).

    Window slots are drawn without replacement by ``numpy.random.default_rng(seed)`` and kept in file
    order. Raises ValueError naming the numbers when the split is too short, unless ``at_most``: then
    every window the split holds is taken.
    """
    tokens = load_split(data_dir, CALIB_SPLIT)
    available = len(tokens) // seq_len
    if at_most:
        windows = min(windows, available)
    if windows > available or windows < 1:
        raise ValueError(f"calibration needs {windows} windows of {seq_len} tokens, but the {CALIB_SPLIT} split "
                         f"({len(tokens)} tokens) holds only {available}; lower calib_windows or calib_seq_len")
    slots = np.sort(np.random.default_rng(seed).choice(available, size=windows, replace=False))
    rows = [np.asarray(tokens[s * seq_len:(s + 1) * seq_len], dtype=np.int64) for s in slots]
    return torch.from_numpy(np.stack(rows))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a ``LlamaForCausalLM`` (``model.model.layers``)."""
    return model.model.layers


@torch.no_grad()
def lm_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int | None = None) -> float:
    """Mean next-token cross-entropy over every predicted token of ``windows`` (no cache, fp32 logits).

    Batches hold ``batch_size`` windows (default: up to BATCH_WINDOWS, fewer when the logits of a batch
    would exceed LOGITS_BUDGET elements, as with a 128k vocabulary).
    """
    if batch_size is None:
        per_window = windows.shape[1] * model.config.vocab_size
        batch_size = max(1, min(BATCH_WINDOWS, LOGITS_BUDGET // per_window))
    device = model_device(model)
    total, count = 0.0, 0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                   reduction="sum").item()
        count += targets.numel()
    return total / count


@torch.no_grad()
def capture_layer_inputs(model: torch.nn.Module, windows: torch.Tensor,
                         batch_size: int = BATCH_WINDOWS) -> list[LayerInput]:
    """The inputs of the first decoder layer for every batch of ``windows``, via a forward pre-hook.

    The model's own forward builds the embeddings, position embeddings and attention mask; the hook
    records them and aborts the forward, so no later layer runs.
    """
    captured: list[LayerInput] = []

    def hook(module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(LayerInput(hidden.detach(), tuple(args[1:]), kwargs))
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = model_device(model)
    try:
        for batch in windows.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def run_layer(layer: torch.nn.Module, inp: LayerInput) -> torch.Tensor:
    """Replay one captured batch through ``layer``; returns the output hidden states."""
    out = layer(inp.hidden, *inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files of an HF directory (``tokenizer*`` and friends) into ``dst``."""
    copied = []
    for path in sorted(Path(src).iterdir()):
        if path.is_file() and (path.name.startswith("tokenizer") or path.name in TOKENIZER_FILES):
            shutil.copy2(path, Path(dst) / path.name)
            copied.append(path.name)
    return copied


def achieved_ratio(parent_params: dict, child_params: dict) -> float:
    """1 - child non-embedding parameters / parent non-embedding parameters (kept weights for sparse children)."""
    return 1.0 - child_params["non_embedding"] / parent_params["non_embedding"]


def write_meta(out_dir: str | os.PathLike, meta: dict) -> None:
    """Write ``meta.json`` (atomically); call it last, so a directory without it is an interrupted run."""
    from pvs.modeling import write_json
    write_json(Path(out_dir) / "meta.json", meta)
