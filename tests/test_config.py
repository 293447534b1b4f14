"""Config validation: defaults are filled, and every kind of bad value fails with the key and value named."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pvs.config import ConfigError, load_config, load_schema, validate_config
from pvs.study import ARM_ORDER, Grid, Run, runs

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
    ({"train": {"compile_min_tokens": "soon"}}, "train.compile_min_tokens = 'soon'"),
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
    """config.yaml follows the paper's Figure 1: setting 1 at every method x ratio (every seed at r = 0.5),
    the scaling curve for its scaling_methods, setting 2 for its setting2_methods."""
    cfg = load_config(ROOT / "config.yaml")
    grid, budgets = runs(cfg), cfg["budgets"]
    methods, ratios, seeds = cfg["prune"]["methods"], cfg["prune"]["ratios"], cfg["seeds"]
    by_arm = {arm: [r for r in grid if r.arm == arm] for arm in ARM_ORDER}
    assert len(by_arm["parent"]) == 1 and len(by_arm["pruned"]) == len(methods) * len(ratios)
    extra_scaling = len(set(budgets["scaling"]) - {budgets["main"]})
    seeded = len(budgets["seed_ratios"])
    main_runs = len(methods) * (len(ratios) + (seeds - 1) * seeded)
    assert len(by_arm["scratch"]) == main_runs + len(budgets["scaling_methods"]) * extra_scaling
    assert len(by_arm["retrain"]) == len(by_arm["scratch"])          # setting 2's P-R_N are setting 1's at 0.5
    assert seeds >= 3 and budgets["seed_ratios"] == [0.5]
    assert len(by_arm["scratch_total"]) == len(budgets["setting2_methods"]) * len(budgets["setting2_ratios"]) * seeds
    assert len(by_arm["scratch_flops"]) == len(budgets["setting3_ratios"]) == 0      # setting 3: configs/cpu_setting3.yaml
    for run in grid:  # paths round-trip, so the evaluate rule can recover a run from its path
        assert Run.from_model_path(run.model_path) == run
    assert Run("scratch_total", "sparsegpt", 0.5, 250_000).train_tokens(1_000_000) == 1_250_000


def test_seeds_replicate_the_headline_comparisons():
    raw = {"seed": 5, "seeds": 3, "prune": {"methods": ["sparsegpt"], "ratios": [0.5, 0.6]},
           "budgets": {"main": "300k", "scaling": ["100k"], "scaling_ratio": 0.5, "setting2_ratios": [0.5]}}
    grid = runs(validate_config(raw))
    replicas = [r for r in grid if r.replica]
    # seeds 6 and 7 x ((retrain, scratch) x two ratios + S_{P+N} at the setting-2 ratio); P-R_N is shared
    assert len(replicas) == 2 * (2 * 2 + 1)
    assert {r.budget for r in replicas} == {300_000}
    assert {r.arm for r in replicas} == {"retrain", "scratch", "scratch_total"}
    assert not [r for r in grid if r.budget == 100_000 and r.replica]     # the scaling curve: one seed
    run = Run("retrain", "sparsegpt", 0.5, 300_000, 2)
    assert run.model_path == "models/retrain/sparsegpt/r0.5/N300k_seed2"
    assert Run.from_model_path(run.model_path) == run
    assert Run("scratch_flops", "sparsegpt", 0.5, 300_000).train_tokens(1_000_000) is None
    with pytest.raises(ConfigError, match="budgets.setting3_ratios\\[0\\] = 0.7"):
        validate_config({**raw, "budgets": {**raw["budgets"], "setting3_ratios": [0.7]}})
    with pytest.raises(ConfigError, match="seeds = 0"):
        validate_config({**raw, "seeds": 0})


def test_the_grid_can_follow_figure_1_instead_of_a_cross_product():
    """budgets.scaling_methods / setting2_methods / seed_ratios trim the grid as the paper's Figure 1 does."""
    raw = {"seeds": 3, "prune": {"methods": ["minitron_depth", "minitron_width", "flap"], "ratios": [0.5, 0.7]},
           "budgets": {"main": "300k", "scaling": ["100k"], "scaling_ratio": 0.5, "setting2_ratios": [0.5],
                       "scaling_methods": ["minitron_width", "minitron_depth"], "setting2_methods": ["flap"],
                       "seed_ratios": [0.5]}}
    grid = runs(validate_config(raw))
    curve = {r.method for r in grid if r.budget == 100_000}
    assert curve == {"minitron_depth", "minitron_width"}
    assert {r.method for r in grid if r.arm == "scratch_total"} == {"flap"}
    assert len([r for r in grid if r.arm == "scratch_total"]) == 3
    # three seeds at r = 0.5 for every method, one at 0.7; P-R_N of flap at 0.5 is shared with setting 2
    assert {(r.method, r.replica) for r in grid if r.arm == "scratch" and r.ratio == 0.5 and r.budget == 300_000} \
        == {(m, k) for m in raw["prune"]["methods"] for k in range(3)}
    assert {r.replica for r in grid if r.ratio == 0.7} == {0}
    grid_obj = Grid.from_config(validate_config(raw))
    assert grid_obj.curve_methods == ("minitron_depth", "minitron_width")   # coarse -> fine, as prune.methods
    for key, value, named in [("scaling_methods", ["sparsegpt"], "budgets.scaling_methods[0] = 'sparsegpt'"),
                              ("setting2_methods", ["magic"], "budgets.setting2_methods[0] = 'magic'"),
                              ("seed_ratios", [0.6], "budgets.seed_ratios[0] = 0.6")]:
        with pytest.raises(ConfigError, match=re.escape(named)):
            validate_config({**raw, "budgets": {**raw["budgets"], key: value}})


