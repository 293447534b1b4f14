"""Shared fixtures: a tiny Llama trained once per test session on real text, and its token files.

The text is the Python standard library's own source (always present, pinned by the Python version),
encoded as bytes (vocab 256): real, varied English/code text without any download.
"""
from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from pvs.modeling import llama_config, new_model  # noqa: E402

SHARED_BLIMP = ROOT.parent / "shared" / "data" / "blimp"
TINY_ARCH = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=10, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=None, rope_theta=10000.0, max_position_embeddings=256)


def stdlib_text(max_bytes: int = 1_200_000) -> bytes:
    """Deterministic real text: the stdlib modules' source, in sorted order, up to ``max_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


@pytest.fixture(scope="session")
def byte_splits(tmp_path_factory) -> Path:
    """A data dir in the pvs.tokens layout (byte tokens, uint16): pretrain/retrain/calib/val splits."""
    out = tmp_path_factory.mktemp("byte_data")
    tokens = np.frombuffer(stdlib_text(), dtype=np.uint8).astype(np.uint16)
    n = len(tokens)
    cuts = {"pretrain": (0, int(0.7 * n)), "retrain": (int(0.7 * n), int(0.85 * n)),
            "calib": (int(0.85 * n), int(0.9 * n)), "val": (int(0.9 * n), n)}
    for split, (a, b) in cuts.items():
        tokens[a:b].tofile(out / f"{split}.bin")
    manifest = {"dtype": "uint16", "vocab_size": 256, "splits": {k: b - a for k, (a, b) in cuts.items()},
                "val_sources": {"stdlib": [0, cuts["val"][1] - cuts["val"][0]]}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def tiny_trained_model(byte_splits, tmp_path_factory) -> Path:
    """A 10-layer GQA Llama (vocab 256) trained ~250 steps on the pretrain split; saved as an HF dir."""
    torch.manual_seed(0)
    config = llama_config(TINY_ARCH, vocab_size=256, bos_id=0, eos_id=0)
    model = new_model(config, std=0.02, seed=0)
    tokens = np.fromfile(byte_splits / "pretrain.bin", dtype=np.uint16).astype(np.int64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    seq, batch, steps = 128, 16, 250
    gen = np.random.default_rng(0)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * (1 - step / steps))
        starts = gen.integers(0, len(tokens) - seq - 1, batch)
        x = torch.from_numpy(np.stack([tokens[s:s + seq + 1] for s in starts]))
        loss = model(input_ids=x, labels=x).loss  # HF shifts labels inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    out = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(out)
    return out
