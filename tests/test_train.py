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
    cfg = {"parent": {"arch": SMALL}, "threads_per_job": 1, "prune": {"methods": ["sparsegpt"]},
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
