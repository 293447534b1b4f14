"""Data-parallel training with FSDP2 on CPU (gloo): 2 processes follow 1 process, resume, keep masks exact."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pvs.modeling import MASKS_FILE

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}


def write_config(path: Path, **train) -> Path:
    cfg = {"parent": {"arch": SMALL}, "threads_per_job": 1, "device": "cpu",
           "prune": {"methods": ["sparsegpt"], "calib_seq_len": 32},
           "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "checkpoint_every": 100,
                     "eval_every_tokens": 1024, "eval_windows": 4, **train}}
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("dist") / "config.yaml")


def train(nproc: int, data: Path, out: Path, config: Path, *extra) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    cmd = launcher + ["-m", "pvs.train", "--data", str(data), "--out", str(out), "--config", str(config),
                      "--ckpt", f"{out}.ckpt", "--threads", "1", *map(str, extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def val_losses(out: Path) -> list[float]:
    return [r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "val_loss" in r]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_two_processes_follow_one_process_and_resume(byte_splits, config, tmp_path):
    run = ["--arm", "parent", "--tokens", 2048]                      # 16 steps of 4 windows x 32 tokens
    train(1, byte_splits, tmp_path / "one", config, *run)
    train(2, byte_splits, tmp_path / "two", config, *run)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 16 and one[-1] < one[0] - 0.5
    assert two == pytest.approx(one, rel=1e-4)
    # in-training validation: each rank scores half the windows in micro-batches; the reduced mean is one
    # process's (the step-0 value, before any update, to float64-summation precision)
    assert len(val_losses(tmp_path / "two")) == len(val_losses(tmp_path / "one")) == 3
    assert val_losses(tmp_path / "two")[0] == pytest.approx(val_losses(tmp_path / "one")[0], rel=1e-6)
    assert val_losses(tmp_path / "two") == pytest.approx(val_losses(tmp_path / "one"), rel=1e-4)
    for name, w in weights(tmp_path / "one").items():
        assert torch.allclose(w, weights(tmp_path / "two")[name], rtol=1e-3, atol=1e-4), name
    # gradient accumulation: 2 processes x 2 micro-batches of 1 window = the same global batch of 4; with
    # activation checkpointing (recomputed activations give the same gradients)
    train(2, byte_splits, tmp_path / "accum", write_config(tmp_path / "accum.yaml", micro_batch_size=1,
                                                           activation_checkpointing=True), *run)
    assert losses(tmp_path / "accum") == pytest.approx(one, rel=1e-4)
    assert val_losses(tmp_path / "accum") == pytest.approx(val_losses(tmp_path / "one"), rel=1e-4)   # 1 window a pass
    # interrupted after 5 steps and restarted: the same run, still with 2 processes
    train(2, byte_splits, tmp_path / "resumed", config, *run, "--stop-after-steps", 5)
    assert not (tmp_path / "resumed").exists() and (tmp_path / "resumed.ckpt" / "latest").exists()
    train(2, byte_splits, tmp_path / "resumed", config, *run)
    assert losses(tmp_path / "resumed") == pytest.approx(two, rel=1e-4)
    meta = json.loads((tmp_path / "resumed" / "train_meta.json").read_text())
    assert meta["resumed_from_step"] == 5 and meta["tokens_seen"] == 2048


def test_sparse_masks_stay_exact_under_sharding(byte_splits, config, tmp_path):
    from test_train import sparse_child                 # a 50%-sparse child of a parent, with its masks

    train(1, byte_splits, tmp_path / "parent", config, "--arm", "parent", "--tokens", 512)
    masks = sparse_child(tmp_path / "parent", tmp_path / "child")
    run = ["--arm", "retrain", "--tokens", 1024, "--init", tmp_path / "child"]
    train(2, byte_splits, tmp_path / "retrain", config, *run, "--stop-after-steps", 3)
    ckpt = tmp_path / "retrain.ckpt"                     # gradients masked on every shard: no moments there
    moments = load_file(str(ckpt / (ckpt / "latest").read_text().strip() / "optimizer.safetensors"))
    for name, mask in masks.items():
        assert torch.all(moments[f"exp_avg.{name}"][~mask] == 0) and torch.all(moments[f"exp_avg_sq.{name}"][~mask] == 0)
        assert torch.all(moments[f"exp_avg_sq.{name}"][mask] > 0), name
    train(2, byte_splits, tmp_path / "retrain", config, *run)
    trained = weights(tmp_path / "retrain")
    for name, mask in masks.items():
        assert torch.all(trained[name][~mask] == 0), name
        assert torch.all(trained[name][mask] != 0), name
    assert load_file(str(tmp_path / "retrain" / MASKS_FILE)).keys() == masks.keys()


def test_sharded_start_up_loads_a_child_like_one_process(byte_splits, config, tmp_path):
    """Under torchrun the child is built on the meta device, sharded, then loaded (rank 0 reads and
    broadcasts): a FLAP child retrains like one process, its forced q/k/v/gate/up biases frozen at zero."""
    from test_train import flap_child

    train(1, byte_splits, tmp_path / "parent", config, "--arm", "parent", "--tokens", 512)
    flap_child(tmp_path / "parent", byte_splits, tmp_path / "flap")
    run = ["--arm", "retrain", "--tokens", 1024, "--init", tmp_path / "flap"]
    train(1, byte_splits, tmp_path / "one", config, *run)
    train(2, byte_splits, tmp_path / "two", config, *run)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    assert val_losses(tmp_path / "two") == pytest.approx(val_losses(tmp_path / "one"), rel=1e-4)
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert one.keys() == two.keys()
    for name, w in two.items():
        assert torch.allclose(w, one[name], rtol=1e-3, atol=1e-4), name
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias", "gate_proj.bias", "up_proj.bias")):
            assert torch.all(w == 0), name


def test_multi_node_launcher_runs_one_torchrun_per_node(byte_splits, config, tmp_path):
    """The workflow's srun + torchrun command, on a stand-in 2-node allocation (tests/slurm_standin/srun)."""
    from pvs.config import validate_config
    from pvs.resources import launcher

    cluster = {"gpus": {"child": 1}, "nodes": {"child": 2}}      # 2 nodes x 1 process each
    command = launcher(validate_config({"device": "cuda", "cluster": cluster}), "child", sys.executable)
    assert command.startswith("srun --nodes 2 --ntasks-per-node 1 ")
    run = ["--arm", "parent", "--tokens", 2048]
    train(1, byte_splits, tmp_path / "one", config, *run)
    standin = ROOT / "tests" / "slurm_standin"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PATH": f"{standin}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": "4242",
           "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NNODES": "2", "FAKE_SLURM_DIR": str(tmp_path / "slurm")}
    args = ["-m", "pvs.train", "--data", byte_splits, "--out", tmp_path / "nodes", "--config", config,
            "--ckpt", f"{tmp_path / 'nodes'}.ckpt", "--threads", 1, "--device", "cpu", *run]
    result = subprocess.run(["sh", "-c", f"{command} {' '.join(map(str, args))}"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "nodes" / "train_meta.json").read_text())
    assert meta["processes"] == 2
    assert losses(tmp_path / "nodes") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