def test_run_only_train_keys_are_one_fact_left_out_of_results_and_rule_params():
    """pvs.config.RUN_ONLY_TRAIN_KEYS: the result recipe (checkpoint signature, train rules' params) omits
    them, so changing one re-runs no job and keeps checkpoints; every rule passes the result recipe."""
    from pvs.config import RUN_ONLY_TRAIN_KEYS, result_recipe

    train = validate_config({})["train"]
    assert set(RUN_ONLY_TRAIN_KEYS) <= set(train)
    from pvs.sweep import SWEEP_TRAIN_KEYS

    # the LR sweep's keys are out too: a job's params carry its own LR instead (pvs.sweep.Sweep.recipe)
    assert set(result_recipe(train)) == set(train) - set(RUN_ONLY_TRAIN_KEYS) - set(SWEEP_TRAIN_KEYS)
    assert {"lr", "batch_size", "seq_len", "precision", "init_std"} <= set(result_recipe(train))
    changed = validate_config({"train": {"checkpoint_every": 7, "eval_every_tokens": "1k",
                                         "micro_batch_size": 1, "activation_checkpointing": True,
                                         "compile": True, "compile_min_tokens": "1M"}})["train"]
    assert result_recipe(changed) == result_recipe(train)
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    # only the GPU-memory check depends on the whole section (micro-batch and recomputation change memory)
    training = re.sub(r"rule memory_check:.*?shell:", "", rules, flags=re.S)
    assert not re.search(r'=\s*config\["train"\]\s*,', training)         # no training rule depends on it all
    # parent and child training (and the LR sweep's runs): the result recipe, with the key's own LR (pvs.sweep)
    assert "SWEEP_RECIPE = result_recipe(config[\"train\"])" in rules
    assert rules.count("SWEEP.recipe(SWEEP_RECIPE, ") >= 4


