"""The method registry: one record per method, and a method added in three places runs through the prune CLI.

The DAG half of the toy-method check is in tests/test_workflow.py (it reuses the smoke study's parent).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from pvs.config import ConfigError, load_schema, validate_config
from pvs.prune.registry import GRANULARITY_ORDER, METHODS, RECORDS, MethodRecord, job_options, record
from toy_method import NAME, copy_with_toy_method


def test_every_record_has_its_facts_and_a_schema_section():
    sections = load_schema()["properties"]["prune"]["properties"]
    assert len({r.granularity for r in RECORDS}) == len(RECORDS)            # one rank per method
    assert GRANULARITY_ORDER == ["minitron_depth", "minitron_width", "sheared_llama", "flap", "sparsegpt_nm",
                                 "sparsegpt"]
    for rec in RECORDS:
        assert rec.display and rec.module.startswith("pvs.prune.") and rec.name in sections
        assert (rec.shape_rule is None) == rec.sparse
        assert "calib_seq_len" in rec.options                     # every method has its calibration length
    assert {r.name for r in RECORDS if r.trains_parent} == {"sheared_llama"}
    assert {r.name for r in RECORDS if r.sparse} == {"sparsegpt", "sparsegpt_nm"}


def test_a_record_rejects_inconsistent_facts():
    with pytest.raises(ValueError, match="dense shape"):
        MethodRecord("bad", "pvs.prune.depth", "Bad", 9, sparse=True, shape_rule="minitron_depth")
    with pytest.raises(ValueError, match="run-only"):
        MethodRecord("bad", "pvs.prune.depth", "Bad", 9, shape_rule="minitron_depth", run_only=("nope",))


def test_job_options_resolve_the_methods_calibration_length_and_defaults():
    prune = validate_config({"prune": {"calib_seq_len": 64, "flap": {"calib_seq_len": 32}}})["prune"]
    assert job_options("flap", prune)["calib_seq_len"] == 32
    assert job_options("sparsegpt", prune)["calib_seq_len"] == 64
    assert job_options("sheared_llama", prune)["mask_tokens"] == record("sheared_llama").options["mask_tokens"]
    assert "aggregation" not in job_options("flap", prune)              # only the method's own section


def test_config_names_unknown_methods_and_section_keys():
    with pytest.raises(ConfigError, match=r"prune.methods\[0\] = 'toy_magnitude': unknown method"):
        validate_config({"prune": {"methods": ["toy_magnitude"]}})
    with pytest.raises(ConfigError, match=r"prune.flap: Additional properties are not allowed \('lr'"):
        validate_config({"prune": {"flap": {"lr": 1}}})


def test_a_toy_method_added_in_three_places_runs_through_the_prune_cli(tmp_path, tiny_trained_model, byte_splits):
    repo = copy_with_toy_method(tmp_path / "repo")
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"prune": {"methods": [NAME], NAME: {"keep_norms": False}}}))
    env = {**os.environ, "PYTHONPATH": str(repo / "workflow")}
    out = tmp_path / "child"
    result = subprocess.run([sys.executable, "-m", "pvs.prune", "--method", NAME, "--ratio", "0.5", "--model",
                             str(tiny_trained_model), "--data", str(byte_splits), "--out", str(out), "--config",
                             str(config), "--calib-windows", "2", "--calib-seq-len", "32", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == NAME and meta["sparse"] and abs(meta["achieved_ratio"] - 0.5) < 0.01   # norms kept
    assert meta["info"] == {"toy": False, "calib_windows": 2}              # its own option reached it
    assert (out / "masks.safetensors").is_file()
    assert NAME not in METHODS                                               # this checkout is untouched
