"""The method registry: name -> where its ``prune`` function lives, imported lazily (keeps `snakemake -n` fast).

Adding a method = one module under ``pvs/prune/`` that defines ``prune(model, calib, ratio, options) ->
PruneResult`` plus one line here. An entry is ``"package.module"`` (its ``prune``) or
``"package.module:function"`` when one module implements several methods (SparseGPT unstructured and
N:M). ``SPARSE`` methods keep the dense shape and save masks; the others change the shape.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

METHODS: dict[str, str] = {
    "minitron_depth": "pvs.prune.depth",
    "sparsegpt": "pvs.prune.sparsegpt",
    "sparsegpt_nm": "pvs.prune.sparsegpt:prune_nm",
    "minitron_width": "pvs.prune.width",
    "flap": "pvs.prune.flap",
    "sheared_llama": "pvs.prune.sheared",
}
SPARSE = {"sparsegpt", "sparsegpt_nm"}
# methods that train the whole parent (mask learning): FSDP2 under torchrun, training's GPUs, checkpoints
TRAINS_PARENT = {"sheared_llama"}
# coarse -> fine, the order of every table and figure
GRANULARITY_ORDER = ["minitron_depth", "minitron_width", "sheared_llama", "flap", "sparsegpt_nm", "sparsegpt"]
METHOD_NAMES = list(METHODS)
# the prune-config keys each method reads, besides the calibration (the prune rule's rerun trigger)
CALIBRATION_OPTIONS = ("calib_windows", "calib_seq_len")
RUN_ONLY_OPTIONS = ("sheared_checkpoint_every",)     # how a job runs, not what it computes: no rerun
OPTION_PREFIXES = {"minitron_width": ("minitron_",), "sheared_llama": ("sheared_",), "flap": ("flap_",),
                   "sparsegpt": ("sparsegpt_",), "sparsegpt_nm": ("sparsegpt_", "nm_patterns")}
DISPLAY_NAMES = {"minitron_depth": "Minitron-Depth", "minitron_width": "Minitron-Width",
                 "sheared_llama": "Sheared-LLaMA", "flap": "FLAP", "sparsegpt_nm": "SparseGPT N:M",
                 "sparsegpt": "SparseGPT"}


@dataclass(frozen=True)
class Method:
    """A registered method: its name, the module implementing it and its ``prune`` function."""
    name: str
    module: object
    prune: Callable
    sparse: bool
    trains_parent: bool


def get_method(name: str) -> Method:
    """The method ``name`` (``.prune(model, calib, ratio, options)``); raises KeyError naming the known methods."""
    if name not in METHODS:
        raise KeyError(f"unknown pruning method {name!r} (known: {', '.join(METHODS)})")
    module_name, _, function = METHODS[name].partition(":")
    module = importlib.import_module(module_name)
    return Method(name, module, getattr(module, function or "prune"), name in SPARSE, name in TRAINS_PARENT)


def display_name(method: str) -> str:
    """The paper's spelling of a method (the registry name when it has none)."""
    return DISPLAY_NAMES.get(method, method)


def method_options(method: str, prune_config: dict) -> dict:
    """The part of the config's ``prune`` section that can change ``method``'s result.

    Used as the prune rule's params: adding a method or tuning another method's options does not
    re-run this one.
    """
    prefixes = OPTION_PREFIXES.get(method, ())
    return {k: v for k, v in prune_config.items()
            if (k in CALIBRATION_OPTIONS or k.startswith(prefixes)) and k not in RUN_ONLY_OPTIONS}
