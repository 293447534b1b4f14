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
