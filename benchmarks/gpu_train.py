"""Training throughput of a ~1B Llama child through the trainer's own step: tokens/s, MFU, peak memory.

    python benchmarks/gpu_train.py --out benchmarks/results/gpu_train.json             # one GPU
    torchrun --standalone --nproc_per_node 8 benchmarks/gpu_train.py                    # all GPUs of a node
    python benchmarks/gpu_train.py --size tiny --device cpu --steps 2 --warmup 1        # a logic check on CPU

The step is ``pvs.train.step.TrainStep``, the one ``python -m pvs.train`` runs (micro-batches with gradient
accumulation, masked gradients, clipping, AdamW from ``pvs.train.trainer.make_optimizer``, masks), with the
trainer's switches: ``--compile layers`` (each decoder layer compiled before FSDP2), ``--loss-chunk-tokens``
(chunked LM head + cross-entropy), ``--shard-embeddings`` (under torchrun), ``--activation-checkpointing``.
The model is built on the meta device, compiled / sharded (``pvs.train.distributed.shard``), materialized on
the device and initialized there (truncated normal, std 0.02), as the trainer starts ranks. bf16 is the
trainer's ``precision: bf16``: autocast in one process, FSDP2's bf16 MixedPrecisionPolicy under torchrun.
Batches are random tokens. ``--warmup`` untimed steps (compilation) precede ``--steps`` timed ones.

MFU = F x (tokens/s) / (processes x --peak-flops), with the training FLOPs per token of PaLM (Chowdhery et al.
2022, appendix B) and Chinchilla's convention:

    F = 6 N + 12 L H Q T

N = the matmul parameters (every decoder-layer matrix plus the LM head; not the embedding lookup), L layers,
H query heads, Q head dim, T the sequence length: 6 N for the forward + backward of the matmuls and
12 L H Q T for the attention scores and their weighted sum (2 x 2 L H Q T forward, twice that backward;
causal masking not discounted, as in PaLM). Activation-checkpointing recompute is not counted (model FLOPs,
not hardware FLOPs). ``mfu_6n`` is the same without the attention term, for comparison.

Written (``--out``, JSON): tokens/s, step seconds, MFU, the FLOP formula and its terms, peak memory
(torch.cuda.max_memory_allocated and max_memory_reserved, GiB, on rank 0), final loss and versions.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pvs.cli import doc_parser
from pvs.modeling import count_params, llama_config, rebuild_rotary_
from pvs.train import distributed
from pvs.train.step import TrainStep, compile_layers, compiled_forward
from pvs.train.trainer import make_optimizer
from pvs.config import validate_config
from pvs.versions import library_versions
from transformers import LlamaForCausalLM

GIB = 2 ** 30
SIZES = {  # ~1.2B: a Llama-3.1-8B child at r ~ 0.85 of the non-embedding parameters, full vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}


def arch(size: str, seq_len: int) -> tuple[dict, int]:
    """``parent.arch`` of a size (as pvs.modeling.llama_config takes it) and its vocabulary."""
    shape = dict(SIZES[size])
    vocab = shape.pop("vocab_size")
    return {**shape, "head_dim": None, "rope_theta": 500000.0, "max_position_embeddings": seq_len}, vocab


def flops_per_token(config, seq_len: int) -> dict:
    """F = 6 N + 12 L H Q T (PaLM appendix B), with its terms."""
    n = _matmul_params(config)
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len
    return {"formula": "6*N + 12*L*H*Q*T", "N_matmul_params": n, "L": config.num_hidden_layers,
            "H": config.num_attention_heads, "Q": config.head_dim, "T": seq_len,
            "six_n": 6 * n, "attention": attention, "per_token": 6 * n + attention}


def _matmul_params(config) -> int:
    """Matrices of the decoder layers plus the LM head, from the config (no model built)."""
    d, q, kv, f = config.hidden_size, config.num_attention_heads * config.head_dim, \
        config.num_key_value_heads * config.head_dim, config.intermediate_size
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f
    return config.num_hidden_layers * per_layer + config.vocab_size * d


@torch.no_grad()
def init_on_device_(model, std: float = 0.02, seed: int = 0) -> None:
    """Truncated-normal matrices, unit norms, zero biases, drawn where the (local shards of the) parameters live."""
    torch.manual_seed(seed)
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if p.ndim >= 2:
            torch.nn.init.trunc_normal_(local, std=std, a=-2 * std, b=2 * std)
        else:
            local.fill_(1.0)


def build(args, ctx, device):
    """The model as the trainer starts it: meta build, per-layer compile, FSDP2 (under torchrun), materialize."""
    shape, vocab = arch(args.size, args.seq_len)
    config = llama_config(shape, vocab, 0, 0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if args.compile == "layers":
        compile_layers(model)
    if ctx.sharded:
        distributed.shard(model, bf16=args.precision == "bf16", activation_checkpointing=args.activation_checkpointing,
                          shard_ends=args.shard_embeddings)
    elif args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to_empty(device=device)
    rebuild_rotary_(model, device)
    init_on_device_(model)
    return model.train(), config


def parse_args(argv):
    parser = doc_parser("benchmarks/gpu_train.py", __doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b", help="model shape (default: 1b)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per window (default: 4096)")
    parser.add_argument("--micro-batch", type=int, default=4, help="windows per forward/backward (default: 4)")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step (default: 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="train.precision (default: bf16)")
    parser.add_argument("--compile", choices=["none", "layers", "model"], default="none",
                        help="train.compile: none (false), layers, model (true; one process only)")
    parser.add_argument("--loss-chunk-tokens", type=int, help="train.loss_chunk_tokens (default: the plain loss)")
    parser.add_argument("--shard-embeddings", action="store_true", help="train.shard_embeddings (under torchrun)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute layer activations")
    parser.add_argument("--peak-flops", type=float, default=989e12,
                        help="dense bf16 peak per device (default: H100/H200 SXM 989e12)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", help="write the result as JSON here")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here (use --device cpu --size tiny for a logic check)")
    ctx = distributed.setup(args.device)
    device = torch.device(args.device, ctx.local_rank) if args.device == "cuda" else torch.device("cpu")
    model, config = build(args, ctx, device)
    optimizer = make_optimizer(model, validate_config({})["train"])
    use_autocast = args.precision == "bf16" and not ctx.sharded
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext
    step = TrainStep(model, optimizer, None, 1.0, autocast,
                     forward=compiled_forward(model, True if args.compile == "model" else args.compile),
                     loss_chunk_tokens=args.loss_chunk_tokens)
    g = torch.Generator(device=device).manual_seed(ctx.rank)
    batches = [torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len + 1), device=device, generator=g)
               for _ in range(args.accum)]
    micro_batches = [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in batches]
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            sync()
            start = time.time()
        loss, _ = step(micro_batches, 3e-4)
    sync()
    seconds = time.time() - start
    tokens_per_step = args.micro_batch * args.accum * args.seq_len * ctx.world
    tokens_per_s = args.steps * tokens_per_step / seconds
    flops = flops_per_token(config, args.seq_len)
    counts = count_params(model)                          # DTensor numel is the global one
    result = {
        "size": args.size, "params_total": counts["total"], "processes": ctx.world,
        "device": torch.cuda.get_device_name(device) if args.device == "cuda" else platform.processor(),
        "precision": args.precision, "compile": args.compile, "loss_chunk_tokens": args.loss_chunk_tokens,
        "shard_embeddings": args.shard_embeddings, "activation_checkpointing": args.activation_checkpointing,
        "seq_len": args.seq_len, "micro_batch": args.micro_batch, "accum": args.accum,
        "tokens_per_step": tokens_per_step, "warmup_steps": args.warmup, "steps": args.steps,
        "step_seconds": seconds / args.steps, "tokens_per_s": tokens_per_s,
        "flops_per_token": flops, "peak_flops": args.peak_flops,
        "mfu": flops["per_token"] * tokens_per_s / (ctx.world * args.peak_flops),
        "mfu_6n": flops["six_n"] * tokens_per_s / (ctx.world * args.peak_flops),
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB if args.device == "cuda" else None,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB if args.device == "cuda" else None,
        "final_loss": float(distributed.mean(float(loss), ctx)), "versions": library_versions()}
    if ctx.main:
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
