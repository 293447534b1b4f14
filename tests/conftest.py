"""Shared fixtures: a tiny Llama trained once per test session on real text, and its token files.

The text is the Python standard library's own prose (pydoc topics) and source code: always present,
pinned by the Python version, real English and code without any download.
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
from pvs.modeling import llama_config, new_model

SHARED_BLIMP = ROOT.parent / "shared" / "data" / "blimp"
TINY_ARCH = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=10, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=None, rope_theta=10000.0, max_position_embeddings=256)


def stdlib_documents(max_chars: int = 1_000_000) -> list[tuple[str, str]]:
    """Real text from two domains, no download: English prose (pydoc topics) and stdlib Python source."""
    from pydoc_data.topics import topics

    prose = [(f"topic:{k}", v) for k, v in sorted(topics.items()) if len(v) > 200]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")[:6000]
        code.append((f"code:{path.name}", text))
        size += len(text)
        if size >= max_chars // 2:
            break
    return [("prose", t) for _, t in prose] + [("code", t) for _, t in code]


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos, unk_token=eos)


@pytest.fixture(scope="session")
def byte_splits(tmp_path_factory) -> Path:
    """A small data dir in the pvs.data.tokens layout, from real text with a 512-token BPE tokenizer.

    Documents (two sources: prose, code) are shuffled and split 70/15/5/10 into pretrain/retrain/
    calib/val; val is grouped by source; heldout_docs.jsonl holds the val documents as text.
    """
    out = tmp_path_factory.mktemp("tiny_data")
    docs = stdlib_documents()
    order = np.random.default_rng(0).permutation(len(docs))
    n = len(docs)
    bounds = {"pretrain": (0, int(0.7 * n)), "retrain": (int(0.7 * n), int(0.85 * n)),
              "calib": (int(0.85 * n), int(0.9 * n)), "val": (int(0.9 * n), n)}
    split_docs = {k: [docs[i] for i in order[a:b]] for k, (a, b) in bounds.items()}
    split_docs["val"].sort(key=lambda d: d[0])
    tokenizer = _train_tokenizer([t for _, t in split_docs["pretrain"]], 512)
    tokenizer.save_pretrained(out / "tokenizer")
    eos = tokenizer.eos_token_id
    manifest = {"dtype": "uint16", "vocab_size": len(tokenizer), "eos_id": eos, "splits": {}, "val_sources": {}}
    for split, items in split_docs.items():
        ids = []
        for source, text in items:
            start = len(ids)
            ids.extend(tokenizer(text)["input_ids"] + [eos])
            if split == "val":
                a, _ = manifest["val_sources"].get(source, (start, 0))
                manifest["val_sources"][source] = [a, len(ids)]
        np.asarray(ids, dtype=np.uint16).tofile(out / f"{split}.bin")
        manifest["splits"][split] = {"documents": len(items), "tokens": len(ids)}
    with open(out / "heldout_docs.jsonl", "w") as f:
        for source, text in split_docs["val"]:
            f.write(json.dumps({"source": source, "text": text}) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


@pytest.fixture(scope="session")
def tiny_trained_model(byte_splits, tmp_path_factory) -> Path:
    """A 10-layer GQA Llama (vocab 512) trained 250 steps on the pretrain split; an HF dir with tokenizer."""
    torch.manual_seed(0)
    config = llama_config(TINY_ARCH, vocab_size=512, bos_id=0, eos_id=0)
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
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(byte_splits / "tokenizer").save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def val(byte_splits) -> torch.Tensor:
    """16 held-out windows of 128 tokens spread over the val split (the one-shot loss of the prune tests)."""
    from pvs.data.tokens import load_split, spread_windows

    return torch.from_numpy(spread_windows(load_split(byte_splits, "val"), 128, 16))
