"""Adding a pruning method to a copy of the repository, exactly as the registry's docstring says:
one module under workflow/pvs/prune/, one record in RECORDS, one prune.<method> section in the schema.

Used by tests/test_registry.py (the prune CLI) and tests/test_workflow.py (the DAG); nothing else in the
copy is edited, so a passing test shows that adding a method touches these three places only.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
NAME = "toy_magnitude"

MODULE = '''"""A toy sparse method for the tests: per-matrix magnitude pruning with a configurable floor."""
from pvs.prune import registry
from pvs.prune.common import PruneResult
from pvs.prune.sparsegpt import magnitude_prune


def prune(model, calib, ratio, options):
    """Zero the round(ratio x size) smallest |w| of every block linear (``keep_norms`` is a toy option)."""
    masks = magnitude_prune(model, ratio)
    return PruneResult(model=model, masks=masks,
                       info={"toy": registry.option("toy_magnitude", options, "keep_norms"),
                             "calib_windows": int(calib.shape[0])})
'''
RECORD = ('    MethodRecord("toy_magnitude", "pvs.prune.toy_magnitude", "Toy magnitude", 6, sparse=True,\n'
          '                 options={"keep_norms": True}),\n')
SECTION = {"description": "A toy sparse method (tests only): per-matrix magnitude pruning.", "type": "object",
           "additionalProperties": False, "default": {},
           "properties": {"calib_seq_len": {"description": "Tokens per calibration window (null: shared).",
                                            "type": ["integer", "null"], "minimum": 8, "default": None},
                          "keep_norms": {"description": "A toy option.", "type": "boolean", "default": True}}}


def copy_with_toy_method(dest: Path) -> Path:
    """A copy of the tracked files of the repository at ``dest`` with the toy method added; returns ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "workflow" / "pvs" / "prune" / f"{NAME}.py").write_text(MODULE)
    registry = dest / "workflow" / "pvs" / "prune" / "registry.py"
    text = registry.read_text()
    anchor = "\n)\nMETHODS: dict[str, MethodRecord]"
    assert anchor in text, "RECORDS no longer ends where the test expects"
    registry.write_text(text.replace(anchor, "\n" + RECORD.rstrip("\n") + anchor, 1))
    schema_path = dest / "workflow" / "schemas" / "config.schema.yaml"
    schema = yaml.safe_load(schema_path.read_text())
    schema["properties"]["prune"]["properties"][NAME] = SECTION
    schema_path.write_text(yaml.safe_dump(schema, sort_keys=False, allow_unicode=True))
    return dest
