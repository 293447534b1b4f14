"""One optimizer step of the trainer, shared by ``pvs.train`` and ``benchmarks/gpu_train.py``.

    step = TrainStep(model, optimizer, masks, grad_clip=1.0, autocast=..., loss_chunk_tokens=None)
    loss, grad_norm = step(micro_batches, lr)            # device tensors; read them once per step

What one step does: for each micro-batch (x, y) of this process's share of the global batch, forward,
next-token cross-entropy (mean over the micro-batch's tokens) and backward of loss x micro / local, so the
gradient is the mean over the share; then the sparse masks zero the gradients of pruned weights
(pvs.modeling.mask_grads_), the global norm is clipped, AdamW steps, gradients are dropped and the masks
re-applied. The step's loss is accumulated on the device in float64 (``acc += loss * micro / local``, the
same arithmetic as the former per-micro-batch ``loss.item()``), so no micro-batch waits for the host; the
caller reads it once per step.

Switches (``train.*`` in the config; off = the plain path, numerically identical to before):
  * ``loss_chunk_tokens`` (``chunked_cross_entropy``): the LM head and cross-entropy run over chunks of that
    many tokens inside one custom autograd function that also computes the gradients chunk by chunk, so no
    (tokens x vocab) fp32 logits tensor of a whole micro-batch ever exists (forward or backward); the
    largest logits tensor is (chunk x vocab). It runs inside the head's own call (``model.lm_head``), so
    FSDP2 gathers and reduces the head's weight as for the plain path.
  * ``compile: layers`` (``compile_layers``): every decoder layer ``.compile()``-d in place (same parameter
    names), before FSDP2 shards it (torchtitan's order); ``compile: true`` compiles the whole model (as before).
    ``compile_cache_dir`` (``use_compile_cache``): inductor's on-disk cache, shared by a study's jobs.
    ``compile_min_tokens`` (``pvs.train.trainer.compile_mode``): shorter runs stay eager. The trainer's
    validation passes always run eagerly (``validation_loss``), so a job compiles the training graph only.
  * ``prefetch_batches`` (``Batches``): the next step's windows are read (and pinned on CUDA) in a background
    thread while the current step computes; the copies to the GPU are non-blocking.
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from pvs.modeling import apply_masks_, mask_grads_


# ---------------------------------------------------------------- chunked LM head + cross-entropy
class _ChunkedHeadLoss(torch.autograd.Function):
    """Sum over tokens of cross_entropy(hidden @ W.T + b, labels), computed and differentiated per chunk.

    Forward keeps only the (tokens,) log-sum-exp values; backward recomputes each chunk's logits, forms
    softmax - onehot and accumulates grad_hidden and grad_W. Each chunk's logits are computed in the dtype
    the ambient autocast gives the head (bf16 under bf16 autocast) and upcast to fp32, like the plain path.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int, ignore_index: int):
        total, lse, compute_dtype = None, None, None
        for start in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[start:start + chunk], weight, bias)
            if compute_dtype is None:                      # fp32 (float64 stays float64, for gradcheck)
                compute_dtype, loss_dtype = logits.dtype, torch.promote_types(logits.dtype, torch.float32)
                total = hidden.new_zeros((), dtype=loss_dtype)
                lse = hidden.new_empty(hidden.shape[0], dtype=loss_dtype)
            logits = logits.to(loss_dtype)
            lse[start:start + chunk] = torch.logsumexp(logits, dim=-1)
            total = total + F.cross_entropy(logits, labels[start:start + chunk], reduction="sum",
                                            ignore_index=ignore_index)
            del logits
        ctx.save_for_backward(hidden, weight, bias if bias is not None else hidden.new_empty(0), labels, lse)
        ctx.chunk, ctx.ignore_index, ctx.has_bias, ctx.compute_dtype = chunk, ignore_index, bias is not None, \
            compute_dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        dtype = ctx.compute_dtype
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden)
        acc_dtype = lse.dtype
        grad_weight = torch.zeros_like(weight, dtype=acc_dtype)
        grad_bias = torch.zeros_like(bias, dtype=acc_dtype) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start:start + ctx.chunk].to(dtype)
            y = labels[start:start + ctx.chunk]
            logits = F.linear(h, w, b).to(acc_dtype)
            grad = torch.exp(logits - lse[start:start + ctx.chunk, None])          # softmax
            del logits
            valid = (y != ctx.ignore_index).to(acc_dtype)
            grad[torch.arange(len(y), device=y.device), y.clamp(min=0)] -= valid
            grad = (grad * (valid[:, None] * grad_total)).to(dtype)
            grad_hidden[start:start + ctx.chunk] = (grad @ w).to(hidden.dtype)
            grad_weight += (grad.t() @ h).to(acc_dtype)
            if grad_bias is not None:
                grad_bias += grad.to(acc_dtype).sum(0)
            del grad
        return (grad_hidden, grad_weight.to(weight.dtype),
                grad_bias.to(bias.dtype) if grad_bias is not None else None, None, None, None)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          labels: torch.Tensor, chunk: int, ignore_index: int = -100) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden`` (..., d) under the head (weight, bias), ``chunk`` tokens at
    a time in forward and backward; equals ``cross_entropy(linear(hidden).float(), labels)``."""
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    total = _ChunkedHeadLoss.apply(hidden, weight, bias, labels, chunk, ignore_index)
    return total / (labels != ignore_index).sum().clamp(min=1)


@contextlib.contextmanager
def head_returns_loss(model, labels: torch.Tensor, chunk: int):
    """Within the block, ``model.lm_head(hidden)`` returns the chunked loss of ``labels`` instead of logits.

    The patch is on the instance, so the head's module hooks (FSDP2's gather before and reduce after) still
    run around it, and the model's own forward (the FSDP2 root's hooks included) is used unchanged: the
    ``.logits`` of its output is the loss.
    """
    head = model.lm_head

    def forward(hidden):
        return chunked_cross_entropy(hidden, head.weight, head.bias, labels, chunk)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward


def micro_batch_loss(forward, model, x: torch.Tensor, y: torch.Tensor, autocast,
                     loss_chunk_tokens: int | None = None) -> torch.Tensor:
    """Mean next-token loss of one micro-batch (``forward``: the model or its whole-model compiled twin).

    ``use_cache=False``: training needs no KV cache, and HF's default (``config.use_cache``) would build a
    DynamicCache in every forward; the loss is the same, and compiled layers do not recompile per layer
    over the cache's state (which, past torch._dynamo's recompile limit of 8, left the rest eager)."""
    if loss_chunk_tokens:
        with head_returns_loss(model, y, loss_chunk_tokens), autocast():
            return forward(input_ids=x, use_cache=False).logits
    with autocast():
        logits = forward(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))


# ---------------------------------------------------------------- compile
def use_compile_cache(path) -> None:
    """Point inductor's on-disk cache (compiled kernels, FX graphs, AOT autograd) at ``path``, so every job of
    a study (every job of one shape, after the first) reuses the compiled layers; call before the first
    compile. Without it torch's default applies: $TORCHINDUCTOR_CACHE_DIR, else /tmp/torchinductor_$USER
    (shared by the jobs of one machine)."""
    cache = Path(path).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)


def compile_layers(model) -> None:
    """``torch.compile`` each decoder layer in place (``nn.Module.compile``: parameter names unchanged);
    call before sharding (FSDP2 then wraps the compiled layers, as torchtitan orders it)."""
    for layer in model.model.layers:
        layer.compile()


def compiled_forward(model, mode):
    """What the step calls for a forward: the model (``compile`` false or 'layers') or torch.compile(model)."""
    return torch.compile(model) if mode is True else model


# ---------------------------------------------------------------- the step
class TrainStep:
    """Forward/backward over the micro-batches of one optimizer step, gradient masking, clipping, AdamW,
    mask re-application. ``__call__`` returns (summed loss, grad norm) as device tensors (no host sync)."""

    def __init__(self, model, optimizer, masks, grad_clip: float, autocast, forward=None,
                 loss_chunk_tokens: int | None = None):
        self.model, self.optimizer, self.masks, self.grad_clip = model, optimizer, masks, grad_clip
        self.autocast, self.forward, self.loss_chunk_tokens = autocast, forward or model, loss_chunk_tokens

    def __call__(self, micro_batches, lr: float):
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        local = sum(len(x) for x, _ in micro_batches)
        acc = None
        for x, y in micro_batches:
            loss = micro_batch_loss(self.forward, self.model, x, y, self.autocast, self.loss_chunk_tokens)
            micro = len(x)
            (loss * (micro / local)).backward()
            part = loss.detach().to(_acc_dtype(loss.device)) * micro / local
            acc = part if acc is None else acc + part
        mask_grads_(self.model, self.masks)       # pruned positions: no gradient, no clip share, no moments
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        apply_masks_(self.model, self.masks)
        return acc, grad_norm


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


# ---------------------------------------------------------------- batches
class Batches:
    """This process's micro-batches of each step: ``get(step)`` -> [(x, y), ...] on ``device``.

    ``order`` is the run's window permutation; step s reads windows order[s*batch:(s+1)*batch][rank::world]
    in micro-batches of ``micro``. With ``prefetch`` a background thread reads step s+1's windows (pinned
    when the device is CUDA) while step s computes; the result equals the synchronous read.
    """

    def __init__(self, stream, order, batch_size: int, seq_len: int, micro: int, rank: int, world: int,
                 device: torch.device, prefetch: bool = False):
        self.stream, self.order, self.batch_size, self.seq_len = stream, order, batch_size, seq_len
        self.micro, self.rank, self.world, self.device = micro, rank, world, device
        self.pin = prefetch and device.type == "cuda"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="pvs-batches") if prefetch else None
        self.pending: dict = {}

    def read(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Step ``step``'s micro-batches as CPU tensors (pinned with prefetch on CUDA)."""
        mine = self.order[step * self.batch_size:(step + 1) * self.batch_size][self.rank::self.world]
        out = []
        for first in range(0, len(mine), self.micro):
            x, y = self.stream.windows(mine[first:first + self.micro], self.seq_len)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            if self.pin:
                x, y = x.pin_memory(), y.pin_memory()
            out.append((x, y))
        return out

    def get(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.pool is None:
            cpu = self.read(step)
        else:
            future = self.pending.pop(step, None)
            cpu = future.result() if future is not None else self.read(step)
            if (step + 1) * self.batch_size < len(self.order):
                self.pending[step + 1] = self.pool.submit(self.read, step + 1)
        return [(x.to(self.device, non_blocking=self.pin), y.to(self.device, non_blocking=self.pin))
                for x, y in cpu]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
