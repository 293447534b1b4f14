"""The method registry: name -> module that implements it, imported lazily (keeps `snakemake -n` fast).

Adding a method = one module under ``pvs/prune/`` that defines ``prune(model, calib, ratio, cfg) -> PruneResult``
plus one line here. ``SPARSE`` methods keep the dense shape and save masks; the others change the shape.
"""
from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "minitron_depth": "pvs.prune.depth",
    "sparsegpt": "pvs.prune.sparsegpt",
}
SPARSE = {"sparsegpt", "sparsegpt_nm"}
# coarse -> fine, the order of every table and figure
GRANULARITY_ORDER = ["minitron_depth", "minitron_width", "sheared_llama", "flap", "sparsegpt_nm", "sparsegpt"]
METHOD_NAMES = list(METHODS)


def get_method(name: str):
    """The module implementing ``name``; raises KeyError naming the known methods."""
    if name not in METHODS:
        raise KeyError(f"unknown pruning method {name!r} (known: {', '.join(METHODS)})")
    return importlib.import_module(METHODS[name])
