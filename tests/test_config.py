"""Config validation: defaults are filled, and every kind of bad value fails with the key and value named."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pvs.config import ConfigError, load_config, load_schema, validate_config
from pvs.study import ARM_ORDER, Run, runs

ROOT = Path(__file__).resolve().parents[1]


def test_every_schema_key_has_a_description_and_a_default():
    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            assert sub.get("description"), f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")
    walk(load_schema(), "")


def test_shipped_configs_are_valid():
    for path in [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        cfg = load_config(path)
        assert cfg["prune"]["methods"] and cfg["parent"]["arch"]["num_hidden_layers"] >= 10, path


def test_defaults_are_filled():
    cfg = validate_config({"train": {"lr": 1e-3}})
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["betas"] == [0.9, 0.95]
    assert cfg["prune"]["ratios"] == [0.5, 0.6, 0.7, 0.8]


@pytest.mark.parametrize("raw, named", [
    ({"bogus_key": 1}, "'bogus_key' was unexpected"),
    ({"train": {"lr": "fast"}}, "train.lr = 'fast'"),
    ({"prune": {"ratios": [0.5, 1.2]}}, "prune.ratios[1] = 1.2"),
    ({"prune": {"ratios": [0.0]}}, "prune.ratios[0] = 0.0"),
    ({"prune": {"methods": ["magic"]}}, "prune.methods[0] = 'magic': unknown method"),
    ({"budgets": {"main": "12 parsecs"}}, "budgets.main = '12 parsecs'"),
    ({"parent": {"arch": {"num_key_value_heads": 3}}}, "parent.arch.num_key_value_heads = 3"),
    ({"parent": {"source": "pretrained"}}, "parent.pretrained = None"),
    ({"data": {"source": "local_text"}}, "data.local_text.paths = []"),
    ({"budgets": {"scaling_ratio": 0.55}}, "budgets.scaling_ratio = 0.55"),
    ({"prune": {"methods": ["sparsegpt_nm"], "ratios": [0.5, 0.65]}}, "prune.ratios[1] = 0.65: sparsegpt_nm needs"),
    ({"prune": {"methods": ["flap"], "ratios": [0.95]}}, "prune.methods 'flap' at ratio 0.95"),
    ({"prune": {"minitron_width": {"aggregation": "max"}}}, "prune.minitron_width.aggregation = 'max'"),
    ({"prune": {"sheared_llama": {"mask_tokens": 0}}}, "prune.sheared_llama.mask_tokens = 0"),
    ({"prune": {"sheared_mask_tokens": 100}}, "prune: Additional properties are not allowed ('sheared_mask_tokens'"),
])
def test_bad_values_are_named(raw, named):
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    assert named in str(info.value)


def test_snakemake_rejects_a_bad_config_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"prune": {"ratios": [0.5, 1.5]}}))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "prune.ratios[1] = 1.5" in result.stdout + result.stderr


def test_grid_of_the_default_study():
    cfg = load_config(ROOT / "config.yaml")
    grid = runs(cfg)
    methods, ratios = cfg["prune"]["methods"], cfg["prune"]["ratios"]
    by_arm = {arm: [r for r in grid if r.arm == arm] for arm in ARM_ORDER}
    assert len(by_arm["parent"]) == 1 and len(by_arm["pruned"]) == len(methods) * len(ratios)
    extra_scaling = len(set(cfg["budgets"]["scaling"]) - {cfg["budgets"]["main"]})
    assert len(by_arm["retrain"]) == len(methods) * (len(ratios) + extra_scaling) == len(by_arm["scratch"])
    assert len(by_arm["scratch_total"]) == len(methods) * len(cfg["budgets"]["setting2_ratios"])
    assert len(by_arm["scratch_flops"]) == len(methods) * len(cfg["budgets"]["setting3_ratios"]) > 0
    for run in grid:  # paths round-trip, so the evaluate rule can recover a run from its path
        assert Run.from_model_path(run.model_path) == run
    assert Run("scratch_total", "sparsegpt", 0.5, 250_000).train_tokens(1_000_000) == 1_250_000


def test_seeds_replicate_setting1_at_the_main_budget():
    raw = {"seed": 5, "seeds": 3, "prune": {"methods": ["sparsegpt"], "ratios": [0.5, 0.6]},
           "budgets": {"main": "300k", "scaling": ["100k"], "scaling_ratio": 0.5, "setting2_ratios": [0.5]}}
    grid = runs(validate_config(raw))
    replicas = [r for r in grid if r.replica]
    assert len(replicas) == 2 * 2 * 2                     # seeds 6 and 7 x (retrain, scratch) x two ratios
    assert {r.budget for r in replicas} == {300_000} and {r.arm for r in replicas} == {"retrain", "scratch"}
    run = Run("retrain", "sparsegpt", 0.5, 300_000, 2)
    assert run.model_path == "models/retrain/sparsegpt/r0.5/N300k_seed2"
    assert Run.from_model_path(run.model_path) == run
    assert Run("scratch_flops", "sparsegpt", 0.5, 300_000).train_tokens(1_000_000) is None
    with pytest.raises(ConfigError, match="budgets.setting3_ratios\\[0\\] = 0.7"):
        validate_config({**raw, "budgets": {**raw["budgets"], "setting3_ratios": [0.7]}})
    with pytest.raises(ConfigError, match="seeds = 0"):
        validate_config({**raw, "seeds": 0})


def test_run_only_train_keys_are_one_fact_left_out_of_results_and_rule_params():
    """pvs.config.RUN_ONLY_TRAIN_KEYS: the result recipe (checkpoint signature, train rules' params) omits
    them, so changing one re-runs no job and keeps checkpoints; every rule passes the result recipe."""
    from pvs.config import RUN_ONLY_TRAIN_KEYS, result_recipe

    train = validate_config({})["train"]
    assert set(RUN_ONLY_TRAIN_KEYS) <= set(train)
    assert set(result_recipe(train)) == set(train) - set(RUN_ONLY_TRAIN_KEYS)
    assert {"lr", "batch_size", "seq_len", "precision", "init_std"} <= set(result_recipe(train))
    changed = validate_config({"train": {"checkpoint_every": 7, "eval_every_tokens": "1k",
                                         "micro_batch_size": 1, "activation_checkpointing": True,
                                         "compile": True}})["train"]
    assert result_recipe(changed) == result_recipe(train)
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    assert not re.search(r'=\s*config\["train"\]\s*,', rules)            # no rule depends on the whole section
    assert rules.count('recipe=result_recipe(config["train"])') >= 2     # parent and child training
