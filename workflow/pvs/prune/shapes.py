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
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from pvs.compute import layer_params, non_embedding_params  # noqa: F401  (the one parameter count)

TOLERANCE = 0.03
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim")
STRUCTURED = ("minitron_depth", "minitron_width", "flap", "sheared_llama")
SPARSE = ("sparsegpt", "sparsegpt_nm")
METHODS = STRUCTURED + SPARSE
CHILD_BIASES = {"flap": (True, True)}  # method -> (attention_bias, mlp_bias) forced on in the child
MAX_UNIT, MIN_UNITS, MIN_HIDDEN_STEPS = 128, 16, 8


@dataclass(frozen=True)
class Solution:
    """A solved child shape with its exact non-embedding parameter counts and achieved ratio."""
    method: str
    target: float
    shape: dict
    parent_params: int
    child_params: int
    achieved: float


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


def _common_scale(p: dict, heads: dict, target: float, biases) -> float:
    """s in (0, 1] with layer(s * H, s * I) = target for the given heads (bisection; monotone in s)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _layer(heads, mid * p["hidden_size"], mid * p["intermediate_size"], biases) < target:
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


def _scaled(p: dict, heads: dict, target: float, scale_hidden: bool, biases) -> dict:
    """Shape with ``heads``; hidden by the common scale (or kept), MLP fitted so a layer has ``target`` params."""
    hidden = p["hidden_size"]
    if scale_hidden:
        step = hidden_step(p, heads["num_attention_heads"])
        hidden = _snap(_common_scale(p, heads, target, biases) * hidden, step, hidden // step * step)
    shape = {**heads, "hidden_size": hidden}
    return {**shape, "intermediate_size": _fit_mlp(p, shape, target, rounding_unit(p), biases)}


def _rule(method: str, ratio: float, p: dict, parent_layer: float, biases) -> dict:
    """The child shape by the method's rule; ``parent_layer`` = parameters of one parent layer."""
    target = (1.0 - ratio) * parent_layer
    if method == "minitron_depth":
        return {**p, "num_hidden_layers": p["num_hidden_layers"] - round(ratio * p["num_hidden_layers"])}
    if method == "minitron_width":
        return _scaled(p, p, target, True, biases)
    if method in ("flap", "sheared_llama"):
        heads = _with_groups(p, _kv_groups_kept(ratio, p, hidden_fixed=method == "flap"))
        return _scaled(p, heads, target, method == "sheared_llama", biases)
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


def closest_achievable(method: str, ratio: float, parent) -> float:
    """The achievable ratio nearest ``ratio`` over the method's whole shape family (NaN when the family is
    empty on this parent: one layer for depth, no KV-group count whose query heads divide the hidden size)."""
    if method in SPARSE:
        return ratio
    p = parent_shape(parent)
    ratios = [shape_ratio(method, ratio, parent, _public(s)) for s in _family(method, p)]
    return min(ratios, key=lambda a: abs(a - ratio)) if ratios else float("nan")


FAMILY_NEEDS = {"minitron_depth": "at least 2 layers",
                "flap": "a count of KV groups whose query heads divide the hidden size (stock LlamaConfig)"}


# ---------------------------------------------------------------- entry points
def _public(shape: dict) -> dict:
    return {k: int(shape[k]) for k in SHAPE_KEYS}


def solve(method: str, ratio: float, parent) -> Solution:
    """Solve the child shape; raises ValueError (method, ratio, closest achievable) when off by > TOLERANCE."""
    if method not in METHODS:
        raise ValueError(f"shape solver: unknown method {method!r} (known: {', '.join(METHODS)})")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"shape solver: {method} ratio {ratio!r} must lie in (0, 1)")
    p = parent_shape(parent)
    before = non_embedding_params(p, *parent_biases(parent))
    child = _public(_rule(method, ratio, p, before / p["num_hidden_layers"], child_biases(method, parent)))
    valid = child["num_hidden_layers"] >= 1 and (method != "minitron_depth" or
                                                  child["num_hidden_layers"] < p["num_hidden_layers"])
    achieved = shape_ratio(method, ratio, parent, child) if valid else float("nan")
    if not (valid and abs(achieved - ratio) <= TOLERANCE):
        best = closest_achievable(method, ratio, parent)
        if math.isnan(best):
            raise ValueError(f"shape solver: {method} cannot produce any child of this parent (it needs "
                             f"{FAMILY_NEEDS.get(method, 'a smaller shape in its family')})")
        raise ValueError(f"shape solver: {method} at ratio {ratio} gives {achieved:.4f}, more than {TOLERANCE} "
                         f"from the target; the closest achievable ratio for {method} on this parent is {best:.4f}")
    return Solution(method, ratio, child, before, round((1.0 - achieved) * before), achieved)


def solve_shape(method: str, ratio: float, parent) -> dict:
    """The child's {hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads, head_dim} for ``method`` at ``ratio`` on ``parent`` (a LlamaConfig or dict)."""
    return solve(method, ratio, parent).shape
