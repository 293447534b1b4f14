"""Hard-concrete (L0) masks for Sheared-LLaMA (arXiv 2310.06694) and the hooks that apply them to a stock Llama.

A hard-concrete gate (Louizos, Welling & Kingma 2018, arXiv 1712.01312) with log-alpha ``a`` draws
``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + a) / beta)`` and ``z = clamp(s * (zeta - gamma) + gamma, 0, 1)``
with ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``: z is exactly 0 or 1 with positive probability and
differentiable in ``a`` in between. Its expected L0 norm is ``P(z != 0) = sigmoid(a - beta * log(-gamma / zeta))``.

Structures (one :class:`HardConcrete` each; a structure is only masked when the target shrinks it):

* ``hidden``        1 row x d           residual channels, one mask shared by every layer
* ``intermediate``  L rows x I          MLP neurons of each layer
* ``kv_group``      L rows x K          whole KV groups (a KV head and all query heads that read it)
* ``head``          L*K rows x Q/K      query heads inside each KV group (only when the target keeps fewer
                                        query heads per group; binarized per group, so every group keeps the
                                        same count and the child is a valid GQA shape)
* ``layer``         1 row x L           whole layers (optional; on when asked or when the target has fewer layers)

The Lagrangian (Sheared-LLaMA eq. 2, per structure and per row as in the authors' code) is
``lambda1 * gap + lambda2 * gap**2`` averaged over rows, where ``gap = (E[kept] - target(t)) / size``; the
target ramps linearly from the full size to the final target over the Lagrangian warm-up. The lambdas
are maximized (gradient ascent), the log-alphas and the weights minimized.

Where the masks act (forward hooks only, the stock modules run unchanged; Sheared-LLaMA's placement):
hidden z multiplies the embedding output, the ``o_proj`` and ``down_proj`` outputs (everything added
to the residual stream) and every RMSNorm output, whose mean square is taken over the unmasked channels
only (what the cut child computes); head z multiplies each query head's attention context (the
``o_proj`` input); intermediate z multiplies the ``up_proj`` output; layer z multiplies the layer's
``o_proj`` and ``down_proj`` outputs.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

GAMMA, ZETA = -0.1, 1.1  # stretch interval of the concrete distribution
BETA = 2.0 / 3.0  # temperature
UNIFORM_EPS = 1e-6  # keeps log(u) and log(1 - u) finite
LOG_ALPHA_INIT = 5.0  # start with every gate open (P(z != 0) ~ 1), as the authors do
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))  # log-alpha clamp after every step (authors' code)
DETERMINISTIC_SHARPNESS = 0.8  # deterministic gate value: sigmoid(log_alpha / beta * 0.8) (authors' code)
STRUCTURES = ("hidden", "intermediate", "kv_group", "head", "layer")


class HardConcrete(nn.Module):
    """``rows`` independent gates of ``size`` each; ``target`` of every row survive binarization."""

    def __init__(self, rows: int, size: int, target: int, device=None):
        super().__init__()
        if not 1 <= target <= size:
            raise ValueError(f"hard-concrete target {target} must lie in 1..{size}")
        self.size, self.target = size, target
        self.log_alpha = nn.Parameter(torch.full((rows, size), LOG_ALPHA_INIT, device=device))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One reparameterized draw of z in [0, 1], shape (rows, size)."""
        u = torch.rand(self.log_alpha.shape, generator=generator, device=self.log_alpha.device)
        u = u.clamp(UNIFORM_EPS, 1 - UNIFORM_EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / BETA)
        return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def prob_nonzero(self) -> torch.Tensor:
        """P(z != 0) per gate: the expected L0 norm contribution, differentiable in log-alpha."""
        return torch.sigmoid(self.log_alpha - BETA * math.log(-GAMMA / ZETA))

    def expected_kept(self) -> torch.Tensor:
        """Expected number of open gates per row, shape (rows,)."""
        return self.prob_nonzero().sum(-1)

    def score(self) -> torch.Tensor:
        """The deterministic gate value sigmoid(log_alpha / beta * 0.8), which also ranks the gates."""
        return torch.sigmoid(self.log_alpha / BETA * DETERMINISTIC_SHARPNESS)

    def keep_indices(self) -> torch.Tensor:
        """The ``target`` highest-scoring gates of every row, ascending: (rows, target) int64."""
        top = torch.topk(self.score(), self.target, dim=-1).indices
        return top.sort(dim=-1).values

    def deterministic(self) -> torch.Tensor:
        """Binarized mask: the kept gates carry their score (to be folded into weights), the rest 0."""
        z = torch.zeros_like(self.log_alpha)
        keep = self.keep_indices()
        return z.scatter(-1, keep, self.score().gather(-1, keep))

    @torch.no_grad()
    def constrain_(self) -> None:
        self.log_alpha.clamp_(*LOG_ALPHA_RANGE)


