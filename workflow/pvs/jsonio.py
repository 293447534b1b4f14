"""Atomic JSON writes, without torch: light jobs (the LR choice, its table) import only this."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json(path: str | os.PathLike, obj: dict) -> None:
    """Write JSON atomically (temp file + rename) so an interrupted job never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
