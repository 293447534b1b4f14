"""The method registry: one record per pruning method, the only place that knows its facts.

A record names the module whose ``prune(model, calib, ratio, options) -> PruneResult`` implements the
method (``"package.module"``, or ``"package.module:function"`` when one module implements several, as
SparseGPT unstructured and N:M), the paper's display name, its granularity rank (coarse -> fine: the order
of every table and figure), whether it is sparse (keeps the dense shape, saves masks), whether it trains
the whole parent (mask learning: FSDP2 under torchrun, training's GPUs, checkpoints), the shape solver's
rule for its child (:mod:`pvs.prune.shapes`; None for sparse methods), its options with their defaults
(the config's ``prune.<method>`` section, documented in the schema), and which of them only change how
the job runs (no re-run when they change).

Every method's options include ``calib_seq_len``: its calibration window length (null = the shared
``prune.calib_seq_len``; the paper calibrates FLAP on 128-token windows and the others on 8192). Every
structured method's options include ``shapes``: explicit child shapes by ratio (``{"0.5": {hidden_size:
...}}``, see :mod:`pvs.prune.shapes`), and structured methods also see the shared ``prune.match`` (whether the
solver matches non-embedding or total parameters); sparse methods do not, so changing it re-runs none of them.

Adding a method = one module under ``pvs/prune/`` + one record in ``RECORDS`` + its ``prune.<method>``
section in workflow/schemas/config.schema.yaml (tests/test_registry.py does exactly that with a toy
method). This module imports no method module and no torch (``get_method`` imports lazily), so the
config check and ``snakemake -n`` stay fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

SHARED_OPTIONS = ("calib_windows", "calib_seq_len")   # the calibration every method sees (prune.*)
STRUCTURED_SHARED_OPTIONS = ("match",)                 # what every method with a shape rule sees (prune.*)


@dataclass(frozen=True)
class MethodRecord:
    """The facts of one pruning method (see the module docstring)."""
    name: str
    module: str
    display: str
    granularity: int
    sparse: bool = False
    trains_parent: bool = False
    shape_rule: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    run_only: tuple[str, ...] = ()
    lr_group: str | None = None   # granularity class of the LR sweep (pvs.sweep): depth, width or sparse

    def __post_init__(self):
        if self.lr_group is None:   # derived: sparse methods 'sparse', the layer-dropping rule 'depth', else 'width'
            group = "sparse" if self.sparse else "depth" if self.shape_rule == "minitron_depth" else "width"
            object.__setattr__(self, "lr_group", group)
        options = {"calib_seq_len": None, **({"shapes": {}} if self.shape_rule else {}), **self.options}
        object.__setattr__(self, "options", MappingProxyType(options))
        unknown = set(self.run_only) - set(options)
        if unknown:
            raise ValueError(f"method {self.name}: run-only options {sorted(unknown)} are not among its options")
        if self.sparse == (self.shape_rule is not None):
            raise ValueError(f"method {self.name}: a sparse method keeps the dense shape (shape_rule None); a "
                             "structured one needs a shape rule")

    def section(self, prune_config: dict) -> dict:
        """The method's options from ``prune.<name>`` with the registry's defaults for missing keys."""
        return {**self.options, **(prune_config.get(self.name) or {})}

    def shared_options(self) -> tuple[str, ...]:
        """The prune.* keys this method sees besides its own section."""
        return SHARED_OPTIONS + (STRUCTURED_SHARED_OPTIONS if self.shape_rule else ())

    def calibration_seq_len(self, prune_config: dict) -> int:
        """Tokens per calibration window: the method's own ``calib_seq_len`` or the shared one."""
        return self.section(prune_config)["calib_seq_len"] or prune_config["calib_seq_len"]


