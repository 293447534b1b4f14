"""A Hugging Face dataset at scale (pvs.data.shards), on a small local `datasets` dataset: parallel shards,
resume, splits by token offset, and the workflow's data jobs end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pvs.data import shards
from pvs.config import ConfigError, validate_config
from pvs.data.tokens import TokenStream, TokenView, load_split, read_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def local_dataset(tmp_path_factory) -> Path:
    """A json dataset of 4 files x 50 documents that `datasets.load_dataset(DIR, streaming=True)` reads."""
    root = tmp_path_factory.mktemp("hfdata")
    words = "the cat sat on a mat while birds sang over quiet hills and rivers ran".split()
    rng = np.random.default_rng(0)
    for f in range(4):
        with open(root / f"part-{f}.jsonl", "w") as out:
            for d in range(50):
                text = " ".join(rng.choice(words, size=int(rng.integers(20, 60))))
                out.write(json.dumps({"text": f"doc {f}-{d}: {text}.", "id": f * 50 + d}) + "\n")
    return root


def config(dataset: Path, tokenizer: Path, **hf) -> dict:
    return validate_config({"data": {"source": "hf", "tokenizer": str(tokenizer), "splits": {"val": 0.1, "calib": 0.05,
                                     "retrain": 0.3}, "hf": {"name": str(dataset), "max_documents": 200,
                                                             "shards": 2, **hf}},
                            "prune": {"methods": ["sparsegpt"]}})


def test_shards_resume_and_cover_every_document(local_dataset, byte_splits, tmp_path):
    cfg, tok = config(local_dataset, byte_splits / "tokenizer"), str(byte_splits / "tokenizer")
    out = tmp_path / "shards"
    assert shards.tokenize_shard(cfg, 0, tok, out, max_rows_this_run=30) == {}          # interrupted at 30 rows
    assert json.loads((out / "0.progress.json").read_text())["rows"] == 30 and not (out / "0.bin").exists()
    first = shards.tokenize_shard(cfg, 0, tok, out)                                       # resumed
    second = shards.tokenize_shard(cfg, 1, tok, out)
    assert first["rows"] + second["rows"] == 200 and not (out / "0.progress.json").exists()
    again = shards.tokenize_shard(cfg, 0, tok, tmp_path / "fresh")                         # uninterrupted
    assert again["sha256"] == first["sha256"] and again["tokens"] == first["tokens"]
    eos = json.loads((byte_splits / "manifest.json").read_text())["eos_id"]
    total = sum(int((np.fromfile(out / f"{k}.bin", dtype=first["dtype"]) == eos).sum()) for k in range(2))
    assert total == 200                                                                  # every row once


def test_assemble_cuts_disjoint_slices_by_token_offset(local_dataset, byte_splits, tmp_path):
    cfg, tok = config(local_dataset, byte_splits / "tokenizer"), str(byte_splits / "tokenizer")
    for k in range(2):
        shards.tokenize_shard(cfg, k, tok, tmp_path / "shards")
    manifest = shards.assemble(cfg, tmp_path / "shards", tok, tmp_path / "data")
    splits = manifest["splits"]
    offsets = [splits[name]["offset"] for name in shards.ORDER]
    assert offsets[0][0] == 0 and all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))   # contiguous, disjoint
    assert offsets[-1][1] == manifest["total_tokens"]
    assert splits["pretrain"]["tokens"] > splits["retrain"]["tokens"] > splits["val"]["tokens"] > 0
    eos = manifest["eos_id"]
    for name in shards.ORDER:                                        # every slice ends at a document boundary
        assert load_split(tmp_path / "data", name)[-1] == eos, name
    assert sum(splits[n]["documents"] for n in shards.ORDER) == 200
    # nothing copied: the splits are ranges of the shard files, read in place, and together they are the shards
    assert not list((tmp_path / "data").glob("*.bin"))
    assert all(isinstance(load_split(tmp_path / "data", n), TokenView) for n in shards.ORDER)
    stream = np.concatenate([load_split(tmp_path / "data", n)[:] for n in shards.ORDER])
    on_disk = np.concatenate([np.fromfile(tmp_path / "shards" / f"{k}.bin", dtype=manifest["dtype"]) for k in range(2)])
    assert np.array_equal(stream, on_disk)
    spanning = [n for n in shards.ORDER if len(splits[n]["ranges"]) == 2]
    assert spanning, "one split should span both shards"
    for name in shards.ORDER:                                        # documents = EOS tokens in the slice
        assert splits[name]["documents"] == int((load_split(tmp_path / "data", name)[:] == eos).sum()), name
    assert read_manifest(tmp_path / "data")["vocab_size"] == manifest["vocab_size"]
    heldout = (tmp_path / "data" / "heldout_docs.jsonl").read_text().splitlines()
    assert len(heldout) == splits["val"]["documents"] and json.loads(heldout[0])["text"].startswith("doc ")


def test_token_view_reads_ranges_of_several_files_as_one_array(tmp_path):
    a, b = np.arange(10, dtype=np.uint16), np.arange(100, 107, dtype=np.uint16)
    a.tofile(tmp_path / "a.bin"), b.tofile(tmp_path / "b.bin")
    view = TokenView([np.memmap(tmp_path / "a.bin", dtype=np.uint16, mode="r")[4:10],
                      np.memmap(tmp_path / "b.bin", dtype=np.uint16, mode="r")[0:5]])
    expected = np.concatenate([a[4:10], b[0:5]])
    assert len(view) == 11 and np.array_equal(view[:], expected)
    assert np.array_equal(view[3:9], expected[3:9]) and view[-1] == 104 and view[6] == 100
    positions = np.array([[0, 5, 6], [10, -1, 2]])                   # evaluation gathers windows this way
    assert np.array_equal(view[positions], expected[positions])
    assert np.array_equal(np.concatenate(list(view.chunks(2, 11, size=3))), expected[2:11])
    assert list(view.pieces(5, 8)) == [(0, 5, 6), (1, 0, 2)]
    stream = TokenStream([view])                                      # the trainer's reader, wrapping around
    assert np.array_equal(stream.read(9, 4), np.concatenate([expected[9:], expected[:2]]))
    with pytest.raises(IndexError):
        view[11]
    with pytest.raises(ValueError, match="step 1"):
        view[::2]


def test_a_parent_trains_and_evaluates_on_sharded_splits(local_dataset, byte_splits, tmp_path):
    """pvs.train and pvs.evaluate read the shard ranges through the same loader: the loss falls, val scores."""
    cfg, tok = config(local_dataset, byte_splits / "tokenizer"), str(byte_splits / "tokenizer")
    for k in range(2):
        shards.tokenize_shard(cfg, k, tok, tmp_path / "shards")
    shards.assemble(cfg, tmp_path / "shards", tok, tmp_path / "data")
    from test_distributed import losses, train, write_config

    train(1, tmp_path / "data", tmp_path / "parent", write_config(tmp_path / "c.yaml"), "--arm", "parent",
          "--tokens", 2048)
    trajectory = losses(tmp_path / "parent")
    assert len(trajectory) == 16 and trajectory[-1] < trajectory[0] - 0.5
    out = tmp_path / "eval.json"
    result = subprocess.run([sys.executable, "-m", "pvs.evaluate", "--model", tmp_path / "parent", "--data",
                             tmp_path / "data", "--out", out, "--no-lmeval", "--val-windows", "8", "--threads", "1"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["val_loss"] < np.log(read_manifest(tmp_path / "data")["vocab_size"])     # better than uniform


def test_sharded_data_needs_a_tokenizer(local_dataset):
    with pytest.raises(ConfigError, match="data.hf.shards = 2: sharded tokenization needs an existing tokenizer"):
        validate_config({"data": {"source": "hf", "hf": {"name": str(local_dataset), "shards": 2}},
                         "prune": {"methods": ["sparsegpt"]}})


def test_workflow_data_jobs_on_a_local_dataset(local_dataset, byte_splits, tmp_path):
    """The data jobs through the SLURM profile (stand-in sbatch, tests/slurm_standin): tokenize_shard jobs ask
    for CPUs and memory only, prepare_data assembles."""
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg.update(results_dir="results", data={"source": "hf", "tokenizer": str(byte_splits / "tokenizer"),
                                            "splits": {"val": 0.1, "calib": 0.05, "retrain": 0.3},
                                            "hf": {"name": str(local_dataset), "max_documents": 200, "shards": 2}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PATH": f"{ROOT / 'tests' / 'slurm_standin'}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM_DIR": str(tmp_path / "slurm")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "c.yaml"), "--workflow-profile", str(ROOT / "profiles" / "slurm"),
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
           "results/data/manifest.json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "results" / "data" / "shards" / "1.bin").exists()
    assert read_manifest(tmp_path / "results" / "data")["split_by"].startswith("token offset")
    submitted = [json.loads(line)["argv"] for line in (tmp_path / "slurm" / "submissions.jsonl").read_text().splitlines()]
    tokenize = [" ".join(argv) for argv in submitted if "rule_tokenize_shard" in " ".join(argv)]
    assert len(tokenize) == 2 and len(submitted) == 3                 # 2 shards + prepare_data
    for text in tokenize:
        assert "--gpus" not in text and "--cpus-per-task=16" in text and "--mem 32000" in text and "-t 720" in text
