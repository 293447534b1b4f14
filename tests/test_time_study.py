"""benchmarks/time_study.py empties only the timed study's own outputs: other studies' folders stay, at any depth."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _time_study():
    spec = importlib.util.spec_from_file_location("time_study", ROOT / "benchmarks" / "time_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_emptying_keeps_the_readme_and_other_studies_at_any_depth(tmp_path):
    results = tmp_path / "results"
    written = [results / "config.resolved.yaml", results / "models" / "parent" / "model.safetensors",
               results / "findings.md"]
    kept = [results / "README.md", results / "smoke" / "config.resolved.yaml",
            results / "regime" / "tpp20" / "config.resolved.yaml", results / "regime" / "tpp20" / "findings.md",
            results / "regime" / "tables" / "regime.md"]       # make regime: the report beside its studies
    for path in written + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (results / "linked").symlink_to(tmp_path)
    _time_study().empty_study_folder(results)
    assert all(path.exists() for path in kept) and (results / "linked").is_symlink()
    assert not any(path.exists() for path in written) and not (results / "models").exists()
    _time_study().empty_study_folder(tmp_path / "absent")                     # nothing to empty: no error
