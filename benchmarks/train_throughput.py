"""Training tokens/s of pvs.train's step against a bare PyTorch loop and the trainer as it was (commit 0768a99).

    python benchmarks/train_throughput.py                      # writes benchmarks/results/train_throughput.json
    python benchmarks/train_throughput.py --levers --shapes new --seqs 128 --batches 16
    python benchmarks/train_throughput.py --toy --out /tmp/tp.json   # a few steps at a toy shape (seconds)

Variants (each on its own copy of the same randomly initialized model, the same batch, one process, the
same torch.set_num_threads):
  baseline  the trainer's step as of commit 0768a99, kept here as a frozen copy (``baseline_step``: its
            make_optimizer and TrainStep.__call__ verbatim, masks none): stock AdamW, forward with
            HF's default use_cache (a DynamicCache built each forward), cross-entropy on fp32 logits,
            backward, clip, step, zero_grad(set_to_none).
  pvs       pvs.train as the trainer builds it today: pvs.train.trainer.make_optimizer and
            pvs.train.trainer.make_train_step (TrainStep) from the config's ``train`` section, masks none
            (forward with use_cache=False; the same loss as the baseline, bit for bit).
  bare      a bare loop on the same HF model: forward (use_cache=False), cross_entropy, backward,
            clip_grad_norm_, torch.optim.AdamW (stock options) step, zero_grad.
With --levers, more: bare_usecache (the bare loop with HF's default use_cache), bare_foreach /
bare_fused (AdamW foreach=True / fused=True), bare_attn_eager (HF's eager attention: matmul, mask,
softmax, matmul), bare_sdpa_math (SDPA restricted to its math backend; the default dispatches to the CPU
flash kernel, as HF passes is_causal and no mask), pvs_compile (train.compile: layers; the warm-up includes
the compilation, its seconds are reported), pvs_compile_attn_eager (the same with HF's eager attention,
which inductor compiles with the rest of the layer instead of calling SDPA's kernel), pvs_bf16 (train.precision: bf16 autocast; only where the
CPU has amx_bf16). --variants picks any of these by name.

--profile adds, per variant, torch.profiler's operators by self CPU time over --steps steps (after the
timed repetitions): milliseconds per step and share of the step, the top operators and the share of
SDPA's kernels (``attention_share``) -- where a step's time goes.

Measurement: every variant runs --warmup steps, then --reps repetitions of --steps steps each; the
repetitions interleave the variants (the order rotates each repetition), so a load change on a shared
machine hits all of them alike. Reported per variant: median tokens/s over the repetitions by wall clock
and by this process's CPU time (less sensitive to other jobs taking the cores), and the loss after all
steps (equal losses = the same numerics, as every variant starts from the same weights and batch).
The shapes: ``default`` is config.yaml's parent, vocab, seq_len and batch; ``new`` is the resized study's
parent (hidden 64, MLP 192, 10 layers, 4 / 2 heads, vocab 1024) at every --seqs x --batches.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "train_throughput.json"
NEW_ARCH = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 10, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 1024}
NEW_VOCAB = 1024
TOY_ARCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 64}
BASELINE_COMMIT = "0768a99"
BASE_VARIANTS = ("baseline", "pvs", "bare")
BARE_OPTIMIZER_OPTIONS = {"bare": {}, "bare_usecache": {}, "bare_foreach": {"foreach": True},
                          "bare_fused": {"fused": True}, "bare_attn_eager": {}, "bare_sdpa_math": {}}
PVS_RECIPE_OPTIONS = {"pvs": {}, "pvs_compile": {"compile": "layers"},
                      "pvs_compile_attn_eager": {"compile": "layers"}, "pvs_bf16": {"precision": "bf16"}}
LEVERS = (*list(BARE_OPTIMIZER_OPTIONS)[1:], *list(PVS_RECIPE_OPTIONS)[1:])   # pvs_bf16 only where amx_bf16
VARIANTS = BASE_VARIANTS + LEVERS

from pvs.config import load_config, validate_config
from pvs.modeling import apply_masks_, init_weights_, llama_config, mask_grads_
from pvs.train.step import compile_layers
from pvs.train.trainer import make_optimizer, make_train_step
from pvs.versions import cpu_flags, library_versions, machine_info
from transformers import LlamaForCausalLM


# ---------------------------------------------------------------- the frozen baseline (commit 0768a99)
def baseline_optimizer(model, recipe: dict) -> torch.optim.AdamW:
    """0768a99's pvs.train.trainer.make_optimizer, verbatim."""
    trained = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trained if p.ndim >= 2]
    no_decay = [p for p in trained if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe["lr"], betas=tuple(recipe["betas"]), eps=recipe["eps"])