def mask_specs(parent: dict, target: dict, prune_layers: bool) -> dict[str, tuple[int, int, int]]:
    """{structure: (rows, size, target)} for every structure the target shrinks (layer: when asked too).

    ``parent`` and ``target`` are shape dicts (hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, head_dim). Raises ValueError for shapes Sheared-LLaMA cannot
    reach (a different head_dim, growth, or query heads per group that do not divide evenly).
    """
    if target["head_dim"] != parent["head_dim"]:
        raise ValueError(f"sheared_llama keeps head_dim ({parent['head_dim']}), target asks {target['head_dim']}")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads"):
        if not 1 <= target[key] <= parent[key]:
            raise ValueError(f"sheared_llama: target {key}={target[key]} must lie in 1..{parent[key]}")
    if target["num_attention_heads"] % target["num_key_value_heads"]:
        raise ValueError(f"target heads {target['num_attention_heads']} not divisible by KV heads "
                         f"{target['num_key_value_heads']}")
    L, K = parent["num_hidden_layers"], parent["num_key_value_heads"]
    group = parent["num_attention_heads"] // K
    target_group = target["num_attention_heads"] // target["num_key_value_heads"]
    if target_group > group:
        raise ValueError(f"target has {target_group} query heads per KV group, the parent only {group}")
    full = {"hidden": (1, parent["hidden_size"], target["hidden_size"]),
            "intermediate": (L, parent["intermediate_size"], target["intermediate_size"]),
            "kv_group": (L, K, target["num_key_value_heads"]),
            "head": (L * K, group, target_group),
            "layer": (1, L, target["num_hidden_layers"])}
    return {name: spec for name, spec in full.items()
            if spec[2] < spec[1] or (name == "layer" and prune_layers)}


