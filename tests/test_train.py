"""The trainer: token accounting, the recipe's schedule, falling loss, exact resume, frozen sparse masks."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pvs.train import trainer as train
from pvs.budget import format_tokens, parse_tokens, steps_for_budget
from pvs.config import validate_config
from pvs.modeling import MASKS_FILE, load_model, save_masks

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture
def config_file(tmp_path):
    cfg = {"parent": {"arch": SMALL}, "threads_per_job": 1, "prune": {"methods": ["sparsegpt"], "calib_seq_len": 32},
           "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "checkpoint_every": 3,
                     "eval_every_tokens": 256, "eval_windows": 4}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(arm, tokens, data, out, config, *extra):
    argv = ["--arm", arm, "--tokens", str(tokens), "--data", str(data), "--out", str(out), "--config", str(config),
            "--ckpt", str(out) + ".ckpt", *map(str, extra)]
    return train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config))))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_budgets_parse_format_and_steps():
    assert parse_tokens("300k") == 300_000 and parse_tokens("1.5M") == 1_500_000 and parse_tokens("50B") == 5 * 10**10
    assert parse_tokens(4096) == 4096
    assert format_tokens(1_300_000) == "1.3M" and format_tokens(75_000) == "75k" and format_tokens(123) == "123"
    assert steps_for_budget(300_000, 256, 16) == math.ceil(300_000 / 4096) == 74
    assert steps_for_budget(4096, 256, 16) == 1
    # 50B at the paper's 8192 x 512 batch is 11,921 steps (the paper rounds to "12,500 steps" for 4.2M/step)
    assert steps_for_budget(parse_tokens("50B"), 8192, 512) == 11921
    for bad in ("12x", "-5k", "0", 0, 1.5):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_schedule_warms_up_then_decays_to_floor():
    recipe = validate_config({})["train"]
    steps = 100
    lrs = [train.lr_at(s, steps, recipe) for s in range(steps)]
    assert lrs[0] == pytest.approx(recipe["lr"] / 5) and lrs[4] == pytest.approx(recipe["lr"])  # 5 warm-up steps
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(recipe["lr"] * recipe["min_lr_ratio"], rel=0.01)


def test_parent_loss_falls_and_outputs_reload(byte_splits, config_file, tmp_path):
    out = tmp_path / "parent"
    meta = run("parent", 16384, byte_splits, out, config_file)
    records = metrics(out)
    assert meta["steps"] == 128 and records[-1]["tokens"] == 16384
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-32:]) / 32 < sum(losses[:4]) / 4 - 0.7
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 1 + 16384 // 256 and vals[-1] < vals[0] - 0.7
    model = load_model(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert not (out.parent / "parent.ckpt").exists()
    assert json.loads((out / "train_meta.json").read_text())["versions"]["torch"] == torch.__version__


def test_resume_matches_uninterrupted_run(byte_splits, config_file, tmp_path):
    straight = tmp_path / "straight"
    run("parent", 2048, byte_splits, straight, config_file)
    resumed = tmp_path / "resumed"
    assert run("parent", 2048, byte_splits, resumed, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    assert not resumed.exists() and (tmp_path / "resumed.ckpt" / "latest").exists()
    meta = run("parent", 2048, byte_splits, resumed, config_file)
    assert meta["resumed_from_step"] == 5
    def curve(out):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in metrics(out)]
    assert curve(resumed) == curve(straight)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def sparse_child(parent_dir, out_dir):
    """Magnitude-mask every block linear of a model to 50% and save it as a sparse child."""
    model = load_model(parent_dir)
    masks = {}
    for name, p in model.named_parameters():
        if ".layers." in name and p.ndim == 2:
            masks[name] = p.abs() > p.abs().flatten().median()
            p.data.mul_(masks[name])
    model.save_pretrained(out_dir)
    save_masks(masks, out_dir / MASKS_FILE)
    return masks


@pytest.mark.parametrize("arm", ["retrain", "scratch"])
def test_sparse_mask_holds_after_training(byte_splits, config_file, tmp_path, arm):
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child = tmp_path / "child"
    masks = sparse_child(parent, child)
    out = tmp_path / arm
    run(arm, 2048, byte_splits, out, config_file, "--init", child)
    trained = load_model(out).state_dict()
    start = load_model(child).state_dict()
    for name, mask in masks.items():
        assert torch.all(trained[name][~mask] == 0), name
        assert torch.all(trained[name][mask] != 0), name
        assert not torch.equal(trained[name], start[name])
    assert load_file(str(out / MASKS_FILE)).keys() == masks.keys()
    if arm == "scratch":  # surviving weights were re-initialized, not inherited
        name = next(iter(masks))
        corr = torch.corrcoef(torch.stack([trained[name][masks[name]], start[name][masks[name]]]))[0, 1]
        assert abs(corr) < 0.5


def test_window_order_is_a_seeded_permutation():
    a, b = train.window_order(64, 0), train.window_order(64, 1)
    assert sorted(a) == list(range(64)) and sorted(b) == list(range(64))   # every window once
    assert list(a) != list(b) and list(a) == list(train.window_order(64, 0))


def test_seeds_change_the_data_order_but_not_the_tokens(byte_splits, config_file, tmp_path):
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child = tmp_path / "child"
    sparse_child(parent, child)
    first = run("retrain", 1024, byte_splits, tmp_path / "s0", config_file, "--init", child, "--seed", "0")
    again = run("retrain", 1024, byte_splits, tmp_path / "s0b", config_file, "--init", child, "--seed", "0")
    other = run("retrain", 1024, byte_splits, tmp_path / "s1", config_file, "--init", child, "--seed", "1")
    assert first["final_train_loss"] == again["final_train_loss"]              # a seed is reproducible
    assert first["final_train_loss"] != other["final_train_loss"]              # another seed is another run
    assert first["tokens_seen"] == other["tokens_seen"] == 1024


def test_tokens_from_a_setting3_budget_file(byte_splits, config_file, tmp_path):
    parent = tmp_path / "parent"
    run("parent", 512, byte_splits, parent, config_file)
    child = tmp_path / "child"
    sparse_child(parent, child)
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"tokens": 700}))
    argv = ["--arm", "scratch_flops", "--tokens-from", str(budget), "--data", str(byte_splits),
            "--out", str(tmp_path / "sf"), "--config", str(config_file), "--init", str(child)]
    meta = train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config_file))))
    assert meta["tokens"] == 700 and meta["tokens_seen"] == 768                 # ceil(700 / 128) = 6 steps x 128
    budget.write_text(json.dumps({"tokens": "lots"}))
    with pytest.raises(ValueError, match="budget.json: needs a positive integer 'tokens'"):
        train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config_file))))


def test_scratch_init_is_a_real_truncated_normal():
    """Sampled from N(0, std) restricted to +-2 std (not clamped): nothing at the cut, std 0.8796 x 0.02."""
    from pvs.modeling import llama_config, new_model

    config = llama_config({**SMALL, "hidden_size": 128, "intermediate_size": 384, "rope_theta": 1e4}, 512, 0, 0)
    std = 0.02
    model = new_model(config, std, seed=3)
    matrices = torch.cat([p.detach().flatten() for p in model.parameters() if p.ndim >= 2])
    assert matrices.numel() > 200_000
    assert not torch.any(matrices.abs() == torch.tensor(2 * std, dtype=torch.float32))
    assert matrices.abs().max() < 2 * std
    assert matrices.std().item() == pytest.approx(std * 0.8796, rel=0.02)
    assert abs(matrices.mean().item()) < 1e-4
    again = new_model(config, std, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))   # seeded
    assert not torch.equal(model.lm_head.weight, new_model(config, std, seed=4).lm_head.weight)


def test_sparse_gradients_are_masked_before_clipping(byte_splits, config_file, tmp_path, monkeypatch):
    """Gradients of pruned weights are zero when the clip sees them (so the logged norm covers only kept
    weights), and AdamW's moments at pruned positions stay exactly zero."""
    parent = tmp_path / "parent"
    run("parent", 512, byte_splits, parent, config_file)
    child = tmp_path / "child"
    masks = sparse_child(parent, child)
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def checking_clip(parameters, max_norm, *a, **k):
        parameters = list(parameters)
        grads = {id(p): p.grad for p in parameters if p.grad is not None}
        seen.append((grads, torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads.values()]))))
        return clip(parameters, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", checking_clip)
    out = tmp_path / "retrain"
    assert run("retrain", 2048, byte_splits, out, config_file, "--init", child,
               "--stop-after-steps", 4) == {"stopped_at": 4}
    monkeypatch.undo()
    assert len(seen) == 4
    # the parameters are those of the trainer's model: find each mask's gradient by shape and position
    model = load_model(child)
    names = [n for n, p in model.named_parameters()]
    for grads, norm in seen:
        by_name = dict(zip(names, grads.values()))
        for name, mask in masks.items():
            assert torch.all(by_name[name][~mask] == 0), name
            assert torch.any(by_name[name][mask] != 0), name
    records = [json.loads(line) for line in (tmp_path / "retrain.ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in records if "grad_norm" in r] == pytest.approx([float(n) for _, n in seen],
                                                                                rel=1e-5)
    ckpt = tmp_path / "retrain.ckpt"
    moments = load_file(str(ckpt / (ckpt / "latest").read_text().strip() / "optimizer.safetensors"))
    for name, mask in masks.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(moments[f"{key}.{name}"][~mask] == 0), (key, name)
            assert torch.all(moments["exp_avg_sq." + name][mask] > 0), name


def test_run_only_options_keep_the_checkpoint(byte_splits, config_file, tmp_path):
    """Changing checkpoint interval, logging, micro-batch, activation checkpointing or compile resumes the
    checkpoint; changing the recipe (the learning rate) starts over."""
    from pvs.config import RUN_ONLY_TRAIN_KEYS, result_recipe

    out = tmp_path / "run"
    assert run("parent", 2048, byte_splits, out, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    cfg = yaml.safe_load(config_file.read_text())
    cfg["train"].update(checkpoint_every=7, eval_every_tokens=512, micro_batch_size=2,
                        activation_checkpointing=True)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    before, after = (validate_config(yaml.safe_load(p.read_text()))["train"] for p in (config_file, changed))
    assert before != after and result_recipe(before) == result_recipe(after)
    assert {k for k in before if before[k] != after[k]} <= set(RUN_ONLY_TRAIN_KEYS)
    meta = run("parent", 2048, byte_splits, out, changed)
    assert meta["resumed_from_step"] == 5 and meta["tokens_seen"] == 2048
    assert meta["run_options"]["checkpoint_every"] == 7 and "checkpoint_every" not in meta["recipe"]
    # a result setting is part of the run's signature: the old checkpoint does not resume into it
    other = tmp_path / "other"
    assert run("parent", 2048, byte_splits, other, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    cfg["train"]["lr"] = 0.001
    changed.write_text(yaml.safe_dump(cfg))
    assert run("parent", 2048, byte_splits, other, changed)["resumed_from_step"] == 0


def flap_child(parent_dir, data, out_dir):
    """FLAP at 0.5 on a trained parent, with bias compensation, saved as an HF directory."""
    from pvs.data.tokens import load_split, spread_windows
    from pvs.prune import flap

    model = load_model(parent_dir)
    calib = torch.from_numpy(spread_windows(load_split(data, "calib"), 32, 8))
    child = flap.prune(model, calib, 0.5, {"bias_compensation": True}).model
    child.save_pretrained(out_dir)
    return child


def test_flap_child_trains_only_its_compensation_biases(byte_splits, config_file, tmp_path):
    """Retraining a FLAP child moves its o_proj / down_proj biases and keeps the q/k/v/gate/up biases that
    stock LlamaConfig forces on exactly zero; its scratch twin is a plain Llama without biases."""
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child_dir = tmp_path / "flap"
    child = flap_child(parent, byte_splits, child_dir)
    assert child.config.attention_bias and child.config.mlp_bias
    start = child.state_dict()
    run("retrain", 1024, byte_splits, tmp_path / "retrain", config_file, "--init", child_dir)
    trained = load_model(tmp_path / "retrain")
    biases = {n: p for n, p in trained.named_parameters() if n.endswith(".bias")}
    forced = [n for n in biases if n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")]
    kept = [n for n in biases if n.split(".")[-2] in ("o_proj", "down_proj")]
    assert len(forced) == 5 * SMALL["num_hidden_layers"] and len(kept) == 2 * SMALL["num_hidden_layers"]
    for name in forced:
        assert torch.all(biases[name] == 0), name
    for name in kept:
        assert not torch.equal(biases[name], start[name]), name           # the compensation trains
    run("scratch", 1024, byte_splits, tmp_path / "scratch", config_file, "--init", child_dir)
    scratch = load_model(tmp_path / "scratch")
    assert not scratch.config.attention_bias and not scratch.config.mlp_bias
    assert not [n for n, _ in scratch.named_parameters() if n.endswith(".bias")]
    assert scratch.config.intermediate_size == child.config.intermediate_size
    assert scratch.config.num_key_value_heads == child.config.num_key_value_heads


def test_a_budget_beyond_one_epoch_fails_at_job_start_naming_file_and_key(byte_splits, config_file, tmp_path,
                                                                          capsys):
    pretrain = json.loads((byte_splits / "manifest.json").read_text())["splits"]["pretrain"]["tokens"]
    argv = ["--arm", "parent", "--tokens", str(2 * pretrain), "--data", str(byte_splits), "--out",
            str(tmp_path / "p"), "--config", str(config_file), "--device", "cpu"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{byte_splits / 'manifest.json'}: train.max_epochs = 1: arm parent" in err and "split pretrain" in err
    assert not (tmp_path / "p").exists()                                   # nothing was trained or written
