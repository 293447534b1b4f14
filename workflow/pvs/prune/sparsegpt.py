"""SparseGPT (arXiv 2301.00774): one-shot unstructured and N:M pruning by layer-wise OBS reconstruction.

Decoder layers are pruned in order. The inputs of layer i are the calibration hidden states after the
*already pruned* layers 0..i-1 (captured once at layer 0 with a pre-hook, then pushed through each layer
after it is pruned), so only one layer's inputs are held at a time. For every block linear (q, k, v, o,
gate, up, down) forward hooks accumulate H = X Xᵀ / tokens in fp32; then, per weight matrix W (rows =
outputs, columns = inputs):

* dead inputs (zero diagonal of H) get H_jj = 1 and W[:, j] = 0;
* H is dampened by ``prune.<method>.dampening`` × mean(diag H) (multiplied by 10 and retried if the Cholesky
  factorisation still fails) and U = chol((H + λI)⁻¹) (upper) is computed once;
* columns are processed in blocks of ``prune.<method>.blocksize``. Adaptive mask selection: at the start
  of a block the weights to prune are those with the smallest w² / U_jj², over the whole block, using
  the weights as updated so far. Unlike the reference threshold, the count per block is exact
  (cumulative rounding of ratio × rows × columns), so every matrix ends with exactly
  round(ratio × rows × columns) zeros. For N:M the choice is made per group of M consecutive columns
  in each row (keep the N best, prune M − N) when the loop reaches the group; the block size is rounded
  down to a multiple of M so groups never straddle blocks. A trailing partial group of g < M columns
  (when M does not divide the width) keeps round(N g / M);
* each pruned column's error is spread over the remaining columns of the block with the OBS update
  (row i of U), and the block's accumulated error over all later columns with one matmul.

With ``prune.<method>.true_sequential`` (off by default, as in the reference) the linears of a layer are
pruned in four groups — qkv, o, gate/up, down — each group's inputs taken from the layer with the
earlier groups already pruned. Memory: the model plus one layer's calibration activations, one H per
linear of the current layer (an 8B Llama in fp32 with 128 × 2048 calibration tokens fits one 80 GB GPU);
layer-by-layer CPU offloading of the model is not implemented.

``magnitude_prune`` is the plain per-matrix magnitude baseline (same exact counts and N:M groups).

**What N:M means here.** N weights are *kept* in every group of M consecutive weights along a row's inputs
(M − N pruned), so the sparsity is 1 − N/M. ``prune.sparsegpt_nm.patterns`` maps each ratio to its pattern:
2:4 at 0.5 (the paper's "SparseGPT 2:4"), 2:5 at 0.6, 3:10 at 0.7 and 1:5 at 0.8. The paper names only 2:4;
the patterns for 0.6–0.8 are this project's choice (the smallest M that gives the ratio exactly; no M <= 5
gives 0.7, hence 3:10). They are **not hardware patterns**: only 2:4 runs on NVIDIA's sparse tensor cores;
2:5, 3:10 and 1:5 are stored and computed densely (zeros in a dense matrix), so they save neither time nor
memory. They serve the study as semi-structured sparsity at those ratios, nothing more.
"""
from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from pvs.prune import registry
from pvs.prune.common import PruneResult, capture_layer_inputs, decoder_layers, log, run_layer

BLOCK_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
SEQUENTIAL_GROUPS = (BLOCK_LINEARS[:3], BLOCK_LINEARS[3:4], BLOCK_LINEARS[4:6], BLOCK_LINEARS[6:])
DAMP_RETRIES = 6


def option(options: dict, key: str):
    """An option of ``prune.sparsegpt`` / ``prune.sparsegpt_nm`` (the same defaults in both records)."""
    return registry.option("sparsegpt", options, key)


# ---------------------------------------------------------------- N:M patterns and mask selection
def parse_nm(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4): keep N of every M consecutive input weights; raises ValueError naming the pattern."""
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"N:M pattern {pattern!r} is not of the form 'N:M'") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern {pattern!r}: need 0 < N < M")
    return n, m


def resolve_nm(nm_patterns: dict, ratio: float) -> tuple[int, int]:
    """The (N, M) configured for ``ratio`` in ``prune.sparsegpt_nm.patterns`` (keys are ratios as strings)."""
    for key, pattern in nm_patterns.items():
        if abs(float(key) - ratio) < 1e-9:
            return parse_nm(pattern)
    raise ValueError(f"sparsegpt_nm: no N:M pattern for ratio {ratio!r} in prune.sparsegpt_nm.patterns "
                     f"(configured: {', '.join(f'{k} -> {v}' for k, v in nm_patterns.items())})")


def group_keep(n: int, m: int, width: int) -> int:
    """Weights kept in a group of ``width`` columns: N for a full group, round(N * width / M) for a partial one."""
    return n if width == m else round(n * width / m)


def smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Bool mask (True = prune) of exactly the ``count`` smallest scores of the whole tensor."""
    prune = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        prune[torch.topk(scores.flatten(), count, largest=False).indices] = True
    return prune.view_as(scores)