def _error(cfg: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


def test_windows_longer_than_the_parents_positions_are_named():
    assert "train.seq_len = 2048: longer than the parent's 1024 positions (parent.arch.max_position_embeddings)" \
        in _error({"train": {"seq_len": 2048}})
    assert "prune.calib_seq_len = 4096" in _error({"prune": {"calib_seq_len": 4096}})
    assert "prune.flap.calib_seq_len = 2000" in _error({"prune": {"methods": ["flap"], "flap": {"calib_seq_len": 2000}}})


def test_a_local_parent_must_exist_and_be_a_llama(tmp_path):
    base = {"parent": {"source": "pretrained"}}
    assert "parent.pretrained = './nowhere': no such file or directory" in _error(
        {"parent": {**base["parent"], "pretrained": "./nowhere"}})
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2", "max_position_embeddings": 1024}))
    assert "not a Llama checkpoint" in _error({"parent": {**base["parent"], "pretrained": str(tmp_path / "gpt2")}})
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _error({"parent": {**base["parent"], "pretrained": str(tmp_path / "empty")}})
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 128}))
    assert f"train.seq_len = 256: longer than the parent's 128 positions ({tmp_path / 'llama' / 'config.json'}" in _error(
        {"parent": {**base["parent"], "pretrained": str(tmp_path / "llama")}})
    validate_config({"parent": {**base["parent"], "pretrained": "org/a-hub-model"}})     # checked when fetched


def test_a_shape_family_the_solver_cannot_produce_is_named_not_leaked():
    text = _error({"parent": {"arch": {"num_hidden_layers": 1}}, "prune": {"methods": ["minitron_depth"]}})
    assert "minitron_depth cannot produce any child of this parent (it needs at least 2 layers)" in text
    assert "min()" not in text and "empty sequence" not in text


def test_budgets_beyond_one_epoch_fail_once_the_data_exist_and_can_be_allowed(tmp_path):
    from pvs.study import data_epoch_errors

    results = tmp_path / "results"
    (results / "data").mkdir(parents=True)
    cfg = validate_config({"results_dir": str(results), "parent": {"tokens": "300k"},
                           "budgets": {"main": "50k", "scaling": ["50k"]}})
    manifest = {"seed": cfg["seed"], "split_fractions": cfg["data"]["splits"], "doc_chars": cfg["data"]["doc_chars"],
                "source": cfg["data"]["source"], "splits": {"pretrain": {"tokens": 200_000}, "retrain": {"tokens": 100_000},
                                                             "calib": {"tokens": 5000}, "val": {"tokens": 5000}}}
    (results / "data" / "manifest.json").write_text(json.dumps(manifest))
    errors = data_epoch_errors(cfg)   # 300k tokens = 74 steps of 16 x 256 = 303104 tokens; S_{P+N}: 350k of 300k
    assert [e.split(" (split sizes")[0].split(";")[0] for e in errors] == [
        "train.max_epochs = 1: arm parent on 300k tokens would read split pretrain (200000 tokens) 1.52 times",
        "train.max_epochs = 1: arm scratch_total on 350k tokens would read split pretrain+retrain (300000 tokens) "
        "1.17 times"]
    assert not data_epoch_errors({**cfg, "train": {**cfg["train"], "max_epochs": 2}})
    # the same check before any job (the Snakefile), naming the key
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(results), "parent": {"tokens": "300k"},   # over config.yaml
                                      "data": {"splits": cfg["data"]["splits"], "source": cfg["data"]["source"]},
                                      "budgets": {"main": "50k", "scaling": ["50k"]}}))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(config)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "arm parent on 300k tokens would read split pretrain" in result.stdout + result.stderr
    # stale data (another data config) are not used for the check
    manifest["doc_chars"] += 1
    (results / "data" / "manifest.json").write_text(json.dumps(manifest))
    assert not data_epoch_errors(cfg)


@pytest.mark.parametrize("preset, own_train_keys", [("configs/cpu_full.yaml", {"lr_sweep"}),
                                                    ("configs/cpu_setting3.yaml", set())])
def test_the_longer_cpu_presets_keep_the_default_size_and_recipe(preset, own_train_keys):
    """cpu_full and cpu_setting3 add arms to the default study; data, parent, recipe and evaluation stay its own."""
    default, longer = load_config(ROOT / "config.yaml"), load_config(ROOT / preset)
    for section in ("data", "parent", "evaluate"):
        assert longer[section] == default[section], (preset, section)
    differing = {key for key in default["train"] if longer["train"][key] != default["train"][key]}
    assert differing == own_train_keys, (preset, differing)
    assert longer["prune"]["methods"] == default["prune"]["methods"] and longer["budgets"]["main"] == default["budgets"]["main"]