def baseline_step(model, optimizer, masks, grad_clip: float, micro_batches, lr: float):
    """0768a99's TrainStep.__call__ (plain path: no chunked loss, no compile, fp32), verbatim."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    local = sum(len(x) for x, _ in micro_batches)
    acc = None
    for x, y in micro_batches:
        with contextlib.nullcontext():
            logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        micro = len(x)
        (loss * (micro / local)).backward()
        part = loss.detach().to(torch.float64) * micro / local
        acc = part if acc is None else acc + part
    mask_grads_(model, masks)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    apply_masks_(model, masks)
    return acc, grad_norm


# ---------------------------------------------------------------- variants
def build_variant(name: str, model, recipe: dict, batch):
    """A callable running one optimizer step of variant ``name`` on ``model`` and returning its loss."""
    lr, clip = recipe["lr"], recipe["grad_clip"]
    if name == "baseline":
        optimizer = baseline_optimizer(model, recipe)
        return lambda: baseline_step(model, optimizer, None, clip, batch, lr)[0]
    if name.startswith("pvs"):
        recipe = {**recipe, **PVS_RECIPE_OPTIONS[name]}
        if name == "pvs_compile_attn_eager":
            model.set_attn_implementation("eager")                  # inductor fuses mask, softmax and the matmuls
        if recipe["compile"] == "layers":
            compile_layers(model)                                   # as pvs.train.trainer._prepare_model
        step = make_train_step(model, make_optimizer(model, recipe), None, recipe, torch.device("cpu"))
        return lambda: step(batch, lr)[0]
    options = BARE_OPTIMIZER_OPTIONS[name]
    use_cache = name == "bare_usecache"
    if name == "bare_attn_eager":
        model.set_attn_implementation("eager")
    backend = (lambda: sdpa_kernel(SDPBackend.MATH)) if name == "bare_sdpa_math" else contextlib.nullcontext
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(recipe["betas"]), eps=recipe["eps"],
                                  weight_decay=recipe["weight_decay"], **options)

    def bare():
        (x, y), = batch
        with backend():
            logits = model(input_ids=x, use_cache=use_cache).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()
    return bare


def profile_step(step, steps: int, top: int = 12) -> dict:
    """torch.profiler's CPU operators of ``steps`` calls of ``step``: ms per step by self time, shares, top ops."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = [(e.key, e.self_cpu_time_total / 1000 / steps) for e in prof.key_averages()]
    total = sum(ms for _, ms in ops)
    ops.sort(key=lambda op: -op[1])
    attention = sum(ms for key, ms in ops if "scaled_dot_product" in key)
    return {"self_cpu_ms_per_step": round(total, 2), "attention_share": round(attention / total, 3),
            "top_ops": [{"op": key, "ms_per_step": round(ms, 2), "share": round(ms / total, 3)}
                        for key, ms in ops[:top]]}


def measure_shape(label: str, arch: dict, vocab: int, seq: int, batch_size: int, recipe: dict,
                  variants: list[str], args) -> dict:
    """Tokens/s of every variant at one shape, interleaved repetitions."""
    torch._dynamo.reset()          # a fresh compile per shape (no recompile limit carried over from the last)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config({"head_dim": None, "rope_theta": 500000.0, **arch}, vocab, 0, 0))
    init_weights_(model, recipe["init_std"], torch.Generator().manual_seed(0))
    model.train()
    data = torch.randint(0, vocab, (batch_size, seq + 1), generator=torch.Generator().manual_seed(1))
    batch = [(data[:, :-1].contiguous(), data[:, 1:].contiguous())]
    tokens = batch_size * seq
    steps, warmup = {}, {}
    for name in variants:
        steps[name] = build_variant(name, copy.deepcopy(model), recipe, batch)
        start = time.perf_counter()
        for _ in range(args.warmup):
            steps[name]()
        warmup[name] = time.perf_counter() - start
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    loss = {}
    for rep in range(args.reps):
        shift = rep % len(variants)
        for name in variants[shift:] + variants[:shift]:
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                loss[name] = steps[name]()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append(tokens * args.steps / max(w1 - w0, 1e-9))
            cpu[name].append(tokens * args.steps / max(c1 - c0, 1e-9))
    rows = {name: {"tok_per_s": round(statistics.median(wall[name]), 1),
                   "tok_per_s_cpu": round(statistics.median(cpu[name]), 1),
                   "tok_per_s_reps": [round(v, 1) for v in wall[name]],
                   "warmup_seconds": round(warmup[name], 2),
                   "loss_after": float(loss[name])} for name in variants}
    if args.profile:
        for name in variants:
            rows[name]["profile"] = profile_step(steps[name], args.steps)
    ratios = {}
    for ref in ("baseline", "bare"):
        if ref in rows:
            for name in variants:
                if name != ref:
                    ratios[f"{name}/{ref}"] = round(rows[name]["tok_per_s"] / rows[ref]["tok_per_s"], 3)
                    ratios[f"{name}/{ref} (cpu)"] = round(rows[name]["tok_per_s_cpu"] / rows[ref]["tok_per_s_cpu"], 3)
    return {"shape": label, "arch": arch, "vocab_size": vocab, "seq_len": seq, "batch_size": batch_size,
            "tokens_per_step": tokens, "params": sum(p.numel() for p in model.parameters()),
            "variants": rows, "ratios": ratios}