def test_bf16_mixed_precision_keeps_fp32_master_weights(byte_splits, config, tmp_path):
    """train.precision bf16: autocast (1 process) and FSDP2's bf16 policy (2 processes) compute in bf16,
    stay close to the fp32 run, and keep fp32 master weights (saved fp32)."""
    bf16 = write_config(tmp_path / "bf16.yaml", precision="bf16")
    run = ["--arm", "parent", "--tokens", 2048]
    train(1, byte_splits, tmp_path / "fp32", config, *run)
    train(1, byte_splits, tmp_path / "one", bf16, *run)
    train(2, byte_splits, tmp_path / "two", bf16, *run)
    fp32, one, two = losses(tmp_path / "fp32"), losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one != fp32 and two != fp32                                  # bf16 arithmetic happened
    assert one == pytest.approx(fp32, rel=1e-3) and two == pytest.approx(fp32, rel=1e-3)
    assert two[-1] < two[0] - 0.5
    for name in ("one", "two"):
        assert {w.dtype for w in weights(tmp_path / name).values()} == {torch.float32}, name


def prune(nproc: int, parent: Path, data: Path, out: Path, config: Path, *extra) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] \
        if nproc > 1 else [sys.executable]
    return subprocess.run(launcher + ["-m", "pvs.prune", "--ratio", "0.5", "--model", str(parent), "--data", str(data),
                                      "--out", str(out), "--config", str(config), "--threads", "1", *map(str, extra)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_sheared_llama_learns_the_same_masks_in_two_processes_and_resumes(byte_splits, config, tmp_path):
    """Sheared-LLaMA's mask learning sharded with FSDP2 (2 processes) follows the 1-process run and cuts the
    same child; rank 0 writes it. Interrupted, it resumes from its checkpoint (here with 1 process)."""
    parent = tmp_path / "parent"
    train(1, byte_splits, parent, config, "--arm", "parent", "--tokens", 1024)
    prune_config = write_config(tmp_path / "prune.yaml")
    raw = yaml.safe_load(prune_config.read_text())
    raw["prune"].update(calib_windows=8, calib_seq_len=32, sheared_llama={"mask_tokens": 4096, "batch_size": 4})
    prune_config.write_text(yaml.safe_dump(raw))
    metas = {}
    for nproc in (1, 2):
        result = prune(nproc, parent, byte_splits, tmp_path / f"sheared{nproc}", prune_config, "--method", "sheared_llama")
        assert result.returncode == 0, result.stderr[-3000:]
        metas[nproc] = json.loads((tmp_path / f"sheared{nproc}" / "meta.json").read_text())
    one, two = metas[1]["info"], metas[2]["info"]
    assert (one["processes"], two["processes"]) == (1, 2) and one["mask_learning_steps"] == 32
    lm = [[h["lm_loss"] for h in run["history"][1:]] for run in (one, two)]
    assert lm[1] == pytest.approx(lm[0], rel=1e-4)
    gaps = [[h["gap"] for h in run["history"]] for run in (one, two)]
    assert gaps[1] == pytest.approx(gaps[0], rel=1e-3, abs=1e-6)
    assert one["kept"] == two["kept"] and metas[1]["shape"]["child"] == metas[2]["shape"]["child"]
    assert two["child_calib_loss"] == pytest.approx(one["child_calib_loss"], rel=1e-4)
    assert weights(tmp_path / "sheared2").keys() == weights(tmp_path / "sheared1").keys()

    # stopped after 10 of 32 steps and again after 20 under 2 processes, finished with 1 process
    ckpt, out = tmp_path / "sheared.ckpt", tmp_path / "resumed"
    stopped = prune(2, parent, byte_splits, out, prune_config, "--method", "sheared_llama", "--ckpt", ckpt,
                    "--stop-after-steps", 10)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not (out / "meta.json").exists() and (ckpt / "latest").exists()
    again = prune(2, parent, byte_splits, out, prune_config, "--method", "sheared_llama", "--ckpt", ckpt,
                  "--stop-after-steps", 10)                              # a sharded restore: steps 10..20
    assert again.returncode == 0 and "resumed mask learning at step 10" in again.stderr, again.stderr[-3000:]
    resumed = prune(1, parent, byte_splits, out, prune_config, "--method", "sheared_llama", "--ckpt", ckpt)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads((out / "meta.json").read_text())["info"]
    assert info["resumed_from_step"] == 20 and not ckpt.exists()
    assert [h["lm_loss"] for h in info["history"][1:]] == pytest.approx(lm[0], rel=1e-4)
    assert info["kept"] == one["kept"]

    # the layer-by-layer methods refuse torchrun, naming the one that runs there
    refused = prune(2, parent, byte_splits, tmp_path / "sgpt", prune_config, "--method", "sparsegpt")
    assert refused.returncode != 0 and "only sheared_llama runs under torchrun" in refused.stderr


def test_own_units_for_embedding_and_head_chunked_loss_and_prefetch_follow_one_process(byte_splits, config, tmp_path):
    """train.shard_embeddings (embedding and norm + head as FSDP2 units of their own), with the chunked loss
    (computed inside the head's FSDP2 unit) and prefetched batches, 2 processes x 2 micro-batches: the plain
    1-process trajectory within 1e-4, and the same weights."""

    run = ["--arm", "parent", "--tokens", 1024]
    train(1, byte_splits, tmp_path / "one", config, *run)
    switched = write_config(tmp_path / "switched.yaml", shard_embeddings=True, loss_chunk_tokens=24,
                            prefetch_batches=True, micro_batch_size=1)
    train(2, byte_splits, tmp_path / "two", switched, *run)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert two == pytest.approx(one, rel=1e-4)
    assert val_losses(tmp_path / "two") == pytest.approx(val_losses(tmp_path / "one"), rel=1e-4)
    for name, w in weights(tmp_path / "one").items():
        assert torch.allclose(w, weights(tmp_path / "two")[name], rtol=1e-3, atol=1e-4), name


def test_shard_ends_makes_embedding_and_head_their_own_units():
    """The FSDP2 layout of train.shard_embeddings, on a 1-rank gloo group: embed_tokens, each layer, norm + head
    (one group) and the root each own their parameters."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fully_shard import FSDPModule
    from pvs.modeling import llama_config
    from pvs.train import distributed
    from transformers import LlamaForCausalLM

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = LlamaForCausalLM(llama_config({**SMALL, "rope_theta": 1e4}, 512, 0, 0))
        distributed.shard(model, bf16=False, activation_checkpointing=False, shard_ends=True)
        units = [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]
        assert units == ["", "model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]
        groups = {name: m._get_fsdp_state()._fsdp_param_group for name, m in model.named_modules()
                  if isinstance(m, FSDPModule)}
        assert groups["model.norm"] is groups["lm_head"] and groups[""] is None     # the root keeps nothing
    finally:
        dist.destroy_process_group()
