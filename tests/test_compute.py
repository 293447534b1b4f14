"""Compute accounting (pvs.compute): FLOPs parameters, pruning cost, whole-pipeline FLOPs, setting 3's budget."""
from __future__ import annotations

import json
import math

import pytest

from pvs import compute
from pvs.train import budget as budget_cli

SHAPE = {"hidden_size": 100, "vocab_size": 1000}


def meta(child_block=4_000, mask=0, candidates=0):
    return {"params": {"parent": {"non_embedding": 10_000}, "child": {"non_embedding": child_block}},
            "shape": {"parent": SHAPE, "child": SHAPE}, "calibration": {"tokens": 500},
            "mask_learning_tokens": mask, "info": {"candidates": [{}] * candidates}}


def test_flops_params_are_blocks_plus_head():
    assert compute.flops_params(SHAPE, 10_000) == 10_000 + 100 * 1000
    assert compute.train_flops(10, 7) == 420


def test_prune_cost_counts_forward_passes_and_mask_learning():
    n_parent = 110_000
    assert compute.prune_cost(meta())["flops"] == 2 * n_parent * 500
    assert compute.prune_cost(meta(candidates=6))["flops"] == 2 * n_parent * 500 * 7     # depth scores 6 blocks
    sheared = compute.prune_cost(meta(mask=2_000))
    assert sheared["flops"] == 2 * n_parent * 500 + 6 * n_parent * 2_000 and sheared["tokens"] == 2_500


def test_pipeline_and_setting3_budget():
    m, P, N = meta(), 1_000_000, 200_000
    n_parent, n_child = 110_000, 104_000
    pipe = compute.pipeline(m, P, N)
    assert pipe["tokens"] == P + 500 + N
    assert pipe["flops"] == pytest.approx(6 * n_parent * P + 2 * n_parent * 500 + 6 * n_child * N)
    tokens = compute.setting3_tokens(m, P, N)
    assert tokens == math.ceil(pipe["flops"] / (6 * n_child))
    assert 6 * n_child * tokens >= pipe["flops"] > 6 * n_child * (tokens - 1)    # scratch gets the same FLOPs
    assert compute.setting3_tokens(meta(child_block=1_000), P, N) > tokens       # a smaller child gets more tokens


def test_cli_writes_the_budget_file_and_names_a_missing_meta(tmp_path, capsys):
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "meta.json").write_text(json.dumps(meta()))
    out = tmp_path / "s3.json"
    assert budget_cli.main(["--pruned", str(tmp_path / "pruned"), "--parent-tokens", "1M", "--budget", "200k",
                         "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["tokens"] == compute.setting3_tokens(meta(), 1_000_000, 200_000) and "6·N·D" in record["convention"]
    assert budget_cli.main(["--pruned", str(tmp_path / "nowhere"), "--parent-tokens", "1M", "--budget", "200k"]) == 2
    assert "nowhere/meta.json: no prune meta.json" in capsys.readouterr().err


def test_s_f_trains_the_childs_shape_without_flaps_biases(tmp_path):
    """A FLAP child carries compensation biases; its scratch twin (S_F) has none, so S_F's FLOP-matched tokens
    are computed for the bias-free model it actually trains."""
    config = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 16, "num_hidden_layers": 3, "attention_bias": True, "mlp_bias": True}
    assert compute.bias_params(config) == 3 * ((64 + 2 * 32 + 64) + (2 * 96 + 64))
    assert compute.bias_params({**config, "attention_bias": False, "mlp_bias": False}) == 0
    (tmp_path / "pruned").mkdir()
    (tmp_path / "pruned" / "meta.json").write_text(json.dumps(meta()))
    (tmp_path / "pruned" / "config.json").write_text(json.dumps(config))
    record = compute.setting3_record(tmp_path / "pruned", 1_000_000, 200_000)
    twin = compute.child_flops_params(meta()) - compute.bias_params(config)
    assert record["scratch_params"] == twin and record["tokens"] == compute.setting3_tokens(meta(), 1_000_000, 200_000, twin)
    assert record["tokens"] > compute.setting3_tokens(meta(), 1_000_000, 200_000)        # fewer params, more tokens
