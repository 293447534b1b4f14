"""Token files: the five disjoint splits written by ``pvs.data`` and the readers every stage shares.

Layout of a prepared data directory (``results/data``)::

    tokenizer/            HF tokenizer (AutoTokenizer.from_pretrained works on it)
    pretrain.bin          parent pretraining split       (np.memmap, dtype in manifest.json)
    retrain.bin           retraining split (disjoint from pretrain)
    calib.bin             calibration / mask-learning split
    val.bin               held-out validation split, grouped by source (ranges in manifest "val_sources")
    dev.bin               development split: only the LR sweep's dev loss reads it (pvs.sweep); disjoint from all
    heldout_docs.jsonl    the validation documents as text ({"source", "text"}), for generated eval tasks
    manifest.json         sources, sha256s, sizes, token counts, hashes

Sharded data (``pvs.data.shards``) writes no split files: each split is a list of token ranges of the shard
files (``manifest["splits"][split]["ranges"]``: ``[[file, start, end], ...]``, files relative to the
data directory), read in place as one array (``TokenView``). Nothing is copied at any corpus size.

Documents are separated by the tokenizer's end-of-text token.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

SPLITS = ("pretrain", "retrain", "calib", "val", "dev")


def read_manifest(data_dir: str | os.PathLike) -> dict:
    with open(Path(data_dir) / "manifest.json") as f:
        return json.load(f)


class TokenView:
    """Several read-only token arrays (memmap slices) as one array: ``len``, slices, positions, position arrays."""

    def __init__(self, parts: list[np.ndarray]):
        if not parts:
            raise ValueError("a token view needs at least one part")
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def pieces(self, a: int, b: int):
        """(part index, start, end) within each part, covering tokens [a, b) of the view in order."""
        for k in range(len(self.parts)):
            lo, hi = max(a, self.starts[k]), min(b, self.starts[k + 1])
            if lo < hi:
                yield k, int(lo - self.starts[k]), int(hi - self.starts[k])

    def chunks(self, a: int, b: int, size: int = 1 << 24):
        """Tokens [a, b) as consecutive arrays of at most ``size`` tokens (memory stays flat)."""
        for k, lo, hi in self.pieces(a, b):
            for x in range(lo, hi, size):
                yield np.asarray(self.parts[k][x:min(hi, x + size)])

    def __getitem__(self, key):
        if isinstance(key, slice):
            a, b, step = key.indices(len(self))
            if step != 1:
                raise ValueError("a token view is sliced with step 1 only")
            pieces = [np.asarray(self.parts[k][lo:hi]) for k, lo, hi in self.pieces(a, b)]
            return np.concatenate(pieces) if pieces else np.empty(0, self.dtype)
        index = np.asarray(key, dtype=np.int64)                   # one position or an array of positions
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"position out of range for a view of {len(self)} tokens")
        part = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=self.dtype)
        for k in np.unique(part):
            inside = part == k
            out[inside] = self.parts[k][index[inside] - self.starts[k]]
        return out[()] if out.ndim == 0 else out


def load_split(data_dir: str | os.PathLike, split: str) -> np.ndarray | TokenView:
    """A read-only view of one split's tokens: a memmap of ``<split>.bin``, or a TokenView of shard ranges."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    manifest = read_manifest(data_dir)
    ranges = manifest["splits"].get(split, {}).get("ranges")
    files = [Path(data_dir) / f for f, _, _ in ranges] if ranges else [Path(data_dir) / f"{split}.bin"]
    for path in files:
        if not path.exists():
            raise FileNotFoundError(f"token file {path} is missing: run the data stage (python -m pvs.data) first")
    if not ranges:
        return np.memmap(files[0], dtype=manifest["dtype"], mode="r")
    return TokenView([np.memmap(path, dtype=manifest["dtype"], mode="r")[a:b]
                      for path, (_, a, b) in zip(files, ranges)])


def spread_windows(tokens: np.ndarray, seq_len: int, count: int | None) -> np.ndarray:
    """``count`` non-overlapping windows of ``seq_len`` spread evenly over ``tokens`` (None = all).

    Returns an int64 array (count, seq_len). Evenly spread, so a subset samples every source of a
    source-grouped split. Raises if the split is shorter than one window.
    """
    available = len(tokens) // seq_len
    if available == 0:
        raise ValueError(f"split has {len(tokens)} tokens, fewer than one window of {seq_len}")
    count = available if count is None else min(count, available)
    starts = (np.linspace(0, available - 1, count).round().astype(np.int64)) * seq_len
    return np.stack([np.asarray(tokens[s:s + seq_len], dtype=np.int64) for s in starts])


class TokenStream:
    """Several token files read as one stream, in order, from a start offset; wraps around at the end.

    Window i covers tokens [i * seq_len, (i + 1) * seq_len] of the stream (one extra for the targets).
    The trainer visits windows in a seeded permutation, so the step number is the whole data state a
    resumed run needs. Documents were shuffled when the splits were written.
    """

    def __init__(self, arrays: list[np.ndarray], start: int = 0):
        self.tokens = TokenView([a for a in arrays if len(a)]) if any(len(a) for a in arrays) else None
        if self.tokens is None:
            raise ValueError("token stream is empty")
        self.length, self.start = len(self.tokens), start

    def read(self, position: int, n: int) -> np.ndarray:
        """``n`` tokens starting ``position`` tokens after the stream's start (int64)."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        offset = (self.start + position) % self.length
        while filled < n:                               # wraps around at the end of the stream
            chunk = self.tokens[offset:offset + n - filled]
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            offset = (offset + len(chunk)) % self.length
        return out

    def windows(self, indices, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and next-token targets, each (len(indices), seq_len): window i starts at i * seq_len."""
        flat = np.stack([self.read(int(i) * seq_len, seq_len + 1) for i in indices])
        return np.ascontiguousarray(flat[:, :-1]), np.ascontiguousarray(flat[:, 1:])
