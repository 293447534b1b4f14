"""benchmarks/startup.py weights its start-up shares by the study's own jobs and times its smallest training job."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import startup  # noqa: E402  (benchmarks/startup.py)

from pvs.budget import parse_tokens  # noqa: E402
from pvs.config import load_config  # noqa: E402


def test_job_counts_come_from_the_studys_dry_run():
    cfg = load_config(ROOT / "configs/smoke.yaml")
    counts = startup.study_warm_jobs("configs/smoke.yaml")
    assert counts["prune"] == len(cfg["prune"]["methods"]) * len(cfg["prune"]["ratios"])
    # every trained model is evaluated, and the parent, its sweep and the children are all training jobs
    assert counts["train"] > counts["prune"] and counts["evaluate"] > counts["prune"]
    assert counts != startup.study_warm_jobs("config.yaml")     # another study, other counts


def test_the_timed_training_job_runs_the_smallest_budget():
    for configfile in ("config.yaml", "configs/smoke.yaml"):
        cfg = load_config(ROOT / configfile)
        smallest = parse_tokens(startup.smallest_training_budget(configfile))
        assert smallest == min(parse_tokens(b) for b in [cfg["budgets"]["main"], *cfg["budgets"]["scaling"],
                                                          cfg["train"]["lr_sweep_tokens"] or cfg["budgets"]["main"]])
        assert smallest <= parse_tokens(cfg["budgets"]["scaling"][0])


def test_outputs_match_ignores_run_times_but_not_weights_or_scores(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    def job(name: str, weight: float, score: float, seconds: float) -> None:
        out = tmp_path / name / "trained"
        out.mkdir(parents=True)
        save_file({"w": torch.full((2, 2), weight)}, str(out / "model.safetensors"))
        (out / "train_meta.json").write_text(json.dumps({"val_loss": score, "seconds_this_run": seconds}))

    job("train_cold_0", 1.0, 3.2, 4.9)
    job("train_warm_0", 1.0, 3.2, 5.6)               # another run time only: the same outputs
    assert startup.outputs_match(tmp_path, names=("train",)) == {"train": True}
    job("train_warm_1", 1.0, 3.3, 5.6)               # another score
    assert startup.outputs_match(tmp_path, names=("train",)) == {"train": False}
    (tmp_path / "train_warm_1" / "trained" / "train_meta.json").write_text(json.dumps({"val_loss": 3.2, "seconds_this_run": 1}))
    job("train_cold_1", 1.5, 3.2, 4.9)               # other weights
    assert startup.outputs_match(tmp_path, names=("train",)) == {"train": False}