SPARSEGPT_OPTIONS = {"blocksize": 128, "dampening": 0.01, "true_sequential": False}
RECORDS = (
    MethodRecord("minitron_depth", "pvs.prune.depth", "Minitron-Depth", 0, shape_rule="minitron_depth"),
    MethodRecord("minitron_width", "pvs.prune.width", "Minitron-Width", 1, shape_rule="minitron_width",
                 options={"aggregation": "l2_mean"}),
    MethodRecord("sheared_llama", "pvs.prune.sheared", "Sheared-LLaMA", 2, trains_parent=True,
                 shape_rule="sheared_llama",
                 options={"mask_tokens": 200_000, "seq_len": None, "batch_size": 4, "lr": 3e-4, "mask_lr": 1.0,
                          "lambda_lr": 1.0, "lagrangian_warmup": 0.2, "prune_layers": False,
                          "checkpoint_every": 500},
                 run_only=("checkpoint_every",)),
    MethodRecord("flap", "pvs.prune.flap", "FLAP", 3, shape_rule="flap", options={"bias_compensation": True}),
    MethodRecord("sparsegpt_nm", "pvs.prune.sparsegpt:prune_nm", "SparseGPT N:M", 4, sparse=True,
                 options={**SPARSEGPT_OPTIONS,
                          "patterns": {"0.5": "2:4", "0.6": "2:5", "0.7": "3:10", "0.8": "1:5"}}),
    MethodRecord("sparsegpt", "pvs.prune.sparsegpt", "SparseGPT", 5, sparse=True, options=SPARSEGPT_OPTIONS),
)
METHODS: dict[str, MethodRecord] = {record.name: record for record in RECORDS}
METHOD_NAMES = list(METHODS)
GRANULARITY_ORDER = [r.name for r in sorted(RECORDS, key=lambda r: r.granularity)]   # coarse -> fine
SPARSE = {r.name for r in RECORDS if r.sparse}
TRAINS_PARENT = {r.name for r in RECORDS if r.trains_parent}
LR_GROUPS = ("depth", "width", "sparse")      # the granularity classes that get one LR each (pvs.sweep)


def record(name: str) -> MethodRecord:
    """The record of ``name``; KeyError naming the known methods."""
    if name not in METHODS:
        raise KeyError(f"unknown pruning method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


@dataclass(frozen=True)
class Method:
    """A registered method with its implementation loaded: the record, the module and its ``prune``."""
    record: MethodRecord
    module: object
    prune: Callable

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def sparse(self) -> bool:
        return self.record.sparse

    @property
    def trains_parent(self) -> bool:
        return self.record.trains_parent


def get_method(name: str) -> Method:
    """The method ``name`` with its module imported (``.prune(model, calib, ratio, options)``)."""
    rec = record(name)
    module_name, _, function = rec.module.partition(":")
    module = importlib.import_module(module_name)
    return Method(rec, module, getattr(module, function or "prune"))


def display_name(method: str) -> str:
    """The paper's spelling of a method (the registry name when it has none)."""
    return METHODS[method].display if method in METHODS else method


def method_options(method: str, prune_config: dict) -> dict:
    """What can change ``method``'s result: the shared calibration keys and its own section, without the
    run-only options. Used as the prune rule's params: adding a method, tuning another method's options or
    changing how often a job checkpoints re-runs nothing of this one."""
    rec = record(method)
    own = {k: v for k, v in rec.section(prune_config).items() if k not in rec.run_only}
    return {**{k: prune_config[k] for k in rec.shared_options() if k in prune_config}, method: own}


def job_options(method: str, prune_config: dict) -> dict:
    """The flat options a method's ``prune`` reads: its section's options plus the shared calibration keys,
    with ``calib_seq_len`` resolved to the method's own length."""
    rec = record(method)
    return {**{k: prune_config[k] for k in rec.shared_options() if k in prune_config}, **rec.section(prune_config),
            "calib_seq_len": rec.calibration_seq_len(prune_config)}


def option(method: str, options: dict, key: str):
    """``options[key]``, or the registry's default for ``method`` (methods called without a full config)."""
    return options[key] if key in options else record(method).options[key]