def nm_prune_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask (True = prune): in each row, every group of M consecutive columns loses its M - N smallest."""
    rows, cols = scores.shape
    prune = torch.zeros_like(scores, dtype=torch.bool)
    for start in range(0, cols, m):
        group = scores[:, start:start + m]
        drop = group.shape[1] - group_keep(n, m, group.shape[1])
        if drop > 0:
            idx = torch.topk(group, drop, dim=1, largest=False).indices
            prune[:, start:start + m].scatter_(1, idx, True)
    return prune


# ---------------------------------------------------------------- one weight matrix
class HessianAccumulator:
    """Forward hook summing X Xᵀ (fp32) over every token that enters a linear layer."""

    def __init__(self, linear: torch.nn.Linear):
        cols = linear.in_features
        self.sum = torch.zeros(cols, cols, dtype=torch.float32, device=linear.weight.device)
        self.tokens = 0

    def __call__(self, module, inputs, output) -> None:
        x = inputs[0].detach().reshape(-1, self.sum.shape[0]).float()
        self.sum.addmm_(x.T, x)
        self.tokens += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return self.sum / max(self.tokens, 1)


def inverse_cholesky(H: torch.Tensor, dampening: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + λ I)⁻¹ with λ = dampening × mean(diag H); λ grows 10× until H is PD."""
    mean_diag = torch.diag(H).mean().item()
    for attempt in range(DAMP_RETRIES):
        damp = dampening * 10 ** attempt
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * torch.eye(len(H), device=H.device))
        if info.item() == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True), damp
    raise RuntimeError(f"SparseGPT: Hessian not positive definite even with dampening {damp}")


