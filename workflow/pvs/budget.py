"""Token budgets: human strings ("400k", "1.5M", "50B") <-> integers, and budget -> optimizer steps.

Every budget in the study is given in tokens. Steps are derived once, here, and printed by the trainer:
steps = ceil(tokens / tokens_per_step), so a run never sees fewer tokens than its budget.
"""
from __future__ import annotations

import math
import re

_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKMBGT]?)\s*$")


def parse_tokens(value: str | int | float) -> int:
    """Parse a token budget such as ``"400k"``, ``"1.5M"``, ``"50B"`` or ``2000000`` into an int."""
    if isinstance(value, bool):
        raise ValueError(f"token budget must be a number or a string like '400k', got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0 or value != int(value):
            raise ValueError(f"token budget must be a positive whole number, got {value!r}")
        return int(value)
    match = _PATTERN.match(str(value))
    if not match:
        raise ValueError(f"token budget {value!r} is not of the form '400k', '1.5M', '50B' or an integer")
    tokens = float(match.group(1)) * _SUFFIX[match.group(2)]
    if tokens <= 0 or tokens != int(tokens):
        raise ValueError(f"token budget {value!r} must be a positive whole number of tokens")
    return int(tokens)


def format_tokens(tokens: int) -> str:
    """Shortest exact string for a token count: 400000 -> '400k', 1500000 -> '1.5M', 123 -> '123'."""
    for suffix, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if tokens >= scale and (tokens * 1000) % scale == 0:
            text = f"{tokens / scale:.3f}".rstrip("0").rstrip(".")
            return text + suffix
    return str(tokens)


def approx_tokens(n: float) -> str:
    """A token count to three significant digits for reading: 203268 -> '203k', 1635166 -> '1.64M'."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def steps_for_budget(tokens: int, seq_len: int, batch_size: int) -> int:
    """Optimizer steps that cover ``tokens`` with batches of ``batch_size`` windows of ``seq_len``."""
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    return max(1, math.ceil(tokens / (seq_len * batch_size)))
