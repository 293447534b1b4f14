"""The shape solver: (method, ratio, parent shape) -> the child's architecture, and exact parameter counts.

The ratio is the fraction of **non-embedding** parameters removed: everything inside the decoder layers
(q, k, v, o, gate, up, down and the two RMSNorms of each layer, plus biases when the config has them;
the embeddings, the final norm and the LM head are not counted, as in :func:`pvs.modeling.count_params`).
Structured children are uniform across layers (stock Llama cannot load anything else) and keep
``head_dim``. Stock ``LlamaConfig`` (transformers 5) also refuses a hidden size that is not a multiple
of the number of query heads, even with an explicit head_dim, so every child satisfies that too.

Granularity. The MLP width is a multiple of the *unit*: the largest power of two <= 128 dividing both
hidden and MLP width that leaves at least 16 units in the hidden size (8 for the default 128/384
parent, 32 for SmolLM2-135M, 128 for Llama-3.1-8B). A cut hidden size is a multiple of the *hidden
step* lcm(query heads, u), u the largest power of two <= unit that leaves at least 8 steps in the
parent's hidden size (8B with 32 heads: 128; SmolLM2 with 9 heads: 72; default with 4 heads: 8).

The rules, one per method (``s`` is a *common scale*: the fraction of hidden channels and of MLP
neurons kept, solved by bisection so that the continuous child hits the target exactly):

* ``minitron_depth``: remove k = round(r * L) whole layers (the same rule as :mod:`pvs.prune.depth`).
* ``minitron_width``: every attention head and head_dim kept; hidden = s * H rounded to the hidden step,
  then the MLP width is solved so that the child hits the target, rounded to the unit (nearest of the
  two neighbours). At 8B and r = 0.5 this gives hidden 2816, MLP 9472 (the paper's searched 3072 / 9216
  removes only 0.466 of the block parameters, outside our +-0.03).
* ``flap``: hidden kept; whole KV groups (a KV head with its query heads) are removed and the MLP is
  cut, the same counts in every layer. Attention is cut less than the MLP, as in FLAP's reported
  shapes: KV groups kept = max(1, floor(K * sqrt(1 - r))), lowered to the nearest count whose query
  heads divide the hidden size. (The paper's 8B child, 5 of 8 groups = 20 query heads with hidden 4096,
  is refused by stock LlamaConfig; we keep 4 groups = 16 heads at r = 0.5 and MLP 7168.) The MLP width
  is then solved for the target. The child carries FLAP's compensation biases (``attention_bias`` and
  ``mlp_bias``), which are counted.
* ``sheared_llama``: layers kept; KV groups = max(1, floor(K * sqrt(1 - r))) (whole groups, query heads
  per group unchanged, so the GQA layout is kept); then hidden and MLP by a common scale s solved given
  those heads, hidden rounded to its step, MLP solved for the target. Sheared-LLaMA's own targets shrink
  hidden, heads and MLP by similar factors (7B -> 2.7B: 0.625, 0.625, 0.628); 32 heads at r ~ 0.6 give
  floor(32 * sqrt(0.4)) = 20, its 2.7B head count.
* ``sparsegpt`` / ``sparsegpt_nm``: the dense shape; the achieved ratio counts the round(r * size)
  zeros of every block linear (the RMSNorms are not pruned).

Every solution must lie within ``TOLERANCE`` of the target; otherwise a ValueError names the method,
the ratio and the closest ratio that the method's shape family (every grid size, whole KV groups) can reach.

**What is matched** (``prune.match``): ``non_embedding`` (default, the paper's definition of the ratio) makes
the rules above hit (1 - r) of the parent's decoder-layer parameters; ``total`` makes them hit (1 - r) of
the parent's *total* parameters (embedding, final norm and LM head included, the head counted unless tied).
For depth and FLAP the embedding is fixed, so matching the total removes more of the blocks; for width and
Sheared the embedding shrinks with the hidden size. The tolerance applies to the matched kind; both achieved
ratios are returned (``Solution.achieved`` non-embedding, ``Solution.achieved_total`` total; NaN when the
vocabulary size is unknown).

**Shape overrides** (``prune.<method>.shapes``: ``{"0.5": {hidden_size: ..., ...}}``, missing fields = the
parent's): an explicit child replaces the rule at that ratio. It must lie in the method's family (depth:
only the layer count changes; width: heads, KV heads, head_dim and layers kept; FLAP: hidden, layers and
head_dim kept, whole KV groups with the parent's query heads per group; Sheared-LLaMA: layers and head_dim
kept, whole KV groups) and be loadable by stock ``LlamaConfig``; the tolerance does not apply (the achieved
ratios are reported instead). A bad override raises ValueError naming its config key.

Stock ``LlamaConfig`` (transformers 5.24, ``validate_architecture``) refuses ``hidden_size %
num_attention_heads != 0`` at construction, at ``save_pretrained`` and at ``from_pretrained``, *even with an
explicit head_dim* (the modeling code itself would build such a model; the per-layer ``per_layer_config``
path runs the same check). The paper's FLAP 8B child (20 query / 5 KV heads with hidden 4096) is therefore
not loadable by stock classes; :data:`PAPER_FLAP_8B` records it and configs/paper.yaml uses the nearest
loadable child of the same parameter count (see there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pvs.compute import layer_params, non_embedding_params  # noqa: F401  (the one parameter count)

TOLERANCE = 0.03
MATCHES = ("non_embedding", "total")
# The paper's FLAP child of Llama-3.1-8B at r = 0.5 (the authors' MaxText config); not loadable, see above.
PAPER_FLAP_8B = {"hidden_size": 4096, "intermediate_size": 6656, "num_hidden_layers": 32,
                 "num_attention_heads": 20, "num_key_value_heads": 5, "head_dim": 128}
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")
STRUCTURED = ("minitron_depth", "minitron_width", "flap", "sheared_llama")
SPARSE = ("sparsegpt", "sparsegpt_nm")
METHODS = STRUCTURED + SPARSE
CHILD_BIASES = {"flap": (True, True)}  # method -> (attention_bias, mlp_bias) forced on in the child
MAX_UNIT, MIN_UNITS, MIN_HIDDEN_STEPS = 128, 16, 8


@dataclass(frozen=True)
class Solution:
    """A solved child shape with its exact non-embedding parameter counts and achieved ratios.

    ``achieved``: 1 - child / parent non-embedding parameters; ``achieved_total``: the same over total
    parameters (NaN when the vocabulary size is unknown); ``match``: which of the two the solver aimed at;
    ``override``: the shape came from ``prune.<method>.shapes`` instead of the rule."""
    method: str
    target: float
    shape: dict
    parent_params: int
    child_params: int
    achieved: float
    achieved_total: float = float("nan")
    match: str = "non_embedding"
    override: bool = False


# ---------------------------------------------------------------- shapes and parameter counts
def parent_shape(parent) -> dict:
    """The six shape fields of a LlamaConfig or a dict (head_dim None -> hidden_size / heads)."""
    get = parent.get if isinstance(parent, dict) else (lambda k, d=None: getattr(parent, k, d))
    shape = {k: get(k) for k in SHAPE_KEYS}
    shape["head_dim"] = shape["head_dim"] or shape["hidden_size"] // shape["num_attention_heads"]
    missing = [k for k, v in shape.items() if v is None]
    if missing:
        raise ValueError(f"parent shape lacks {', '.join(missing)}")
    if shape["num_attention_heads"] % shape["num_key_value_heads"]:
        raise ValueError(f"parent has {shape['num_attention_heads']} query heads, not a multiple of "
                         f"{shape['num_key_value_heads']} KV heads")
    return {k: int(v) for k, v in shape.items()}


def parent_biases(parent) -> tuple[bool, bool]:
    """(attention_bias, mlp_bias) of a LlamaConfig or dict (False when absent)."""
    get = parent.get if isinstance(parent, dict) else (lambda k, d=None: getattr(parent, k, d))
    return bool(get("attention_bias", False)), bool(get("mlp_bias", False))


def sparse_kept_params(shape: dict, ratio: float, attention_bias: bool = False, mlp_bias: bool = False) -> int:
    """Non-embedding parameters left when every block linear loses round(ratio * size) weights."""
    H, I, hd = shape["hidden_size"], shape["intermediate_size"], shape["head_dim"]
    q, kv = shape["num_attention_heads"] * hd, shape["num_key_value_heads"] * hd
    sizes = [H * q, H * kv, H * kv, q * H, H * I, H * I, I * H]
    removed = sum(round(ratio * n) for n in sizes)
    return non_embedding_params(shape, attention_bias, mlp_bias) - shape["num_hidden_layers"] * removed


def rounding_unit(shape: dict) -> int:
    """Largest power of two <= 128 dividing hidden and MLP widths with at least 16 units of hidden (else 1)."""
    H, I = shape["hidden_size"], shape["intermediate_size"]
    unit = MAX_UNIT
    while unit > 1 and (H % unit or I % unit or H // unit < MIN_UNITS):
        unit //= 2
    return unit


def hidden_step(shape: dict, heads: int) -> int:
    """Granularity of a cut hidden size with ``heads`` query heads: lcm(heads, u), at least 8 steps in H."""
    H, u = shape["hidden_size"], rounding_unit(shape)
    while u > 1 and H // math.lcm(heads, u) < MIN_HIDDEN_STEPS:
        u //= 2
    return math.lcm(heads, u)


def loadable(shape: dict) -> bool:
    """Whether stock LlamaConfig accepts the shape (hidden size a multiple of the query heads; GQA)."""
    return (shape["hidden_size"] % shape["num_attention_heads"] == 0
            and shape["num_attention_heads"] % shape["num_key_value_heads"] == 0)


def child_biases(method: str, parent) -> tuple[bool, bool]:
    """Bias flags of the child: the parent's, plus those the method adds (FLAP's compensation biases)."""
    forced = CHILD_BIASES.get(method, (False, False))
    return tuple(a or b for a, b in zip(parent_biases(parent), forced))


def shape_ratio(method: str, ratio: float, parent, child: dict) -> float:
    """Achieved ratio 1 - child / parent non-embedding parameters (sparse: the kept weights of ``child``)."""
    before = non_embedding_params(parent_shape(parent), *parent_biases(parent))
    if method in SPARSE:
        after = sparse_kept_params(child, ratio, *parent_biases(parent))
    else:
        after = non_embedding_params(child, *child_biases(method, parent))
    return 1.0 - after / before


def vocabulary(parent, vocab_size: int | None = None) -> tuple[int | None, bool]:
    """(vocab size, tied embeddings) of a LlamaConfig or dict; ``vocab_size`` when the parent has none."""
    get = parent.get if isinstance(parent, dict) else (lambda k, d=None: getattr(parent, k, d))
    return get("vocab_size") or vocab_size, bool(get("tie_word_embeddings", False))


def outer_params(hidden: float, vocab: int, tied: bool) -> float:
    """Parameters outside the decoder layers: embedding, LM head (unless tied) and the final norm."""
    return vocab * hidden * (1 if tied else 2) + hidden


def total_ratio(method: str, ratio: float, parent, child: dict, vocab_size: int | None = None) -> float:
    """Achieved ratio over total parameters (embedding, final norm, head included); NaN without a vocabulary."""
    vocab, tied = vocabulary(parent, vocab_size)
    if not vocab:
        return float("nan")
    p = parent_shape(parent)
    before = non_embedding_params(p, *parent_biases(parent)) + outer_params(p["hidden_size"], vocab, tied)
    if method in SPARSE:
        inner = sparse_kept_params(child, ratio, *parent_biases(parent))
    else:
        inner = non_embedding_params(child, *child_biases(method, parent))
    return 1.0 - (inner + outer_params(child["hidden_size"], vocab, tied)) / before


# ---------------------------------------------------------------- the rules
def _snap(value: float, unit: int, upper: int) -> int:
    """Nearest multiple of ``unit`` in [unit, upper]."""
    return int(min(max(unit, round(value / unit) * unit), upper))


def _kv_groups_kept(ratio: float, p: dict, hidden_fixed: bool) -> int:
    """max(1, floor(K * sqrt(1 - r))) whole KV groups; with the hidden size fixed (FLAP), lowered until the
    query heads divide it (raised to the smallest such count if none is lower)."""
    rule = max(1, math.floor(p["num_key_value_heads"] * math.sqrt(1.0 - ratio) + 1e-9))
    if not hidden_fixed:
        return rule
    feasible = [g for g in range(1, p["num_key_value_heads"] + 1) if loadable(_with_groups(p, g))]
    lower = [g for g in feasible if g <= rule]
    return max(lower) if lower else min(feasible)


def _with_groups(p: dict, groups: int) -> dict:
    per_group = p["num_attention_heads"] // p["num_key_value_heads"]
    return {**p, "num_key_value_heads": groups, "num_attention_heads": groups * per_group}


def _layer(shape: dict, hidden: float, intermediate: float, biases: tuple[bool, bool]) -> float:
    return layer_params(hidden, intermediate, shape["num_attention_heads"], shape["num_key_value_heads"],
                        shape["head_dim"], *biases)


@dataclass(frozen=True)
class _Budget:
    """What the child may hold: ``per_layer(hidden)`` parameters in each of ``layers`` decoder layers.

    Matching non-embedding parameters, the budget is (1 - r) of a parent layer whatever the hidden size;
    matching total parameters, it is ((1 - r) * parent total - outer(hidden)) / layers."""
    layer_target: float                      # non_embedding: (1 - r) * one parent layer
    total_target: float | None = None        # total: (1 - r) * parent total parameters
    vocab: int = 0
    tied: bool = False
    layers: int = 1

    def per_layer(self, hidden: float) -> float:
        if self.total_target is None:
            return self.layer_target
        return (self.total_target - outer_params(hidden, self.vocab, self.tied)) / self.layers

    def excess(self, count_layer: float, hidden: float) -> float:
        """Parameters above the budget of a child whose layers hold ``count_layer`` each (< 0: under)."""
        return (count_layer - self.per_layer(hidden)) * self.layers


def _common_scale(p: dict, heads: dict, budget: _Budget, biases) -> float:
    """s in (0, 1] where a child of hidden s * H and MLP s * I meets the budget (bisection; monotone in s)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        hidden = mid * p["hidden_size"]
        if budget.excess(_layer(heads, hidden, mid * p["intermediate_size"], biases), hidden) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _fit_mlp(p: dict, shape: dict, target: float, unit: int, biases) -> int:
    """The MLP width (unit multiple in [unit, I]) whose layer count is closest to ``target``."""
    fixed = _layer(shape, shape["hidden_size"], 0, biases)
    slope = _layer(shape, shape["hidden_size"], 1, biases) - fixed
    exact = (target - fixed) / slope
    low = _snap(math.floor(exact / unit) * unit, unit, p["intermediate_size"])
    high = _snap(math.ceil(exact / unit) * unit, unit, p["intermediate_size"])
    return min((low, high), key=lambda i: abs(_layer(shape, shape["hidden_size"], i, biases) - target))