@torch.no_grad()
def obs_prune(W: torch.Tensor, H: torch.Tensor, ratio: float, blocksize: int, dampening: float,
              nm: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SparseGPT on one matrix: returns (pruned weights fp32, keep mask, stats)."""
    W0 = W.float()
    W = W0.clone()
    rows, cols = W.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U, damp = inverse_cholesky(H, dampening)
    if nm is not None:
        blocksize = max(nm[1], blocksize // nm[1] * nm[1])
    total = round(ratio * rows * cols)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        keep[:, i1:i2] = ~_prune_block(W, U, i1, i2, nm, round(total * i2 / cols) - round(total * i1 / cols))
    H0 = H.clone()
    H0[dead, dead] = 0.0
    delta = W - W0
    error = torch.sum((delta @ H0) * delta).item()
    base = torch.sum((W0 @ H0) * W0).item()
    stats = {"sparsity": 1.0 - keep.float().mean().item(), "rel_error": error / base if base > 0 else 0.0,
             "error": error, "dampening": damp, "dead_inputs": int(dead.sum())}
    return W, keep, stats


def _prune_block(W: torch.Tensor, U: torch.Tensor, i1: int, i2: int, nm: tuple[int, int] | None,
                 count: int) -> torch.Tensor:
    """Prune columns i1..i2-1 of W in place (OBS updates inside and after the block); returns the prune mask."""
    W1 = W[:, i1:i2].clone()
    U1 = U[i1:i2, i1:i2]
    d = torch.diag(U1)
    errors = torch.zeros_like(W1)
    if nm is None:
        prune = smallest(W1 ** 2 / d ** 2, count)
    else:
        prune = torch.zeros_like(W1, dtype=torch.bool)
    for i in range(i2 - i1):
        if nm is not None and i % nm[1] == 0:
            g = slice(i, min(i + nm[1], i2 - i1))
            prune[:, g] = nm_prune_mask(W1[:, g] ** 2 / d[g] ** 2, *nm)
        w = W1[:, i]
        q = w.masked_fill(prune[:, i], 0.0)
        err = (w - q) / d[i]
        W1[:, i:] -= torch.outer(err, U1[i, i:])
        W1[:, i] = q
        errors[:, i] = err
    W[:, i1:i2] = W1
    W[:, i2:] -= errors @ U[i1:i2, i2:]
    return prune


# ---------------------------------------------------------------- one decoder layer, the whole model
def prune_layer(layer: torch.nn.Module, inputs: list, ratio: float, options: dict,
                nm: tuple[int, int] | None) -> tuple[dict, dict]:
    """SparseGPT on every block linear of ``layer``; returns ({linear: keep mask}, {linear: stats})."""
    groups = SEQUENTIAL_GROUPS if option(options, "true_sequential") else (BLOCK_LINEARS,)
    linears = {name: layer.get_submodule(name) for name in BLOCK_LINEARS}
    masks, stats = {}, {}
    for group in groups:
        accumulators = {name: HessianAccumulator(linears[name]) for name in group}
        handles = [linears[name].register_forward_hook(accumulators[name]) for name in group]
        try:
            for inp in inputs:
                run_layer(layer, inp)
        finally:
            for handle in handles:
                handle.remove()
        for name in group:
            weight = linears[name].weight
            W, keep, stats[name] = obs_prune(weight.data, accumulators.pop(name).hessian(), ratio,
                                             option(options, "blocksize"), option(options, "dampening"), nm)
            weight.data.copy_(W.to(weight.dtype))
            masks[name] = keep
    return masks, stats


@torch.no_grad()
def run_sparsegpt(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict,
                  nm: tuple[int, int] | None) -> PruneResult:
    """Prune every decoder layer in order, feeding each the outputs of the already-pruned layers before it."""
    if not 0 < ratio < 1:
        raise ValueError(f"sparsegpt: ratio {ratio!r} must lie in (0, 1)")
    model.eval()
    module_names = {module: name for name, module in model.named_modules()}
    inputs = capture_layer_inputs(model, calib)
    masks, layer_info = {}, []
    for index, layer in enumerate(tqdm(decoder_layers(model), desc="sparsegpt: layers", file=sys.stderr)):
        layer_masks, layer_stats = prune_layer(layer, inputs, ratio, options, nm)
        for inp in inputs:
            inp.hidden = run_layer(layer, inp)
        prefix = module_names[layer]
        masks.update({f"{prefix}.{name}.weight": keep.cpu() for name, keep in layer_masks.items()})
        kept = sum(int(k.sum()) for k in layer_masks.values())
        numel = sum(k.numel() for k in layer_masks.values())
        layer_info.append({"layer": index, "sparsity": 1 - kept / numel, "linears": layer_stats})
        log(f"sparsegpt: layer {index} sparsity {1 - kept / numel:.4f}, mean rel. reconstruction error "
            f"{sum(s['rel_error'] for s in layer_stats.values()) / len(layer_stats):.4f}")
    kept = sum(int(k.sum()) for k in masks.values())
    numel = sum(k.numel() for k in masks.values())
    info = {"pattern": f"{nm[0]}:{nm[1]}" if nm else None, "sparsity": 1 - kept / numel,
            "blocksize": option(options, "blocksize"), "dampening": option(options, "dampening"),
            "true_sequential": bool(option(options, "true_sequential")), "layers": layer_info}
    return PruneResult(model=model, masks=masks, info=info)


def prune(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """SparseGPT unstructured: every block linear ends with exactly round(ratio × size) zeros."""
    return run_sparsegpt(model, calib, ratio, options, nm=None)


def prune_nm(model: torch.nn.Module, calib: torch.Tensor, ratio: float, options: dict) -> PruneResult:
    """SparseGPT N:M: (N, M) from ``options['nm']``, else resolved from ``prune.sparsegpt_nm.patterns`` by ratio."""
    n, m = options.get("nm") or resolve_nm(registry.option("sparsegpt_nm", options, "patterns"), ratio)
    if abs((1 - n / m) - ratio) > 0.01:
        log(f"sparsegpt_nm: pattern {n}:{m} gives sparsity {1 - n / m:.3f}, not the target ratio {ratio}")
    return run_sparsegpt(model, calib, ratio, options, nm=(n, m))


@torch.no_grad()
def magnitude_prune(model: torch.nn.Module, ratio: float, nm: tuple[int, int] | None = None) -> dict:
    """Baseline: zero the smallest-|w| weights of every block linear (exact count per matrix, or N:M); returns masks."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(s) for s in BLOCK_LINEARS):
            scores = module.weight.abs().float()
            prune = smallest(scores, round(ratio * scores.numel())) if nm is None else nm_prune_mask(scores, *nm)
            module.weight.masked_fill_(prune, 0.0)
            masks[f"{name}.weight"] = (~prune).cpu()
    return masks