class ShearingMasks(nn.Module):
    """The masks of one parent -> target pruning, the Lagrange multipliers and the current z of each mask."""

    def __init__(self, parent: dict, target: dict, prune_layers: bool = False, device=None):
        super().__init__()
        self.parent, self.target = parent, target
        self.head_dim = parent["head_dim"]
        self.masks = nn.ModuleDict({name: HardConcrete(*spec, device=device)
                                    for name, spec in mask_specs(parent, target, prune_layers).items()})
        self.lambdas = nn.ParameterDict({f"{name}_{k}": nn.Parameter(torch.zeros((), device=device))
                                         for name in self.masks for k in ("lambda1", "lambda2")})
        self.z: dict[str, torch.Tensor] = {}

    # ---------------------------------------------------------------- current z
    def sample_(self, generator: torch.Generator | None = None) -> None:
        """Draw one z per mask (shared by the whole batch, as in the authors' code)."""
        self.z = {name: mask.sample(generator) for name, mask in self.masks.items()}

    @torch.no_grad()
    def fix_(self) -> None:
        """Use the binarized deterministic masks (the child's exact function)."""
        self.z = {name: mask.deterministic() for name, mask in self.masks.items()}

    def hidden_z(self) -> torch.Tensor | None:
        return self.z["hidden"][0] if "hidden" in self.z else None

    def residual_z(self, layer: int) -> torch.Tensor | float | None:
        """What multiplies the layer's contributions to the residual stream: hidden z times layer z."""
        hidden, scale = self.hidden_z(), None
        if "layer" in self.z:
            scale = self.z["layer"][0, layer]
        if hidden is None:
            return scale
        return hidden if scale is None else hidden * scale

    def head_z(self, layer: int) -> torch.Tensor | None:
        """Per query head (Q,): its KV group's z times its own z; None when heads are not masked."""
        heads = self.parent["num_attention_heads"]
        group = heads // self.parent["num_key_value_heads"]
        z = None
        if "kv_group" in self.z:
            z = self.z["kv_group"][layer].repeat_interleave(group)
        if "head" in self.z:
            own = self.z["head"].view(-1, heads)[layer]
            z = own if z is None else z * own
        return z

    def intermediate_z(self, layer: int) -> torch.Tensor | None:
        return self.z["intermediate"][layer] if "intermediate" in self.z else None

    # ---------------------------------------------------------------- Lagrangian
    def gaps(self, progress: float, warmup: float) -> dict[str, torch.Tensor]:
        """Per structure and row: (E[kept] - target at this point of the warm-up) / size."""
        ramp = 1.0 if warmup <= 0 else min(1.0, progress / warmup)
        out = {}
        for name, mask in self.masks.items():
            target_now = mask.size - (mask.size - mask.target) * ramp
            out[name] = (mask.expected_kept() - target_now) / mask.size
        return out

    def lagrangian(self, progress: float, warmup: float) -> torch.Tensor:
        """Sum over structures of mean_rows(lambda1 * gap + lambda2 * gap^2)."""
        total = torch.zeros((), device=self.lambdas_device())
        for name, gap in self.gaps(progress, warmup).items():
            l1, l2 = self.lambdas[f"{name}_lambda1"], self.lambdas[f"{name}_lambda2"]
            total = total + (l1 * gap + l2 * gap.pow(2)).mean()
        return total

    def lambdas_device(self):
        return next(iter(self.lambdas.values())).device if len(self.lambdas) else None

    @torch.no_grad()
    def expected_sizes(self) -> dict[str, float]:
        """Mean expected kept count per row of every structure (compare with the targets)."""
        return {name: mask.expected_kept().mean().item() for name, mask in self.masks.items()}

    def final_gap(self) -> float:
        """Sum over structures of |E[kept] - target| / size (row mean): 0 when the expected shape is the target."""
        with torch.no_grad():
            return sum(gap.abs().mean().item() for gap in self.gaps(1.0, 0.0).values())

    def constrain_(self) -> None:
        for mask in self.masks.values():
            mask.constrain_()


# -------------------------------------------------------------------- hooks on the stock Llama
def _rescaled_norm_hook(masks: ShearingMasks):
    """RMSNorm output with the mean square over unmasked channels only, times hidden z."""
    def hook(module, args, output):
        z = masks.hidden_z()
        x = args[0].float()
        eps = module.variance_epsilon
        kept = (z != 0).sum().clamp(min=1)
        mean_sq = x.pow(2).mean(-1, keepdim=True)
        mean_sq_kept = mean_sq * (x.shape[-1] / kept)
        factor = torch.sqrt((mean_sq + eps) / (mean_sq_kept + eps))
        return output * factor.to(output.dtype) * z.to(output.dtype)
    return hook


def _scale_output(get_z):
    def hook(module, args, output):
        z = get_z()
        return output if z is None else output * z.to(output.dtype)
    return hook


def _scale_heads(masks: ShearingMasks, layer: int):
    def pre_hook(module, args):
        z = masks.head_z(layer)
        if z is None:
            return None
        return (args[0] * z.repeat_interleave(masks.head_dim).to(args[0].dtype),) + tuple(args[1:])
    return pre_hook


@contextmanager
def masked(model: nn.Module, masks: ShearingMasks):
    """Apply ``masks.z`` to the forward of a stock ``LlamaForCausalLM`` while inside the block."""
    inner, handles = model.model, []
    if "hidden" in masks.masks:
        handles.append(inner.embed_tokens.register_forward_hook(_scale_output(masks.hidden_z)))
        norms = [inner.norm] + [n for layer in inner.layers for n in (layer.input_layernorm,
                                                                      layer.post_attention_layernorm)]
        handles += [norm.register_forward_hook(_rescaled_norm_hook(masks)) for norm in norms]
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        handles.append(attn.o_proj.register_forward_pre_hook(_scale_heads(masks, i)))
        handles.append(attn.o_proj.register_forward_hook(_scale_output(lambda i=i: masks.residual_z(i))))
        handles.append(mlp.up_proj.register_forward_hook(_scale_output(lambda i=i: masks.intermediate_z(i))))
        handles.append(mlp.down_proj.register_forward_hook(_scale_output(lambda i=i: masks.residual_z(i))))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