def shapes(args, cfg: dict) -> list[tuple]:
    if args.toy:
        return [("toy", TOY_ARCH, 128, 32, 4)]
    out = []
    if "default" in args.shapes:
        out.append(("default", cfg["parent"]["arch"], cfg["data"]["vocab_size"], cfg["train"]["seq_len"],
                    cfg["train"]["batch_size"]))
    if "new" in args.shapes:
        out += [("new", NEW_ARCH, NEW_VOCAB, seq, batch) for seq in args.seqs for batch in args.batches]
    return out


def table(results: list[dict]) -> str:
    names = list(dict.fromkeys(n for r in results for n in r["variants"]))
    head = f"{'shape':8} {'seq':>4} {'batch':>5} " + " ".join(f"{n:>12}" for n in names)
    ratio_names = [k for k in results[0]["ratios"] if k.split(" ")[0].endswith("/baseline")
                   or k.split(" ")[0] == "pvs/bare"]
    head += " " + " ".join(f"{k:>24}" for k in ratio_names)
    lines = [head]
    for r in results:
        cells = " ".join(f"{r['variants'][n]['tok_per_s']:>12.0f}" if n in r["variants"] else f"{'':>12}"
                         for n in names)
        ratios = " ".join(f"{r['ratios'].get(k, float('nan')):>24.3f}" for k in ratio_names)
        lines.append(f"{r['shape']:8} {r['seq_len']:>4} {r['batch_size']:>5} {cells} {ratios}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/train_throughput.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config.yaml", help="study config giving the default shape and recipe")
    parser.add_argument("--out", default=str(OUT), help="JSON to write (default: benchmarks/results/train_throughput.json)")
    parser.add_argument("--shapes", nargs="+", choices=["default", "new"], default=["default", "new"])
    parser.add_argument("--seqs", nargs="+", type=int, default=[128, 256], help="seq_len of the 'new' shape")
    parser.add_argument("--batches", nargs="+", type=int, default=[8, 16, 32], help="batch sizes of the 'new' shape")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        help="variants to run (default: baseline pvs bare, + levers)")
    parser.add_argument("--levers", action="store_true", help=f"add {', '.join(LEVERS)} (pvs_bf16 only with amx_bf16)")
    parser.add_argument("--profile", action="store_true", help="add each variant's operator profile (self CPU time)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions; the median counts")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per variant per repetition")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: the config's threads_per_job)")
    parser.add_argument("--toy", action="store_true", help="a toy shape, 2 reps of 1 step: a smoke test in seconds")
    args = parser.parse_args(argv)
    if args.toy:
        args.reps, args.steps, args.warmup = 2, 1, 1
    cfg = load_config(ROOT / args.config) if not args.toy else validate_config({})
    threads = args.threads or cfg["threads_per_job"]
    torch.set_num_threads(threads)
    flags = cpu_flags()
    levers = [v for v in LEVERS if v != "pvs_bf16" or "amx_bf16" in flags] if args.levers else []
    variants = args.variants or [*BASE_VARIANTS, *levers]
    recipe = cfg["train"]
    results = []
    for label, arch, vocab, seq, batch in shapes(args, cfg):
        results.append(measure_shape(label, arch, vocab, seq, batch, recipe, variants, args))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    record = {"what": "training tokens/s of one process (fp32 unless pvs_bf16), median of interleaved repetitions",
              "baseline": f"the trainer's step at commit {BASELINE_COMMIT}, a frozen copy in this script",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": threads, "reps": args.reps, "steps_per_rep": args.steps, "warmup_steps": args.warmup,
              "config": "schema defaults" if args.toy else args.config,
              "machine": {**machine_info(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()},
              "versions": library_versions(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
