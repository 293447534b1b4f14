"""Training throughput of a ~1B Llama child with FSDP2 in bf16 on the GPUs present: tokens/s and MFU.

    torchrun --standalone --nproc_per_node 8 benchmarks/gpu_train.py            # all GPUs of a node
    python benchmarks/gpu_train.py --size tiny --device cpu --steps 3            # a logic check on CPU

Runs ``--warmup`` + ``--steps`` optimizer steps of random tokens through the project's own FSDP2 set-up
(pvs.train.distributed.shard: per-layer fully_shard, bf16 compute with fp32 master weights, optional activation
checkpointing) and AdamW, then prints and writes (``--out``, JSON) tokens/s over the timed steps and
MFU = 6·N·(tokens/s) / (processes x --peak-flops), N = non-embedding + head parameters (pvs.compute).
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

from pvs.cli import doc_parser
from pvs.train import distributed
from pvs.modeling import count_params
from pvs.versions import library_versions
from transformers import LlamaConfig, LlamaForCausalLM

SIZES = {  # ~1.2B: the shape of a Llama-3.1-8B child at r ~ 0.85 with the full vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=128256),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
}


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("benchmarks/gpu_train.py", __doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b", help="model shape (default: 1b)")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per window (default: 4096)")
    parser.add_argument("--micro-batch", type=int, default=4, help="windows per process per step (default: 4)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--peak-flops", type=float, default=989e12, help="bf16 peak per GPU (default: H100 989e12)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute layer activations")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here (use --device cpu --size tiny for a logic check)")
    ctx = distributed.setup(args.device)
    device = torch.device(args.device, ctx.local_rank) if args.device == "cuda" else torch.device("cpu")
    config = LlamaConfig(**SIZES[args.size], max_position_embeddings=args.seq_len)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device)
    counts = count_params(model)
    n = counts["non_embedding"] + config.vocab_size * config.hidden_size
    bf16 = args.device == "cuda"
    if ctx.sharded:
        distributed.shard(model, bf16=bf16, activation_checkpointing=args.activation_checkpointing)
    elif args.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and not ctx.sharded else torch.autocast(
        "cpu", enabled=False)
    x = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len + 1), device=device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.time()
        with autocast:
            loss = model(input_ids=x[:, :-1], labels=x[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - start
    tokens_per_s = args.steps * args.micro_batch * args.seq_len * ctx.world / seconds
    result = {"size": args.size, "params_flops": n, "params_total": counts["total"], "processes": ctx.world,
              "device": torch.cuda.get_device_name(device) if args.device == "cuda" else platform.processor(),
              "seq_len": args.seq_len, "micro_batch": args.micro_batch, "steps": args.steps,
              "tokens_per_s": tokens_per_s, "mfu": 6 * n * tokens_per_s / (ctx.world * args.peak_flops),
              "peak_flops": args.peak_flops, "activation_checkpointing": args.activation_checkpointing,
              "final_loss": float(loss.item()), "versions": library_versions()}
    if ctx.main:
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    distributed.teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
