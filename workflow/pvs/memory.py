"""GPU memory of every job of a study's grid, estimated on the CPU with fake tensors (no GPU, no real memory).

    python -m pvs.memory --config configs/paper.yaml              # table; exit 1 when a job does not fit
    python -m pvs.memory --config configs/paper.yaml --json memory.json

For each job type of the grid one real step runs under ``FakeTensorMode`` (shapes and dtypes, no data) and
PyTorch's memory trackers (``torch.distributed._tools``) record the peak bytes on one GPU, the way
torchtitan's scripts/estimate/estimation.py does. Sharded jobs (more than one GPU) run under a fake
process group of the job's world size (GPUs x nodes) with FSDP2 exactly as ``pvs.train.distributed.shard``
applies it and ``FSDPMemTracker``; one-process jobs use ``MemTracker``. Rows:

  train parent / train <method> r<ratio>   parent pretraining; retraining and scratch of each child shape
      (the same trainer, the same memory; sparse children are the dense parent shape plus their masks,
      held as the trainer holds them: fp32 DTensor shards on the GPU when sharded). One micro-batch at
      ``train.micro_batch_size`` (null: batch_size / world) x ``train.seq_len``: forward, the trainer's
      loss (cross_entropy on fp32 logits), backward, clip, AdamW step, zero_grad, mask re-application.
      AdamW state exists before the step (every step but the first); with gradient accumulation the
      sharded gradients and the previous micro-batch's logits are alive too (the trainer's ``logits``
      variable). bf16 = FSDP2 MixedPrecisionPolicy(bf16 params, fp32 reduce) sharded, autocast in one process.
  sheared_llama masks r<ratio>   one mask-learning step of pvs.prune.sheared.learn_masks under FSDP2 on
      ``cluster.gpus.sheared``: the parent trained with its hard-concrete masks, hooks, Lagrangian, AdamW
      over weights + masks + multipliers, ``prune.sheared_llama.batch_size`` / world windows of ``prune.sheared_llama.seq_len``.
  prune sparsegpt(_nm)   the fp32 parent on one GPU, the first decoder layer's inputs for every
      calibration window (``calib_windows`` x ``calib_seq_len``), its seven Hessian accumulators (fp32
      in_features^2 each), one layer pass per calibration batch, then the allocations of ``obs_prune`` on
      each linear (copies of W and H, the damped H, its Cholesky factors, the keep mask, the block and
      error updates). Every later layer repeats the same peak.
  prune minitron_depth / minitron_width / flap   the fp32 parent plus one ``lm_loss`` batch (logits
      included) and, for width and FLAP, one calibration batch through the project's own statistics pass
      (``activation_importance`` / ``input_statistics``, hooks and per-channel sums included).
  evaluate   the largest evaluated model (the parent shape) in ``evaluate.dtype``, one forward of
      ``evaluate.batch_size`` x ``train.seq_len`` as pvs.evaluate.score.token_nll runs it (fp32 logits copy,
      per-token cross-entropy).
Sheared-LLaMA's start-up is counted too: its prune job loads the whole fp32 parent on each GPU before
``fully_shard``: peak = max(step, start-up). The trainer no longer does that (it builds on the meta device,
shards, then initializes or loads with rank 0 broadcasting), so its start-up is zero.

Attention. The CPU's SDPA would materialize seq x seq scores. Here attention is ``flash_attention_memory``:
forward allocates the output (B, S, H, D) in the compute dtype and the fp32 logsumexp (B, H, S), and saves
q, k, v, output and logsumexp for backward; backward allocates dq, dk, dv, FlashAttention-2's fp32 dq
accumulator (B, S, H, D) and softmax row sums (B, H, S), and with GQA the expanded dk, dv (B, S, H, D) that it
sums over each group. No tensor of size seq^2 is counted. (The memory-efficient kernel that CUDA uses for
fp32 saves the same output + logsumexp.) ``--target cpu`` counts the stock SDPA kernel instead, and the
single-tensor AdamW a CPU runs (the calibration); ``gpu`` (the default) also runs AdamW as foreach, torch's
default on CUDA. Under fake tensors the tracker would count DTensor ops at their global size, so clipping,
AdamW and mask re-application run on this rank's local shards (what DTensor dispatches to on a GPU), and
clipping is per tensor (the foreach norm differs only by scalars). no_grad stands in for evaluation's
inference_mode (same memory; under inference_mode the tracker misses ops inside composite ones).

Vocabulary: 128256 when ``data.tokenizer`` or ``parent.pretrained`` names a Llama-3 tokenizer, else
``data.vocab_size``.

Not counted: the CUDA context and NCCL buffers (~1-3 GiB per GPU; the limit should leave that), allocator
fragmentation (``benchmarks/gpu_check.sh`` compares with torch.cuda.max_memory_reserved), torch.compile
workspaces, lm-eval's own batches (shorter than train.seq_len), Sheared-LLaMA's rank-0 cut after mask
learning, host memory.

Calibration (benchmarks/memory_calibration.py -> benchmarks/results/memory_calibration.json): hidden 256,
4 layers, vocab 2048, batch 8 x 256, fp32, one process, the CPU's SDPA (``--target cpu``), one training step
with AdamW state: estimated increase 238.3 MiB against a measured peak-RSS increase of 238.8 MiB (-0.2 %)
when glibc returns freed blocks to the OS (MALLOC_MMAP_THRESHOLD_=131072), and 282 MiB (-15.5 %) with its
default allocator, whose freed blocks stay in the heap. So the estimate counts the live tensors within
CALIBRATION_ERROR; what an allocator adds on top (up to ALLOCATOR_OVERHEAD on this CPU; on a GPU the caching
allocator's reserved - allocated gap) is not counted: leave headroom below cluster.gpu_memory_gib.
"""
from __future__ import annotations