def _scaled(p: dict, heads: dict, budget: _Budget, scale_hidden: bool, biases) -> dict:
    """Shape with ``heads``; hidden by the common scale (or kept), MLP fitted to the budget of that hidden."""
    hidden = p["hidden_size"]
    if scale_hidden:
        step = hidden_step(p, heads["num_attention_heads"])
        hidden = _snap(_common_scale(p, heads, budget, biases) * hidden, step, hidden // step * step)
    shape = {**heads, "hidden_size": hidden}
    return {**shape, "intermediate_size": _fit_mlp(p, shape, budget.per_layer(hidden), rounding_unit(p), biases)}


def _rule(method: str, ratio: float, p: dict, budget: _Budget, parent_layer: float, biases) -> dict:
    """The child shape by the method's rule; ``parent_layer`` = parameters of one parent layer."""
    L = p["num_hidden_layers"]
    if method == "minitron_depth":
        if budget.total_target is None:
            return {**p, "num_hidden_layers": L - round(ratio * L)}
        kept = round(budget.per_layer(p["hidden_size"]) * L / parent_layer)
        return {**p, "num_hidden_layers": int(min(max(kept, 1), L - 1))}
    if method == "minitron_width":
        return _scaled(p, p, budget, True, biases)
    if method in ("flap", "sheared_llama"):
        heads = _with_groups(p, _kv_groups_kept(ratio, p, hidden_fixed=method == "flap"))
        return _scaled(p, heads, budget, method == "sheared_llama", biases)
    return dict(p)  # sparse methods keep the dense shape


# ---------------------------------------------------------------- the family, for error messages
def _family(method: str, p: dict):
    """Every shape the method's rules could produce (grid multiples, whole KV groups, 1..L-1 layers)."""
    L = p["num_hidden_layers"]
    mlps = range(rounding_unit(p), p["intermediate_size"] + 1, rounding_unit(p))
    groups = [_with_groups(p, g) for g in range(1, p["num_key_value_heads"] + 1)]

    def hiddens(heads: dict):
        step = hidden_step(p, heads["num_attention_heads"])
        return range(step, p["hidden_size"] + 1, step)

    if method == "minitron_depth":
        return ({**p, "num_hidden_layers": n} for n in range(1, L))
    if method == "minitron_width":
        return ({**p, "hidden_size": h, "intermediate_size": i} for h in hiddens(p) for i in mlps)
    if method == "flap":
        return ({**g, "intermediate_size": i} for g in groups if loadable(g) for i in mlps)
    return ({**g, "hidden_size": h, "intermediate_size": i} for g in groups for h in hiddens(g) for i in mlps)


def closest_achievable(method: str, ratio: float, parent, match: str = "non_embedding",
                       vocab_size: int | None = None) -> float:
    """The achievable ratio (of the ``match`` kind) nearest ``ratio`` over the method's whole shape family
    (NaN when the family is empty on this parent: one layer for depth, no KV-group count whose query heads
    divide the hidden size)."""
    if method in SPARSE:
        return ratio
    p = parent_shape(parent)
    kind = total_ratio if match == "total" else (lambda m, r, par, c, v=None: shape_ratio(m, r, par, c))
    ratios = [kind(method, ratio, parent, _public(s), vocab_size) for s in _family(method, p)]
    return min(ratios, key=lambda a: abs(a - ratio)) if ratios else float("nan")


FAMILY_NEEDS = {"minitron_depth": "at least 2 layers",
                "flap": "a count of KV groups whose query heads divide the hidden size (stock LlamaConfig)"}


# ---------------------------------------------------------------- shape overrides
def find_override(overrides: dict | None, ratio: float) -> tuple[str, dict] | None:
    """(key, fields) of the override for ``ratio`` in ``prune.<method>.shapes`` (keys compared as numbers)."""
    for key, fields in (overrides or {}).items():
        if float(key) == float(ratio):
            return str(key), dict(fields or {})
    return None


FAMILY_KEEPS = {"minitron_depth": ("hidden_size", "intermediate_size", "num_attention_heads",
                                   "num_key_value_heads", "head_dim"),
                "minitron_width": ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"),
                "flap": ("hidden_size", "num_hidden_layers", "head_dim"),
                "sheared_llama": ("num_hidden_layers", "head_dim")}


def override_shape(method: str, parent, fields: dict, where: str = "shapes") -> dict:
    """The child shape of an explicit override (missing fields = the parent's), checked against the method's
    family and stock LlamaConfig; ValueError naming ``where.<field>`` for the first offending field."""
    if method not in STRUCTURED:
        raise ValueError(f"{where}: {method} keeps the dense shape; shape overrides are for "
                         f"{', '.join(STRUCTURED)}")
    p = parent_shape(parent)
    unknown = sorted(set(fields) - set(SHAPE_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown shape field (known: {', '.join(SHAPE_KEYS)})")
    child = {**p, **fields}
    for key in SHAPE_KEYS:
        value = child[key]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= p[key]:
            raise ValueError(f"{where}.{key} = {value!r}: must be an integer in 1..{p[key]} (the parent's)")
    for key in FAMILY_KEEPS[method]:
        if child[key] != p[key]:
            raise ValueError(f"{where}.{key} = {child[key]!r}: {method} keeps the parent's {key} ({p[key]})")
    if method == "minitron_depth" and child["num_hidden_layers"] >= p["num_hidden_layers"]:
        raise ValueError(f"{where}.num_hidden_layers = {child['num_hidden_layers']!r}: minitron_depth removes at "
                         f"least one of the parent's {p['num_hidden_layers']} layers")
    if method == "minitron_width" and (child["hidden_size"], child["intermediate_size"]) == (
            p["hidden_size"], p["intermediate_size"]):
        raise ValueError(f"{where}.hidden_size: minitron_width removes hidden channels or MLP neurons; "
                         "this override keeps both")
    kv, heads = child["num_key_value_heads"], child["num_attention_heads"]
    if heads % kv:
        raise ValueError(f"{where}.num_attention_heads = {heads}: not a multiple of num_key_value_heads = {kv} "
                         "(GQA: KV groups are removed whole)")
    per_group = p["num_attention_heads"] // p["num_key_value_heads"]
    if method == "flap" and heads != kv * per_group:
        raise ValueError(f"{where}.num_attention_heads = {heads}: flap removes whole KV groups, so it must be "
                         f"num_key_value_heads x {per_group} = {kv * per_group}")
    if heads // kv > per_group:
        raise ValueError(f"{where}.num_attention_heads = {heads}: {heads // kv} query heads per KV group, the "
                         f"parent has only {per_group}")
    if not loadable(child):
        raise ValueError(f"{where}.num_attention_heads = {heads}: hidden_size {child['hidden_size']} is not a "
                         f"multiple of it, which stock transformers LlamaConfig refuses even with an explicit "
                         f"head_dim (validate_architecture); the child could not be saved or loaded")
    return _public(child)


# ---------------------------------------------------------------- entry points
def _public(shape: dict) -> dict:
    return {k: int(shape[k]) for k in SHAPE_KEYS}


def _budget(ratio: float, parent, p: dict, before: int, match: str, vocab_size: int | None) -> _Budget:
    if match not in MATCHES:
        raise ValueError(f"shape solver: prune.match {match!r} unknown (choose from {', '.join(MATCHES)})")
    layer_target = (1.0 - ratio) * before / p["num_hidden_layers"]
    if match == "non_embedding":
        return _Budget(layer_target)
    vocab, tied = vocabulary(parent, vocab_size)
    if not vocab:
        raise ValueError("shape solver: prune.match 'total' needs the vocabulary size of the parent")
    total = before + outer_params(p["hidden_size"], vocab, tied)
    return _Budget(layer_target, (1.0 - ratio) * total, vocab, tied, p["num_hidden_layers"])


def solve(method: str, ratio: float, parent, override: dict | None = None, match: str = "non_embedding",
          vocab_size: int | None = None, where: str = "shapes") -> Solution:
    """Solve the child shape; raises ValueError (method, ratio, closest achievable) when off by > TOLERANCE.

    ``override``: explicit shape fields for this ratio (see the module docstring; ``where`` names its config
    key in errors); ``match``: "non_embedding" or "total" (needs the parent's vocabulary size, from the
    parent config or ``vocab_size``)."""
    if method not in METHODS:
        raise ValueError(f"shape solver: unknown method {method!r} (known: {', '.join(METHODS)})")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"shape solver: {method} ratio {ratio!r} must lie in (0, 1)")
    p = parent_shape(parent)
    before = non_embedding_params(p, *parent_biases(parent))
    if override is not None:
        child = override_shape(method, parent, override, where)
        achieved = shape_ratio(method, ratio, parent, child)
        return Solution(method, ratio, child, before, round((1.0 - achieved) * before), achieved,
                        total_ratio(method, ratio, parent, child, vocab_size), match, True)
    budget = _budget(ratio, parent, p, before, match, vocab_size)
    child = _public(_rule(method, ratio, p, budget, before / p["num_hidden_layers"], child_biases(method, parent)))
    valid = child["num_hidden_layers"] >= 1 and (method != "minitron_depth" or
                                                  child["num_hidden_layers"] < p["num_hidden_layers"])
    achieved = shape_ratio(method, ratio, parent, child) if valid else float("nan")
    achieved_total = total_ratio(method, ratio, parent, child, vocab_size) if valid else float("nan")
    matched = achieved_total if match == "total" else achieved
    if not (valid and abs(matched - ratio) <= TOLERANCE):
        best = closest_achievable(method, ratio, parent, match, vocab_size)
        if math.isnan(best):
            raise ValueError(f"shape solver: {method} cannot produce any child of this parent (it needs "
                             f"{FAMILY_NEEDS.get(method, 'a smaller shape in its family')})")
        kind = "" if match == "non_embedding" else " (total parameters)"
        raise ValueError(f"shape solver: {method} at ratio {ratio}{kind} gives {matched:.4f}, more than {TOLERANCE} "
                         f"from the target; the closest achievable ratio for {method} on this parent is {best:.4f}")
    return Solution(method, ratio, child, before, round((1.0 - achieved) * before), achieved, achieved_total, match)


def solve_shape(method: str, ratio: float, parent) -> dict:
    """The child's {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim} for ``method`` at ``ratio`` on ``parent`` (a LlamaConfig or dict)."""
    return solve(method, ratio, parent).shape


def solve_configured(method: str, ratio: float, parent, prune_config: dict, vocab_size: int | None = None,
                     section: str | None = None) -> Solution:
    """The solution a study config asks for: ``prune.match`` and the override in ``prune.<section>.shapes``
    (``section`` defaults to the method; ``prune_config`` may also be a method's flat job options)."""
    section = section or method
    own = prune_config.get(section) if isinstance(prune_config.get(section), dict) else prune_config
    found = find_override((own or {}).get("shapes"), ratio)
    where = f"prune.{section}.shapes.{found[0]}" if found else "shapes"
    return solve(method, ratio, parent, found[1] if found else None, prune_config.get("match") or "non_embedding",
                 vocab_size, where)


def solution_info(solution: Solution) -> dict:
    """The facts of a solution for meta.json: the match kind, both achieved ratios, override or rule."""
    return {"match": solution.match, "achieved_non_embedding": solution.achieved,
            "achieved_total": None if math.isnan(solution.achieved_total) else solution.achieved_total,
            "source": "override" if solution.override else "rule"}


def override_errors(prune_config: dict, parent, methods=STRUCTURED) -> list[str]:
    """Every bad ``prune.<method>.shapes`` entry of a config, each message naming its key (config check)."""
    errors = []
    for method in methods:
        for key, fields in ((prune_config.get(method) or {}).get("shapes") or {}).items():
            where = f"prune.{method}.shapes.{key}"
            try:
                ratio = float(key)
            except ValueError:
                errors.append(f"{where}: the key must be a pruning ratio such as \"0.5\"")
                continue
            if not 0.0 < ratio < 1.0:
                errors.append(f"{where}: the ratio must lie in (0, 1)")
                continue
            try:
                override_shape(method, parent, dict(fields or {}), where)
            except ValueError as e:
                errors.append(str(e))
    return errors
