"""The paper-scale configuration: the full grid's DAG without network, and the cluster resources of its jobs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pvs import resources
from pvs.config import load_config, validate_config
from pvs.modeling import count_params, llama_config
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def test_block_params_match_a_real_llama():
    arch = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 8,
            "num_key_value_heads": 2, "max_position_embeddings": 256}
    cfg = validate_config({"parent": {"arch": arch}, "data": {"vocab_size": 300}, "prune": {"methods": ["sparsegpt"]}})
    model = LlamaForCausalLM(llama_config(cfg["parent"]["arch"], 300, 0, 0))
    counts = count_params(model)
    assert resources.block_params(cfg["parent"]["arch"]) == counts["non_embedding"]
    assert resources.parent_params(cfg) == counts["non_embedding"] + 300 * 64          # + LM head


def test_paper_grid_resources_scale_with_size_and_budget():
    cfg = load_config(ROOT / "configs" / "paper.yaml")
    assert 7.4e9 < resources.parent_params(cfg) < 7.6e9        # Llama-3.1-8B without its input embedding
    hours = resources.gpu_hours(cfg, resources.estimated_child_params(cfg, 0.5), 50 * 10**9)
    assert hours == pytest.approx(6 * resources.estimated_child_params(cfg, 0.5) * 50e9 / (9.89e14 * 0.4) / 3600)
    small = resources.job_resources(cfg, "child", resources.estimated_child_params(cfg, 0.8), 10**9)
    big = resources.job_resources(cfg, "child", resources.estimated_child_params(cfg, 0.5), 10 * 10**9)
    assert small["runtime"] < big["runtime"] <= cfg["cluster"]["max_runtime_min"]
    assert resources.job_resources(cfg, "parent", resources.parent_params(cfg), 200 * 10**9)["runtime"] == 2880
    assert big["gpu"] == 8 and big["cpus_per_task"] == 64 and resources.job_resources(cfg, "prune")["gpu"] == 1
    retry = resources.job_resources(cfg, "evaluate", attempt=2)
    assert retry["mem_mb"] == 2 * resources.job_resources(cfg, "evaluate")["mem_mb"]
    # Sheared-LLaMA's prune job trains the parent on its mask-learning tokens: training's GPUs, FLOPs-based time
    sheared = resources.job_resources(cfg, resources.prune_stage("sheared_llama"),
                                      *resources.prune_size_and_tokens(cfg, "sheared_llama"))
    flap = resources.job_resources(cfg, resources.prune_stage("flap"), *resources.prune_size_and_tokens(cfg, "flap"))
    assert (sheared["gpu"], flap["gpu"], flap["runtime"]) == (8, 1, cfg["cluster"]["stage_runtime_min"]["prune"])
    assert sheared["runtime"] == resources.train_minutes(cfg, resources.parent_params(cfg), 400_000_000, 8)
    assert resources.launcher(cfg, "sheared", "python").endswith("--nproc_per_node 8 --standalone")
    assert resources.launcher(cfg, "prune", "python") == "python"


def test_paper_dry_run_lists_the_whole_grid_fast_and_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "NO_PROXY": "*",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}       # any hub call would fail
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "configs/paper.yaml",
                             "--directory", str(ROOT)], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=120)
    seconds = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    block = result.stdout.split("Job stats:")[1].split("\n\n")[0]
    counts = {line.split()[0]: int(line.split()[1]) for line in block.splitlines()
              if len(line.split()) == 2 and line.split()[1].isdigit()}
    cfg = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    methods, ratios = len(cfg["prune"]["methods"]), len(cfg["prune"]["ratios"])
    assert counts["prune"] == methods * ratios == 24
    # setting 1 at 4 ratios (2 arms) + 4 extra scaling budgets at 0.5 (2 arms) + S_{P+N} at 0.5
    assert counts["train_child"] == methods * (2 * ratios + 2 * 4 + 1) == 102
    assert counts["evaluate"] == 1 + 24 + 102 and counts["train_parent"] == 1
    assert counts["tokenize_shard"] == cfg["data"]["hf"]["shards"] and counts["prepare_data"] == 1
    assert counts["eval_sets"] == counts["eval_tasks"] == 1            # hub data fetched once, checked once
    assert counts["memory_check"] == 1                                 # every GPU job's memory, proven first
    # the paper's LR sweep: 5 LRs x (P-R_N, S_N) x 3 granularities at the main budget, one choice per key
    assert (counts["lr_sweep_child"], counts["lr_choose"], counts["lr_table"]) == (5 * 2 * 3, 6, 1)
    assert "lr_sweep_parent" not in counts
    assert seconds < 15, seconds      # measured 7-8 s idle on 2 cores (README); 15 s leaves room for a busy CI


def test_gpu_benchmark_script_runs_its_fsdp2_loop_on_cpu(tmp_path):
    """The GPU benchmark's logic, at toy size on the CPU with 2 processes (the real run needs GPUs)."""
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "benchmarks" / "gpu_train.py"), "--size", "tiny", "--device", "cpu", "--steps", "2",
           "--warmup", "1", "--seq-len", "32", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = __import__("json").loads(out.read_text())
    assert record["processes"] == 2 and record["tokens_per_s"] > 0
    flops = record["flops_per_token"]          # PaLM appendix B: 6 N + 12 L H Q T, attention counted
    assert flops["per_token"] == flops["six_n"] + flops["attention"] and flops["attention"] == \
        12 * flops["L"] * flops["H"] * flops["Q"] * flops["T"] > 0
    assert record["mfu"] == pytest.approx(flops["per_token"] * record["tokens_per_s"] / (2 * 989e12))
    assert record["mfu_6n"] == pytest.approx(flops["six_n"] * record["tokens_per_s"] / (2 * 989e12))


def test_multi_node_jobs_start_one_torchrun_per_node():
    raw = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    raw["cluster"] = {"nodes": {"child": 4}}
    cfg = validate_config(raw)
    res = resources.job_resources(cfg, "child", resources.estimated_child_params(cfg, 0.5), 50 * 10**9)
    assert (res["nodes"], res["gpu"], res["tasks_per_node"], res["mpi"]) == (4, 8, 1, "srun")   # a task per node
    one_node = resources.job_resources(load_config(ROOT / "configs" / "paper.yaml"), "child",
                                       resources.estimated_child_params(cfg, 0.5), 10**9)
    assert (one_node["nodes"], one_node["tasks_per_node"], one_node["mpi"]) == (1, 0, "")
    command = resources.launcher(cfg, "child", "python")
    assert command.startswith("srun --nodes 4 --ntasks-per-node 1 python -m torch.distributed.run --nproc_per_node 8")
    assert "--rdzv-backend c10d" in command and "--nnodes 4" in command
    assert resources.launcher(cfg, "parent", "python") == "python -m torch.distributed.run --nproc_per_node 8 --standalone"
    assert resources.launcher(validate_config({**raw, "device": "cpu"}), "child", "python") == "python"