import json
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import AttentionInterface, LlamaForCausalLM
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pvs.cli import doc_parser
from pvs.config import load_config
from pvs.modeling import llama_config
from pvs.prune.common import BATCH_WINDOWS, LOGITS_BUDGET, capture_layer_inputs, run_layer
from pvs.prune.registry import job_options
from pvs.prune.shapes import CHILD_BIASES, SPARSE, parent_shape, solve_configured
from pvs.train import distributed

GIB = 2 ** 30
LLAMA3_VOCAB = 128256
FLASH = "pvs_fa2_memory"         # (a name with "flash" in it would send transformers to its kernels)
CALIBRATION_ERROR = 0.03      # |estimate - peak RSS| / peak RSS, live tensors (benchmarks/memory_calibration.py)
ALLOCATOR_OVERHEAD = 0.25     # how far below peak RSS the estimate may be under glibc's default malloc
ATTENTION = {"gpu": FLASH, "cpu": "sdpa"}     # --target -> the attention implementation counted
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# ---------------------------------------------------------------- attention with flash attention's memory
class _FlashAttentionMemory(torch.autograd.Function):
    """Allocates what FlashAttention-2 allocates (see the module docstring); computes nothing (fake tensors only)."""

    @staticmethod
    def forward(ctx, q, k, v):
        if not isinstance(q, FakeTensor):
            raise RuntimeError("flash_attention_memory only runs on fake tensors (memory estimation)")
        b, h, s, d = q.shape
        out = q.new_empty(b, s, h, d)
        lse = q.new_empty(b, h, s, dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        b, h, s, d = q.shape
        softmax_d = torch.empty_like(lse)
        dq_accum = q.new_empty(b, s, h, d, dtype=torch.float32)
        dq = torch.empty_like(q)
        if k.shape[1] == h:
            dk, dv = torch.empty_like(k), torch.empty_like(v)
        else:                           # GQA: per-query-head dk, dv, then summed over each group
            dk_expanded, dv_expanded = q.new_empty(b, s, h, d), q.new_empty(b, s, h, d)
            groups = h // k.shape[1]
            dk = dk_expanded.view(b, s, k.shape[1], groups, d).sum(3).transpose(1, 2)
            dv = dv_expanded.view(b, s, k.shape[1], groups, d).sum(3).transpose(1, 2)
            del dk_expanded, dv_expanded
        del softmax_d, dq_accum
        return dq, dk, dv


def flash_attention_memory(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           is_causal=None, **kwargs):
    """A transformers attention function (causal, no mask) with FlashAttention-2's memory."""
    return _FlashAttentionMemory.apply(query, key, value), None


AttentionInterface.register(FLASH, flash_attention_memory)
AttentionMaskInterface.register(FLASH, sdpa_mask)     # no mask tensor when causal attention suffices


# ---------------------------------------------------------------- the jobs of a grid
@dataclass(frozen=True)
class Job:
    """One job type: what runs, at which model shape, on how many GPUs, and the config key that sizes it."""
    name: str
    kind: str                 # train | sheared | sparsegpt | minitron_depth | minitron_width | flap | evaluate
    arch: dict
    gpus: int
    key: str
    biases: tuple = (False, False)
    sparse: bool = False
    ratio: float | None = None


def vocab_size(cfg: dict) -> int:
    """128256 when the config names a Llama-3 tokenizer (data.tokenizer or parent.pretrained), else data.vocab_size."""
    names = [cfg["data"].get("tokenizer"), cfg["parent"].get("pretrained")]
    llama3 = any(n and ("llama-3" in n.lower() or "llama3" in n.lower()) for n in names)
    return LLAMA3_VOCAB if llama3 else cfg["data"]["vocab_size"]


def grid_jobs(cfg: dict) -> list[Job]:
    """Every job type of the config's grid (structured children per method and ratio; one row per sparse method)."""
    parent = dict(cfg["parent"]["arch"])
    parent["head_dim"] = parent_shape(parent)["head_dim"]
    gpus, nodes = cfg["cluster"]["gpus"], cfg["cluster"]["nodes"]
    child_world = max(1, gpus["child"]) * nodes["child"]
    jobs = []
    if cfg["parent"]["source"] == "train":
        jobs.append(Job("train parent", "train", parent, max(1, gpus["parent"]) * nodes["parent"],
                        "train.micro_batch_size or cluster.gpus.parent"))
    methods, ratios = cfg["prune"]["methods"], cfg["prune"]["ratios"]
    for method in methods:
        if method in SPARSE:
            jobs.append(Job(f"train {method} (any ratio)", "train", parent, child_world,
                            "train.micro_batch_size or cluster.gpus.child", sparse=True))
            continue
        for ratio in ratios:
            shape = {**parent, **solve_configured(method, ratio, parent, cfg["prune"], vocab_size(cfg)).shape}
            jobs.append(Job(f"train {method} r{ratio}", "train", shape, child_world,
                            "train.micro_batch_size or cluster.gpus.child", CHILD_BIASES.get(method, (False, False))))
    for method in methods:
        if method == "sheared_llama":
            jobs += [Job(f"sheared_llama masks r{ratio}", "sheared", parent, max(1, gpus["sheared"]),
                         "prune.sheared_llama.batch_size or cluster.gpus.sheared", ratio=ratio) for ratio in ratios]
    prune_keys = {"sparsegpt": "prune.calib_windows", "minitron_depth": "prune.calib_seq_len",
                  "minitron_width": "prune.calib_seq_len", "flap": "prune.flap.calib_seq_len"}
    kinds = sorted({"sparsegpt" if m in SPARSE else m for m in methods if m in SPARSE or m in prune_keys},
                   key=list(prune_keys).index)
    for kind in kinds:
        label = "/".join(m for m in methods if m in SPARSE) if kind == "sparsegpt" else kind
        jobs.append(Job(f"prune {label}", kind, parent, 1, prune_keys[kind]))
    jobs.append(Job("evaluate", "evaluate", parent, max(1, gpus["evaluate"]), "evaluate.batch_size"))
    return jobs


# ---------------------------------------------------------------- one job under fake tensors
@contextmanager
def fake_world(world: int):
    """A fake process group of ``world`` ranks (only when world > 1), torn down afterwards."""
    if world > 1:
        from torch.testing._internal.distributed.fake_pg import FakeStore
        dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    try:
        yield
    finally:
        if world > 1:
            dist.destroy_process_group()


def meta_model(job: Job, vocab: int, attention: str, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """The job's Llama on the meta device (weights in ``dtype``) with the attention to count."""
    config = llama_config(job.arch, vocab, 0, 0)
    config.attention_bias, config.mlp_bias = job.biases
    config._attn_implementation = attention
    with torch.device("meta"):
        return LlamaForCausalLM(config).to(dtype)


def block_masks(model) -> dict[str, torch.Tensor]:
    """Bool masks of every block linear (what a sparse child's masks.safetensors holds)."""
    return {f"{name}.weight": torch.ones(m.weight.shape, dtype=torch.bool) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in name}


def _current(tracker) -> int:
    return sum(snap["Total"] for snap in tracker.get_tracker_snapshot().values())


def _peak(tracker) -> int:
    return sum(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())


def _fp32_bytes(model) -> int:
    return sum(p.numel() * 4 for p in model.parameters())


class LocalShards(torch.nn.Module):
    """This rank's shards of a sharded model as plain parameters (sharing storage), for clipping and AdamW.

    Under fake tensors the memory tracker counts DTensor ops at their global size (sharding propagation
    runs in the same fake mode), so the post-backward part of a step (clip, AdamW, masks) runs on the
    local shards: on a GPU, DTensor dispatches those ops to exactly these local ops."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = [model]
        self.shards = torch.nn.ParameterList(
            [torch.nn.Parameter(p.to_local() if hasattr(p, "to_local") else p, requires_grad=p.requires_grad)
             for p in model.parameters()])

    def take_grads(self) -> None:
        for shard, p in zip(self.shards, self.model[0].parameters()):
            shard.grad = None if p.grad is None else (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad)
        self.model[0].zero_grad(set_to_none=True)


def _local(x):
    return x.to_local() if hasattr(x, "to_local") else x


def _foreach(optimizer, gpu: bool) -> None:
    """AdamW's implementation as on the target: foreach on CUDA (torch's default there), single-tensor on a CPU."""
    for group in optimizer.param_groups:
        group["foreach"] = gpu


def _warm_adamw(model, optimizer) -> None:
    """Create AdamW's state (as after the first step) and drop the gradients again."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class RepeatMemTracker(MemTracker):
    """MemTracker that lets a top-level module run forward more than once (one call per calibration batch, as the
    prune code does): the per-module statistics are reset at each repeat; the global peak is kept."""

    def _pre_fw_hook(self, module, inputs) -> None:
        parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
        if module in self.memory_tracking and not self._mod_tracker.is_bw and parents == {"Global"}:
            self.reset_mod_stats()
        super()._pre_fw_hook(module, inputs)


def _tracker(model, optimizer, world: int, inputs: tuple):
    if world > 1:
        tracker = FSDPMemTracker(mod=model, optm=optimizer)
        tracker.track_inputs(inputs)
    else:
        tracker = RepeatMemTracker()
        tracker.track_external(model, optimizer, *inputs)
    return tracker


def train_step(job: Job, cfg: dict, target: str = "gpu", warm: bool = True) -> dict:
    """Peak bytes of one trainer step (pvs.train.trainer._train) on one GPU; ``warm``: AdamW state exists."""
    from pvs.train.trainer import make_optimizer
    recipe, world = cfg["train"], job.gpus
    local = recipe["batch_size"] // world
    micro = min(recipe["micro_batch_size"] or local, local)
    vocab, seq = vocab_size(cfg), recipe["seq_len"]
    model = meta_model(job, vocab, ATTENTION[target])
    bf16 = recipe["precision"] == "bf16"
    with fake_world(world):
        if world > 1:
            distributed.shard(model, bf16=bf16, activation_checkpointing=recipe["activation_checkpointing"])
        elif recipe["activation_checkpointing"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to_empty(device="cpu")
            model.train()
            shards = LocalShards(model)
            host_masks = block_masks(model) if job.sparse else None      # pvs.modeling.load_masks: on the host
            masks = distributed.shard_masks(model, host_masks) if world > 1 else host_masks
            local_masks = {k: _local(m) for k, m in masks.items()} if masks else None
            optimizer = make_optimizer(shards, recipe)
            _foreach(optimizer, target == "gpu")
            if warm:
                _warm_adamw(shards, optimizer)
            x, y = torch.randint(0, vocab, (micro, seq)), torch.randint(0, vocab, (micro, seq))
            inputs = [x, y] + (list(local_masks.values()) if masks and world > 1 else [])
            if local > micro:       # a later micro-batch: sharded grads and the previous logits are alive
                for p in model.parameters():
                    p.grad = torch.zeros_like(p)
                inputs.append(torch.empty(micro, seq, vocab, dtype=torch.bfloat16 if bf16 else torch.float32))
            tracker = _tracker(model, optimizer, world, tuple(inputs))
            before = _current(tracker)
            autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 and world == 1 else nullcontext
            with tracker:
                with autocast():
                    logits = model(input_ids=x).logits
                loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
                (loss * (micro / local)).backward()
                shards.take_grads()
                torch.nn.utils.clip_grad_norm_(shards.parameters(), recipe["grad_clip"], foreach=False)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                _apply_local_masks(shards, model, local_masks)
            startup = 0        # the trainer builds on the meta device and shards before allocating (rank start-up)
    return {"step": _peak(tracker), "before": before, "startup": startup, "micro_batch": micro}


def _apply_local_masks(shards: LocalShards, model, masks: dict | None) -> None:
    """pvs.modeling.apply_masks_ on this rank's shards (a one-process mask is cast to the weight's dtype, as there)."""
    if not masks:
        return
    names = [name for name, _ in model.named_parameters()]
    by_name = dict(zip(names, shards.shards))
    with torch.no_grad():
        for name, mask in masks.items():
            by_name[name].mul_(mask.to(dtype=by_name[name].dtype))


def sheared_step(job: Job, cfg: dict, target: str = "gpu") -> dict:
    """Peak bytes of one Sheared-LLaMA mask-learning step (pvs.prune.sheared.learn_masks) on one GPU."""
    from pvs.prune.sheared import build_optimizer
    from pvs.prune.sheared_masks import ShearingMasks, masked
    prune, world = cfg["prune"], job.gpus
    options = job_options("sheared_llama", prune)
    seq = options["seq_len"] or options["calib_seq_len"]
    micro = max(1, options["batch_size"] // world)
    vocab = vocab_size(cfg)
    model = meta_model(job, vocab, ATTENTION[target])
    shape = parent_shape(job.arch)
    child = solve_configured("sheared_llama", job.ratio, job.arch, cfg["prune"], vocab_size(cfg)).shape
    prune_layers = options["prune_layers"] or child["num_hidden_layers"] < shape["num_hidden_layers"]
    with fake_world(world):
        if world > 1:
            distributed.shard(model, bf16=cfg["train"]["precision"] == "bf16",
                              activation_checkpointing=cfg["train"]["activation_checkpointing"])
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to_empty(device="cpu")
            shards = LocalShards(model)
            masks = ShearingMasks(shape, {**shape, **child}, prune_layers, device="cpu")
            optimizer = build_optimizer(shards, masks, options)
            _foreach(optimizer, target == "gpu")
            _warm_adamw(torch.nn.ModuleDict({"m": shards, "z": masks}), optimizer)
            model.train()
            batch = torch.randint(0, vocab, (micro, seq))
            tracker = _tracker(model, optimizer, world, (batch, *masks.parameters()))
            with tracker, masked(model, masks):
                masks.sample_(None)
                lm = model(input_ids=batch, labels=batch, use_cache=False).loss
                lag = masks.lagrangian(0.5, options["lagrangian_warmup"])
                (lm + lag).backward()
                shards.take_grads()
                distributed.average_grads_(masks.parameters(), distributed.current())
                torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 1.0, foreach=False)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                masks.constrain_()
            startup = _fp32_bytes(model) if world > 1 else 0   # load_model(..., device) before fully_shard
    return {"step": _peak(tracker), "startup": startup, "micro_batch": micro}


def _lm_loss_batch(model, seq: int) -> None:
    """One batch of pvs.prune.common.lm_loss (its batch size rule, fp32 logits, summed cross-entropy)."""
    batch = max(1, min(BATCH_WINDOWS, LOGITS_BUDGET // (seq * model.config.vocab_size)))
    x = torch.randint(0, model.config.vocab_size, (batch, seq))
    logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
    torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1), reduction="sum")


def _obs_prune_allocations(W: torch.Tensor, H: torch.Tensor, blocksize: int) -> None:
    """The tensors pvs.prune.sparsegpt.obs_prune allocates on one matrix (its arithmetic, without the column loop)."""
    W0 = W.float()
    W = W0.clone()
    H = H.clone()
    eye = torch.eye(len(H))
    L, _ = torch.linalg.cholesky_ex(H + 0.01 * eye)
    U = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    del L, eye
    keep = torch.ones_like(W, dtype=torch.bool)
    i2 = min(blocksize, W.shape[1])
    W1, errors = W[:, :i2].clone(), torch.zeros_like(W[:, :i2])
    W[:, i2:] -= errors @ U[:i2, i2:]
    del W1, errors
    H0 = H.clone()
    delta = W - W0
    torch.sum((delta @ H0) * delta)
    torch.sum((W0 @ H0) * W0)
    del H0, delta
    return W, keep


def prune_step(job: Job, cfg: dict, target: str = "gpu") -> dict:
    """Peak bytes of a layer-by-layer prune job (fp32 parent on one GPU, no gradients)."""
    from pvs.prune.flap import input_statistics
    from pvs.prune.sparsegpt import HessianAccumulator
    from pvs.prune.width import activation_importance
    prune = cfg["prune"]
    seq = job_options(job.kind, prune)["calib_seq_len"]     # the method's own calibration length
    vocab = vocab_size(cfg)
    model = meta_model(job, vocab, ATTENTION[target])
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        model.eval()
        tracker = _tracker(model, None, 1, ())
        with tracker, torch.no_grad():
            if job.kind == "sparsegpt":
                calib = torch.randint(0, vocab, (prune["calib_windows"], seq))
                inputs = capture_layer_inputs(model, calib)
                layer = model.model.layers[0]
                linears = {name: layer.get_submodule(name) for name in LAYER_LINEARS}
                accumulators = {name: HessianAccumulator(linears[name]) for name in LAYER_LINEARS}
                handles = [linears[n].register_forward_hook(accumulators[n]) for n in LAYER_LINEARS]
                for inp in inputs:
                    run_layer(layer, inp)
                for handle in handles:
                    handle.remove()
                keeps = {}
                for name in LAYER_LINEARS:
                    weight = linears[name].weight
                    W, keeps[name] = _obs_prune_allocations(weight.data, accumulators.pop(name).hessian(),
                                                            job_options("sparsegpt", prune)["blocksize"])
                    weight.data.copy_(W.to(weight.dtype))
                    del W
                for inp in inputs:
                    inp.hidden = run_layer(layer, inp)
            else:
                _lm_loss_batch(model, seq)
                calib = torch.randint(0, vocab, (min(BATCH_WINDOWS, prune["calib_windows"]), seq))
                if job.kind == "minitron_width":
                    activation_importance(model, calib, job_options("minitron_width", prune)["aggregation"])
                elif job.kind == "flap":
                    input_statistics(model, calib)
    return {"step": _peak(tracker), "startup": 0, "micro_batch": None}


def evaluate_step(job: Job, cfg: dict, target: str = "gpu") -> dict:
    """Peak bytes of one validation batch of pvs.evaluate.score.token_nll."""
    vocab, seq, batch = vocab_size(cfg), cfg["train"]["seq_len"], cfg["evaluate"]["batch_size"]
    model = meta_model(job, vocab, ATTENTION[target], getattr(torch, cfg["evaluate"]["dtype"]))
    with FakeTensorMode(allow_non_fake_inputs=True):
        model.to_empty(device="cpu")
        model.eval()
        x = torch.randint(0, vocab, (batch, seq))
        tracker = _tracker(model, None, 1, (x,))
        with tracker, torch.no_grad():   # token_nll's inference_mode: the same memory, but under it the tracker
            # would not see the ops inside composite ones (cross_entropy's log_softmax)
            logits = model(input_ids=x).logits[:, :-1].float()
            torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                              reduction="none")
    return {"step": _peak(tracker), "startup": 0, "micro_batch": batch}


STEPS = {"train": train_step, "sheared": sheared_step, "evaluate": evaluate_step}


def estimate(job: Job, cfg: dict, target: str = "gpu") -> dict:
    """The table row of one job: peak GiB per GPU (max of the step and start-up), GPUs, limit, fits."""
    numbers = STEPS.get(job.kind, prune_step)(job, cfg, target)
    peak = max(numbers["step"], numbers["startup"])
    limit = cfg["cluster"]["gpu_memory_gib"]
    return {"job": job.name, "peak_gib": round(peak / GIB, 2), "step_gib": round(numbers["step"] / GIB, 2),
            "startup_gib": round(numbers["startup"] / GIB, 2), "micro_batch": numbers["micro_batch"],
            "gpus": job.gpus, "limit_gib": limit, "fits": peak / GIB <= limit, "key": job.key}


def check(cfg: dict, only: str | None = None, target: str = "gpu", progress=None) -> list[dict]:
    """Rows for every job type of the grid (``only``: jobs whose name contains it)."""
    rows = []
    for job in grid_jobs(cfg):
        if only and only not in job.name:
            continue
        rows.append(estimate(job, cfg, target))
        if progress:
            progress(rows[-1])
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'job':34s} {'peak GiB/GPU':>12s} {'GPUs':>5s} {'limit':>6s}  fits"]
    lines += [f"{r['job']:34s} {r['peak_gib']:12.2f} {r['gpus']:5d} {r['limit_gib']:6g}  {'yes' if r['fits'] else 'NO'}"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.memory", __doc__)
    parser.add_argument("--config", required=True, help="study config (YAML)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--only", help="estimate only the jobs whose name contains this text")
    parser.add_argument("--target", choices=list(ATTENTION), default="gpu",
                        help="gpu (default): FlashAttention-2's memory and foreach AdamW; cpu: the stock SDPA kernel "
                             "and single-tensor AdamW, as a CPU runs them (the calibration)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.config)
    rows = check(cfg, args.only, args.target, progress=lambda r: print(f"[memory] {r['job']}: {r['peak_gib']:.2f} "
                                                                         f"GiB", file=sys.stderr))
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "target": args.target, "rows": rows}, f, indent=2)
            f.write("\n")
    failed = [r for r in rows if not r["fits"]]
    for r in failed:
        print(f"python -m pvs.memory: {r['job']} needs {r['peak_gib']:.1f} GiB per GPU, more than "
              f"cluster.gpu_memory_gib = {r['limit_gib']:g}; change {r['key']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
