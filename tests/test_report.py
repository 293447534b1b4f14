"""The report stage on synthetic evaluation JSONs with known numbers: summary, tables, figures, gaps.

The synthetic study: parent P (1M tokens), two methods (minitron_depth coarse, sparsegpt fine) at ratios
0.5 and 0.6, main budget 300k, scaling budgets 100k/300k/1M at r = 0.5, setting 2 at r = 0.5.
By construction pruning wins setting 1 everywhere; the gap narrows with N but NOT with the ratio for
minitron_depth (0.2 at r = 0.5, 0.3 at r = 0.6: finding F3 does not hold); in setting 2 scratch wins for
minitron_depth and pruning wins for sparsegpt (the paper's finding F4 holds); in setting 3 (r = 0.5) S_F
beats minitron_depth (F5 does not hold). sparsegpt P-R_300k at r = 0.5 has two seeds (3.0 and 3.2, mean
3.1, std 0.141); sparsegpt P-R_300k at r = 0.6 is missing.
"""
from __future__ import annotations

import json
import logging

import matplotlib.image
import pandas as pd
import pytest
import yaml

from pvs.report import build as report
from pvs.config import validate_config
from pvs.report.tables import run_label

RAW_CONFIG = {"study": "synthetic",
              "parent": {"tokens": "1M"},
              "prune": {"methods": ["sparsegpt", "minitron_depth"], "ratios": [0.5, 0.6]},
              "budgets": {"main": "300k", "scaling": ["100k", "300k", "1M"], "scaling_ratio": 0.5,
                          "setting2_ratios": [0.5], "setting3_ratios": [0.5]}}
K, M = 1000, 1000_000
# (arm, method, ratio, budget, train_tokens, seed, val_loss, avg acc, achieved ratio)
RUNS = [
    ("parent", None, None, None, 1 * M, 0, 3.0, 0.50, None),
    ("pruned", "minitron_depth", 0.5, 0, 0, 0, 5.0, 0.30, 0.48),
    ("pruned", "minitron_depth", 0.6, 0, 0, 0, 5.5, 0.28, 0.58),
    ("retrain", "minitron_depth", 0.5, 100 * K, 100 * K, 0, 3.6, 0.42, 0.48),
    ("retrain", "minitron_depth", 0.5, 300 * K, 300 * K, 0, 3.4, 0.44, 0.48),
    ("retrain", "minitron_depth", 0.5, 1 * M, 1 * M, 0, 3.2, 0.45, 0.48),
    ("scratch", "minitron_depth", 0.5, 100 * K, 100 * K, 0, 4.0, 0.36, None),
    ("scratch", "minitron_depth", 0.5, 300 * K, 300 * K, 0, 3.6, 0.40, None),
    ("scratch", "minitron_depth", 0.5, 1 * M, 1 * M, 0, 3.3, 0.43, None),
    ("retrain", "minitron_depth", 0.6, 300 * K, 300 * K, 0, 3.5, 0.42, 0.58),
    ("scratch", "minitron_depth", 0.6, 300 * K, 300 * K, 0, 3.8, 0.39, None),
    ("scratch_total", "minitron_depth", 0.5, 300 * K, 1300 * K, 0, 3.3, 0.46, None),
    ("pruned", "sparsegpt", 0.5, 0, 0, 0, 3.3, 0.45, 0.5),
    ("pruned", "sparsegpt", 0.6, 0, 0, 0, 3.6, 0.41, 0.6),
    ("retrain", "sparsegpt", 0.5, 100 * K, 100 * K, 0, 3.15, 0.46, 0.5),
    ("retrain", "sparsegpt", 0.5, 300 * K, 300 * K, 0, 3.0, 0.47, 0.5),
    ("retrain", "sparsegpt", 0.5, 300 * K, 300 * K, 1, 3.2, 0.49, 0.5),
    ("retrain", "sparsegpt", 0.5, 1 * M, 1 * M, 0, 3.05, 0.48, 0.5),
    ("scratch", "sparsegpt", 0.5, 100 * K, 100 * K, 0, 3.9, 0.37, None),
    ("scratch", "sparsegpt", 0.5, 300 * K, 300 * K, 0, 3.5, 0.41, None),
    ("scratch", "sparsegpt", 0.5, 1 * M, 1 * M, 0, 3.25, 0.44, None),
    ("scratch", "sparsegpt", 0.6, 300 * K, 300 * K, 0, 3.8, 0.38, None),
    ("scratch_total", "sparsegpt", 0.5, 300 * K, 1300 * K, 0, 3.2, 0.45, None),
    ("scratch_flops", "minitron_depth", 0.5, 300 * K, 2000 * K, 0, 3.25, 0.47, None),
    ("scratch_flops", "sparsegpt", 0.5, 300 * K, 1400 * K, 0, 3.3, 0.44, None),
]
# parameters of the synthetic models: N = non-embedding + vocab x hidden (pvs.compute)
VOCAB, HIDDEN, CHILD_BLOCK, PARENT_BLOCK, CALIB = 512, 64, 600, 1200, 1000
N_CHILD, N_PARENT = CHILD_BLOCK + VOCAB * HIDDEN, PARENT_BLOCK + VOCAB * HIDDEN


def make_eval(arm, method, ratio, budget, train_tokens, seed, loss, acc, achieved, study="synthetic") -> dict:
    """An evaluation JSON in the evaluate stage's format."""
    shape = {"hidden_size": HIDDEN, "intermediate_size": 192, "num_hidden_layers": 5, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB}
    prune = None if achieved is None else {
        "method": method, "target_ratio": ratio, "achieved_ratio": achieved,
        "params": {"parent": {"non_embedding": PARENT_BLOCK}, "child": {"non_embedding": CHILD_BLOCK}},
        "shape": {"parent": shape, "child": shape}, "calibration": {"tokens": CALIB}, "mask_learning_tokens": 0}
    return {"study": study,
            "model": {"path": f"models/{arm}", "arm": arm, "method": method, "ratio": ratio, "budget": budget,
                      "train_tokens": train_tokens, "seed": seed},
            "params": {"total": 1000, "non_embedding": CHILD_BLOCK if arm != "parent" else PARENT_BLOCK,
                       "embedding_and_head": 400},
            "shape": shape,
            "metrics": {"val_loss": loss, "val_ppl": 2.718281828 ** loss, "ppl/austen": 30.0,
                        "lmeval/arc_easy": acc - 0.01, "lmeval/avg": acc},
            "lmeval_detail": {}, "model_meta": {"prune": prune, "train": None},
            "versions": {"torch": "2.13.0", "transformers": "5.24.0"}, "seconds": 1.5}


def write_evals(directory, runs=RUNS) -> list:
    paths = []
    for i, run in enumerate(runs):
        arm, method, ratio = run[:3]
        path = directory / (f"{arm}.json" if arm == "parent" else f"{arm}/{method}/r{ratio}/{i}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make_eval(*run)))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The report of the full synthetic study, built once: (out dir, paths of written files)."""
    root = tmp_path_factory.mktemp("report")
    paths = write_evals(root / "eval")
    records = report.load_records(paths)
    written = report.build_report(validate_config(RAW_CONFIG), records, root / "out")
    return root / "out", written


def _row(df: pd.DataFrame, **where) -> pd.Series:
    sel = pd.Series(True, index=df.index)
    for key, value in where.items():
        sel &= df[key] == value
    assert sel.sum() == 1, where
    return df[sel].iloc[0]


def test_run_labels_follow_the_paper():
    assert run_label("parent", None, 1 * M) == "P"
    assert run_label("pruned", 0, 0) == "P-R_0"
    assert run_label("retrain", 300 * K, 300 * K) == "P-R_300k"
    assert run_label("scratch", 300 * K, 300 * K) == "S_300k"
    assert run_label("scratch_total", 300 * K, 1300 * K) == "S_1.3M"


def test_summary_has_one_row_per_model_in_granularity_order(full_report):
    out, _ = full_report
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == len(RUNS)
    assert summary.label.iloc[0] == "P" and summary.arm.iloc[0] == "parent"
    methods = summary.method.dropna().tolist()
    assert methods == sorted(methods, key=["minitron_depth", "sparsegpt"].index)   # coarse before fine
    seed1 = _row(summary, arm="retrain", method="sparsegpt", budget=300 * K, seed=1)
    assert seed1.val_loss == 3.2 and seed1["lmeval/avg"] == 0.49 and seed1.label == "P-R_300k"
    total = _row(summary, arm="scratch_total", method="minitron_depth")
    assert total.label == "S_1.3M" and total.train_tokens == 1300 * K and total.budget == 300 * K
    assert _row(summary, arm="pruned", method="minitron_depth", ratio=0.5).achieved_ratio == 0.48
    assert {"params_total", "params_non_embedding", "val_ppl", "ppl/austen", "lmeval/arc_easy",
            "torch_version", "transformers_version"} <= set(summary.columns)
    assert ",300000," in (out / "summary.csv").read_text()        # integer budgets stay integers


def test_setting1_table_values_and_signs(full_report):
    out, _ = full_report
    s1 = pd.read_csv(out / "tables" / "setting1.csv")
    assert list(s1.method) == ["minitron_depth"] * 2 + ["sparsegpt"] * 2
    depth = _row(s1, method="minitron_depth", ratio=0.5)
    assert (depth.pruned_loss, depth.retrain_loss, depth.scratch_loss) == (5.0, 3.4, 3.6)
    assert depth.delta_loss == pytest.approx(0.2) and depth.delta_acc == pytest.approx(0.04)
    assert depth.achieved_ratio == 0.48 and depth.parent_loss == 3.0
    sparse = _row(s1, method="sparsegpt", ratio=0.5)
    assert sparse.retrain_loss == pytest.approx(3.1) and sparse.retrain_n == 2     # mean of two seeds
    assert sparse.retrain_acc == pytest.approx(0.48) and sparse.delta_loss == pytest.approx(0.4)
    missing = _row(s1, method="sparsegpt", ratio=0.6)
    assert pd.isna(missing.retrain_loss) and pd.isna(missing.delta_loss) and missing.scratch_loss == 3.8
    assert (s1.delta_loss.dropna() > 0).all()                       # pruning wins setting 1 by construction


def test_setting1_markdown_shows_dash_for_missing_run(full_report):
    out, _ = full_report
    md = (out / "tables" / "setting1.md").read_text()
    assert "P-R_300k loss" in md and "S_300k loss" in md and "Parent P (1M tokens): val loss 3.000" in md
    depth_row = next(line for line in md.splitlines() if line.startswith("| Minitron-Depth") and "| 0.5 " in line)
    assert "+0.200" in depth_row and "5.000" in depth_row and "+4.0" in depth_row
    gap_row = next(line for line in md.splitlines() if line.startswith("| SparseGPT") and "| 0.6 " in line)
    cells = [c.strip() for c in gap_row.strip("|").split("|")]
    assert cells[4] == "–" and cells[5] == "3.800" and cells[6] == "–"
    assert md.index("Minitron-Depth") < md.index("SparseGPT")


def test_scaling_table(full_report):
    out, _ = full_report
    scaling = pd.read_csv(out / "tables" / "setting1_scaling.csv")
    assert len(scaling) == 2 * 3 and set(scaling.budget) == {100 * K, 300 * K, 1 * M}
    assert _row(scaling, method="minitron_depth", budget=1 * M).delta_loss == pytest.approx(0.1)
    assert _row(scaling, method="sparsegpt", budget=100 * K).delta_loss == pytest.approx(0.75)
    md = (out / "tables" / "setting1.md").read_text()
    assert "## Token scaling at r = 0.5" in md and "| 100k" in md and "+0.750" in md


def test_setting2_winners(full_report):
    out, _ = full_report
    s2 = pd.read_csv(out / "tables" / "setting2.csv")
    depth, sparse = _row(s2, method="minitron_depth"), _row(s2, method="sparsegpt")
    assert depth.delta_loss == pytest.approx(-0.1) and depth.delta_acc == pytest.approx(-0.02)
    assert depth.winner_loss == "scratch_total" and depth.winner_acc == "scratch_total"
    assert sparse.delta_loss == pytest.approx(0.1) and sparse.winner_loss == "retrain"
    assert sparse.winner_acc == "retrain" and sparse.parent_loss == 3.0
    md = (out / "tables" / "setting2.md").read_text()
    depth_row = next(line for line in md.splitlines() if line.startswith("| Minitron-Depth"))
    sparse_row = next(line for line in md.splitlines() if line.startswith("| SparseGPT"))
    assert "S_1.3M" in depth_row and "-0.100" in depth_row
    assert "P-R_300k" in sparse_row and "+0.100" in sparse_row
    assert "Parent P (1M tokens)" in md


FIGURES = ("loss_vs_tokens", "setting2_fig", "gap_vs_ratio", "heatmap_setting1", "heatmap_setting2",
           "heatmap_setting3")


def test_figures_are_written_as_png_and_pdf_and_open(full_report):
    out, written = full_report
    for name in FIGURES:
        image = matplotlib.image.imread(written[name])
        height, width = image.shape[:2]
        assert 200 <= width <= 1100 and 150 <= height <= 1200, (name, image.shape)   # <= 7 in at 150 dpi
        assert image[..., :3].std() > 0.05, name                                   # not a blank canvas
        pdf = written[name].with_suffix(".pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and b"%%EOF" in pdf[-32:], name
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert leftovers == []                                          # no temp files left behind


def test_compute_columns_follow_the_stated_convention(full_report):
    out, _ = full_report
    summary = pd.read_csv(out / "summary.csv")
    retrain = _row(summary, arm="retrain", method="minitron_depth", ratio=0.5, budget=300 * K)
    assert retrain.flops_params == N_CHILD and retrain.train_flops == pytest.approx(6 * N_CHILD * 300 * K)
    assert retrain.pipeline_tokens == 1 * M + CALIB + 300 * K
    expected = 6 * N_PARENT * 1 * M + 2 * N_PARENT * CALIB + 6 * N_CHILD * 300 * K
    assert retrain.pipeline_flops == pytest.approx(expected)
    scratch = _row(summary, arm="scratch_total", method="sparsegpt")
    assert scratch.pipeline_flops == pytest.approx(6 * N_CHILD * 1300 * K) and scratch.pipeline_tokens == 1300 * K
    parent = _row(summary, arm="parent")
    assert parent.pipeline_flops == pytest.approx(6 * N_PARENT * 1 * M)


def test_main_table_in_the_papers_form(full_report):
    out, _ = full_report
    main = pd.read_csv(out / "tables" / "main.csv")
    assert len(main) == 4 and list(main.method) == ["minitron_depth"] * 2 + ["sparsegpt"] * 2
    depth = _row(main, method="minitron_depth", ratio=0.5)
    assert depth["S_N:val_loss"] == 3.6 and depth["P-R_N:val_loss"] == 3.4 and depth["S_P+N:val_loss"] == 3.3
    assert depth["S_F:val_loss"] == 3.25 and depth["S_F:train_tokens"] == 2000 * K
    assert depth["P-R_N:lmeval/arc_easy"] == pytest.approx(0.43) and depth["S_N:ppl/austen"] == 30.0
    assert depth["P-R_N:pipeline_flops"] > depth["S_N:pipeline_flops"]
    sparse = _row(main, method="sparsegpt", ratio=0.5)
    assert sparse["P-R_N:val_loss"] == pytest.approx(3.1) and sparse["P-R_N:n"] == 2
    assert sparse["P-R_N:val_loss:std"] == pytest.approx(0.1414, abs=1e-4)
    assert pd.isna(_row(main, method="sparsegpt", ratio=0.6)["S_P+N:val_loss"])       # no setting 2 at 0.6
    md = (out / "tables" / "main.md").read_text()
    assert "S_300k loss" in md and "P-R_300k avg acc" in md and "S_1.3M arc_easy" in md and "S_F300k loss" in md
    assert "3.100 ± 0.141" in md and "48.0 ± 1.4" in md
    tex = (out / "tables" / "main.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\multicolumn" in tex and r"$\pm$" in tex and "3.100" in tex
    assert tex.count("\\\\\n") == 2 + 4                                  # two header rows + 4 body rows


def test_setting3_table_and_markdown(full_report):
    out, _ = full_report
    s3 = pd.read_csv(out / "tables" / "setting3.csv")
    depth, sparse = _row(s3, method="minitron_depth"), _row(s3, method="sparsegpt")
    assert depth.delta_loss == pytest.approx(-0.15) and depth.winner_loss == "scratch_flops"
    assert sparse.delta_loss == pytest.approx(0.2) and sparse.winner_loss == "retrain"
    assert depth.scratch_flops_tokens == 2000 * K and depth.retrain_pipeline_flops > 0
    md = (out / "tables" / "setting3.md").read_text()
    assert "S_F300k" in md and "| 2M" in md and "6·N·D" in md


def test_findings_verdicts_on_known_numbers(full_report):
    out, _ = full_report
    text = (out / "findings.md").read_text()
    verdicts = dict(line.strip("|").split("|")[0].strip().split(":")[0:1] + [line.strip("|").split("|")[1].strip()]
                    for line in text.splitlines() if line.startswith("| F"))
    assert verdicts == {"F0": "not enough runs", "F1": "holds", "F2": "holds", "F3": "does not hold", "F4": "holds",
                        "F5": "does not hold"}
    one = "no noise estimate (n=1)"                 # one seed per arm: verdicts by sign, as before seeds
    assert f"Minitron-Depth: r=0.5 Δ +0.200, {one} → r=0.6 Δ +0.300, {one} (does not narrow)" in text
    assert f"N=100k Δ +0.750, {one} → N=300k Δ +0.400, {one} → N=1M Δ +0.200, {one} (narrows)" in text
    assert "3 of 4 method × ratio points" in text and "S_F matches or wins at: Minitron-Depth r=0.5" in text
    assert "| F1: At equal training tokens" in text and f"3 of 3 points with {one}, counted by sign" in text
    assert text.count("Scale caveat:") == 6 and "do not edit" in text and "within noise" in text


def test_findings_without_runs_say_not_enough(tmp_path):
    written = report.build_report(validate_config(RAW_CONFIG), report.load_records(
        write_evals(tmp_path / "eval", RUNS[:3])), tmp_path / "out")
    text = written["findings"].read_text()
    assert text.count("**Verdict: not enough runs.**") == 6


def test_seeds_show_error_bars_and_std(full_report):
    out, _ = full_report
    s1 = pd.read_csv(out / "tables" / "setting1.csv")
    sparse = _row(s1, method="sparsegpt", ratio=0.5)
    assert sparse.retrain_loss_std == pytest.approx(0.1414, abs=1e-4) and pd.isna(sparse.scratch_loss_std)
    assert "3.100 ± 0.141" in (out / "tables" / "setting1.md").read_text()


def test_missing_runs_do_not_crash(tmp_path, caplog):
    only = [RUNS[0], RUNS[1], RUNS[3]]          # parent, one pruned, one retrain: no pair anywhere
    paths = write_evals(tmp_path / "eval", only)
    with caplog.at_level(logging.INFO, logger="pvs"):
        written = report.build_report(validate_config(RAW_CONFIG), report.load_records(paths), tmp_path / "out")
    s1 = (tmp_path / "out" / "tables" / "setting1.md").read_text()
    s2 = (tmp_path / "out" / "tables" / "setting2.md").read_text()
    assert s1.count("–") > 10 and "| –" in s2
    assert "skipped minitron_depth P-R_N at r=0.5: 1 point(s)" in caplog.text
    assert "setting2: skipped sparsegpt" in caplog.text
    for name in FIGURES:
        assert matplotlib.image.imread(written[name]).shape[0] > 100


def test_cli_reads_a_directory_skips_foreign_json_and_other_studies(tmp_path, capsys):
    write_evals(tmp_path / "eval", RUNS[:12])
    (tmp_path / "eval" / "meta.json").write_text(json.dumps({"method": "x"}))          # not an evaluation
    (tmp_path / "eval" / "other.json").write_text(json.dumps(make_eval(*RUNS[1], study="elsewhere")))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(RAW_CONFIG))
    code = report.main(["--config", str(config), "--evals-dir", str(tmp_path / "eval"), "--out", str(tmp_path / "r")])
    assert code == 0
    summary = pd.read_csv(tmp_path / "r" / "summary.csv")
    assert len(summary) == 12 and set(summary.study) == {"synthetic"}
    assert str(tmp_path / "r" / "figures" / "setting2.png") in capsys.readouterr().out


def test_cli_rejects_a_named_file_that_is_not_an_evaluation(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"arm": "retrain"}, "metrics": {}}))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(RAW_CONFIG))
    assert report.main(["--config", str(config), "--evals", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.json: metrics.val_loss is missing" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_no_runs_no_lmeval_and_no_setting2_ratios(tmp_path):
    raw = json.loads(json.dumps(RAW_CONFIG))
    raw["budgets"]["setting2_ratios"] = []
    written = report.build_report(validate_config(raw), [], tmp_path / "empty")
    assert "No ratios are configured for this setting." in written["setting2_md"].read_text()
    assert "Parent P: no evaluation found." in written["setting1_md"].read_text()
    assert pd.read_csv(written["summary"]).empty and pd.read_csv(written["setting2_csv"]).empty
    assert all(written[name].stat().st_size > 1000 for name in FIGURES)

    records = []
    for i, run in enumerate(RUNS):                                   # evaluate.lmeval: false
        ev = make_eval(*run)
        ev["metrics"] = {k: v for k, v in ev["metrics"].items() if not k.startswith("lmeval/")}
        (tmp_path / f"{i}.json").write_text(json.dumps(ev))
        records.append(report.read_eval(tmp_path / f"{i}.json"))
    written = report.build_report(validate_config(RAW_CONFIG), records, tmp_path / "nolm")
    s2 = pd.read_csv(written["setting2_csv"])
    assert s2.retrain_acc.isna().all() and s2.winner_acc.isna().all() and list(s2.winner_loss) == ["scratch_total", "retrain"]
    assert "avg acc –." in written["setting2_md"].read_text()


def test_token_counts_may_be_written_as_strings(tmp_path):
    ev = make_eval("scratch_total", "sparsegpt", 0.5, "300k", "1.3M", 0, 3.2, 0.45, None)
    (tmp_path / "e.json").write_text(json.dumps(ev))
    record = report.read_eval(tmp_path / "e.json")
    assert (record["budget"], record["train_tokens"], record["label"]) == (300 * K, 1300 * K, "S_1.3M")
    ev["model"]["budget"] = "lots"
    (tmp_path / "e.json").write_text(json.dumps(ev))
    with pytest.raises(report.EvalFormatError, match="model.budget = 'lots'"):
        report.read_eval(tmp_path / "e.json")


def test_a_model_evaluated_twice_counts_once(tmp_path, caplog):
    paths = write_evals(tmp_path / "a", RUNS[:2]) + write_evals(tmp_path / "b", RUNS[:2])
    with caplog.at_level(logging.WARNING, logger="pvs"):
        summary = report.summary_frame(report.load_records(paths + paths[:1]))   # a path given twice is read once
    assert len(summary) == 2 and all(str(tmp_path / "b") in f for f in summary.eval_file)
    assert caplog.text.count("duplicate evaluation") == 2


# ---------------------------------------------------------------- seeds, noise and F0
# A study with 3 seeds per arm and known per-seed differences Δ_k (scratch − pruned loss, seed by seed):
#   setting 1 at 300k:  Minitron-Depth r=0.5  0.18 0.20 0.22  -> Δ +0.200 ± 0.012 (n=3), a clear win
#                       Minitron-Depth r=0.6 -0.05 0.02 0.09  -> Δ +0.020 ± 0.040 (n=3), within noise
#                       SparseGPT      r=0.5  0.30 0.40 0.50  -> Δ +0.400 ± 0.058 (n=3), a clear win
#                       SparseGPT      r=0.6 -0.12 -0.10 -0.08 -> Δ -0.100 ± 0.012 (n=3), a clear loss
#   scaling at 1M:      Minitron-Depth 0.04 0.05 0.06 (narrows beyond noise), SparseGPT 0.20 0.35 0.50 (within noise)
#   setting 2 at r=0.5: Minitron-Depth S_{P+N} with seeds 0 and 1 only (unpaired: Welch SE),
#                       SparseGPT 0.00 0.05 0.10 -> Δ +0.050 ± 0.029 (n=3): within noise of the tolerance 0.01
NOISY_CONFIG = {"study": "noisy", "seeds": 3, "parent": {"tokens": "1M"},
                "prune": {"methods": ["sparsegpt", "minitron_depth"], "ratios": [0.5, 0.6]},
                "budgets": {"main": "300k", "scaling": ["300k", "1M"], "scaling_ratio": 0.5,
                            "setting2_ratios": [0.5], "setting3_ratios": []}}
SEED_EFFECT = (-0.03, 0.0, 0.03)        # shared by both arms of a seed: pairing removes it
DIFFS = {("minitron_depth", 0.5, 300 * K): (0.18, 0.20, 0.22), ("minitron_depth", 0.6, 300 * K): (-0.05, 0.02, 0.09),
         ("sparsegpt", 0.5, 300 * K): (0.30, 0.40, 0.50), ("sparsegpt", 0.6, 300 * K): (-0.12, -0.10, -0.08),
         ("minitron_depth", 0.5, 1 * M): (0.04, 0.05, 0.06), ("sparsegpt", 0.5, 1 * M): (0.20, 0.35, 0.50)}
SETTING2 = {"minitron_depth": (3.28, 3.32), "sparsegpt": (0.00, 0.05, 0.10)}   # S_{P+N} losses / Δ_k


def noisy_evals(curves: dict | None = None, drop=()) -> list[dict]:
    """Evaluation JSONs of the noisy study; ``curves`` = {(arm, method): [[tokens, val_loss], ...]}."""
    evs = [make_eval("parent", None, None, None, 1 * M, 0, 3.0, 0.50, None, study="noisy")]
    for (method, ratio, budget), diffs in DIFFS.items():
        if (method, ratio) in drop:
            continue
        for seed, (effect, d) in enumerate(zip(SEED_EFFECT, diffs)):
            pruned = 3.4 + effect
            evs.append(make_eval("retrain", method, ratio, budget, budget, seed, pruned, 0.44 - effect, 0.5, "noisy"))
            evs.append(make_eval("scratch", method, ratio, budget, budget, seed, pruned + d, 0.44 - effect - d / 10,
                                 None, "noisy"))
    for seed, loss in enumerate(SETTING2["minitron_depth"]):
        evs.append(make_eval("scratch_total", "minitron_depth", 0.5, 300 * K, 1300 * K, seed, loss, 0.45, None,
                             "noisy"))
    for seed, (effect, d) in enumerate(zip(SEED_EFFECT, SETTING2["sparsegpt"])):
        evs.append(make_eval("scratch_total", "sparsegpt", 0.5, 300 * K, 1300 * K, seed, 3.4 + effect + d, 0.45,
                             None, "noisy"))
    for ev in evs:
        key = (ev["model"]["arm"], ev["model"]["method"])
        ev["curve"] = (curves or {}).get(key, (curves or {}).get(ev["model"]["arm"]))
    return evs


def noisy_report(tmp_path, **kwargs) -> dict:
    records = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for i, ev in enumerate(noisy_evals(**kwargs)):
        (tmp_path / f"{i}.json").write_text(json.dumps(ev))
        records.append(report.read_eval(tmp_path / f"{i}.json"))
    return report.build_report(validate_config(NOISY_CONFIG), records, tmp_path / "out")


def _verdicts(text: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| F")]
    return {cells[0].split(":")[0].strip(): cells[1].strip() for cells in rows}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    return noisy_report(tmp_path_factory.mktemp("noisy"))


def test_gap_is_paired_by_seed_with_its_standard_error():
    from pvs.report.uncertainty import gap
    a = pd.Series([3.55, 3.60, 3.65], index=[0, 1, 2])
    b = pd.Series([3.37, 3.40, 3.43], index=[0, 1, 2])                    # differences 0.18, 0.20, 0.22
    g = gap(a, b)
    assert g.paired and g.n == 3 and g.mean == pytest.approx(0.2) and g.se == pytest.approx(0.02 / 3 ** 0.5)
    assert g.text() == "Δ +0.200 ± 0.012 (n=3)" and g.call() == "win"
    welch = gap(a, b.iloc[:2])                                           # seeds do not pair: Welch
    assert not welch.paired and welch.n == 2 and welch.se == pytest.approx((0.05 ** 2 / 3 + 0.0212132 ** 2 / 2) ** 0.5)
    one = gap(a.iloc[:1], b.iloc[:1])
    assert one.n == 1 and one.text() == "Δ +0.180, no noise estimate (n=1)" and one.call() == "win"
    assert gap(a.iloc[:1], a.iloc[:1]).call() == "tie"


def test_setting1_deltas_carry_mean_se_and_n(noisy):
    s1 = pd.read_csv(noisy["setting1_csv"])
    expected = {("minitron_depth", 0.5): (0.2, 0.02, "retrain"), ("minitron_depth", 0.6): (0.02, 0.07, "within noise"),
                ("sparsegpt", 0.5): (0.4, 0.1, "retrain"), ("sparsegpt", 0.6): (-0.1, 0.02, "scratch")}
    for (method, ratio), (mean, std, winner) in expected.items():
        row = _row(s1, method=method, ratio=ratio)
        assert row.delta_loss == pytest.approx(mean) and row.delta_loss_se == pytest.approx(std / 3 ** 0.5)
        assert row.delta_loss_n == 3 and row.delta_paired and row.winner_loss == winner, (method, ratio)
        assert row.retrain_loss_std == pytest.approx(0.03)              # the arm's own spread (seed effect)
    md = noisy["setting1_md"].read_text()
    for cell in ("Δ +0.200 ± 0.012 (n=3)", "Δ +0.020 ± 0.040 (n=3)", "Δ +0.400 ± 0.058 (n=3)",
                 "Δ -0.100 ± 0.012 (n=3)", "Δ +0.050 ± 0.006 (n=3)"):
        assert cell in md, cell
    assert "| within noise" in md


def test_noisy_findings_verdicts(noisy):
    text = noisy["findings"].read_text()
    assert _verdicts(text) == {"F0": "not enough runs", "F1": "does not hold", "F2": "within noise", "F3": "holds",
                               "F4": "within noise", "F5": "not enough runs"}
    assert "Verdict rule: a gap counts as a win or a loss only when |mean Δ| > 2 SE with n ≥ 2 seeds" in text
    assert ("Minitron-Depth: r=0.5 Δ +0.200 ± 0.012 (n=3) (acc +2.0 ± 0.1 pp), "
            "r=0.6 Δ +0.020 ± 0.040 (n=3) (acc +0.2 ± 0.4 pp)") in text
    assert "scratch matches or wins at: SparseGPT r=0.6" in text
    assert "within noise (|Δ| ≤ 2 SE) at: Minitron-Depth r=0.6" in text
    assert "**Verdict: does not hold (1 of 4 points within noise).**" in text
    assert "N=300k Δ +0.200 ± 0.012 (n=3) → N=1M Δ +0.050 ± 0.006 (n=3) (narrows; first − last: Δ +0.150" in text
    assert "(within noise; first − last: Δ +0.050 ± 0.104 (n=3, unpaired))" in text       # SparseGPT in F2
    assert "Minitron-Depth r=0.5: P-R_N 3.400 vs S_{P+N} 3.300, Δ -0.100 ± 0.026 (n=2, unpaired)" in text
    assert "Minitron-Depth r=0.5 (coarse: matched or beaten): holds" in text
    assert "SparseGPT r=0.5 (fine: keeps an advantage): within noise" in text
    s2 = pd.read_csv(noisy["setting2_csv"])
    assert _row(s2, method="minitron_depth").winner_loss == "scratch_total"
    assert not _row(s2, method="minitron_depth").delta_paired and _row(s2, method="minitron_depth").delta_loss_n == 2
    assert _row(s2, method="sparsegpt").winner_loss == "within noise"


def test_without_the_loss_f1_is_within_noise_and_without_noise_it_holds(tmp_path):
    text = noisy_report(tmp_path / "a", drop=[("sparsegpt", 0.6)])["findings"].read_text()
    assert _verdicts(text)["F1"] == "within noise" and "**Verdict: within noise (1 of 3 points within noise).**" in text
    text = noisy_report(tmp_path / "b", drop=[("sparsegpt", 0.6), ("minitron_depth", 0.6)])["findings"].read_text()
    assert _verdicts(text)["F1"] == "holds" and "| F1: At equal training tokens, pruned initialization beats " \
        "random initialization for every method and ratio | holds | – |" in text


def test_figures_draw_with_seeds(noisy, tmp_path, monkeypatch):
    for name in FIGURES:
        image = matplotlib.image.imread(noisy[name])
        assert image[..., :3].std() > 0.05, name
    from matplotlib.axes import Axes
    from pvs.report import figures
    drawn, errorbar = [], Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, yerr=None, **kw: drawn.append(list(yerr)) or
                        errorbar(self, x, y, yerr=yerr, **kw))
    figures.plot_gap_vs_ratio(pd.read_csv(noisy["setting1_csv"]), tmp_path / "gap.png")
    assert drawn[0] == pytest.approx([0.02 / 3 ** 0.5, 0.07 / 3 ** 0.5])    # Minitron-Depth Δ loss: SE of Δ


PARENT_CURVE = [[0, 8.0], [500 * K, 4.0], [1 * M, 3.0]]


def test_f0_holds_when_the_parent_is_below_every_scratch_curve_at_p(tmp_path):
    curves = {"parent": PARENT_CURVE, "scratch_total": [[0, 8.0], [800 * K, 3.6], [1200 * K, 3.2], [1300 * K, 3.15]],
              "scratch": [[0, 8.0], [300 * K, 3.5]]}                           # S_300k ends before P: not used
    text = noisy_report(tmp_path, curves=curves)["findings"].read_text()
    assert _verdicts(text)["F0"] == "holds" and "undertrained" not in text
    assert "parent P at P = 1M tokens: val loss 3.000 (its learning curve at P)" in text
    assert "5 from-scratch run(s) reach P on their learning curve; the lowest at P is S_1.3M Minitron-Depth r=0.5 " \
           "seed 0 with 3.400." in text                                        # 3.6 + (3.2 − 3.6) · 200k / 400k
    assert "18 from-scratch run(s) have a curve that ends before P (not used)." in text
    assert text.index("## F0.") < text.index("## F1.")


def test_f0_fails_when_a_scratch_curve_at_p_is_below_the_parent(tmp_path):
    curves = {"parent": PARENT_CURVE, "scratch_total": [[0, 8.0], [800 * K, 3.6], [1200 * K, 3.2]],
              ("scratch_total", "sparsegpt"): [[0, 8.0], [800 * K, 3.0], [1200 * K, 2.6]]}
    text = noisy_report(tmp_path, curves=curves)["findings"].read_text()
    assert _verdicts(text)["F0"] == "does not hold"
    assert "below the parent at P: S_1.3M SparseGPT r=0.5 seed 0 2.800" in text
    assert "**F0 fails. The parent is undertrained:" in text and "do not test the paper's regime" in text
    assert text.index("**F0 fails.") < text.index("| finding | verdict |")


def test_f0_without_scratch_curves_is_not_enough_runs(tmp_path):
    text = noisy_report(tmp_path, curves={"parent": PARENT_CURVE})["findings"].read_text()
    assert _verdicts(text)["F0"] == "not enough runs" and "no from-scratch learning curve reaches P tokens" in text


def test_interpolation_and_the_learning_curve_of_a_model_dir(tmp_path):
    from pvs.evaluate.score import learning_curve
    from pvs.report.parent_check import interpolate
    assert interpolate([(0, 8.0), (100, 4.0), (200, 3.0)], 150) == pytest.approx(3.5)
    assert interpolate([(0, 8.0), (100, 4.0)], 100) == 4.0 and interpolate([(0, 8.0), (100, 4.0)], 101) is None
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in (
        {"step": 0, "tokens": 0, "val_loss": 8.0}, {"step": 1, "tokens": 512, "loss": 7.0},
        {"step": 2, "tokens": 1024, "loss": 6.0, "val_loss": 6.5})) + "\n")
    assert learning_curve(tmp_path) == [[0, 8.0], [1024, 6.5]]
    assert learning_curve(tmp_path / "absent") is None


def test_f0_noise_pools_the_runs_of_one_configuration_and_applies_the_2se_rule():
    from pvs.report.parent_check import Check, Curve, configurations
    def curve(arm, at_p, seed, method="minitron_depth", tokens=2 * M):
        return Curve(arm, method, 0.5, 400 * K if arm == "scratch_total" else tokens, tokens, seed,
                     ((0.0, 8.0), (float(tokens), 2 * at_p - 8.0)))   # linear: at_p exactly at P = tokens / 2
    def parent(loss):
        return Curve("parent", None, None, None, 1 * M, 0, ((0.0, 8.0), (1e6, loss)))
    # the default study's F0 at 12.1 tok/param: S_N at 1.25P and three S_{P+N} seeds, one shape and token count
    runs = [curve("scratch", 3.140, 0), curve("scratch_total", 3.202, 0), curve("scratch_total", 3.209, 1),
            curve("scratch_total", 3.177, 2), curve("scratch_total", 3.30, 0, method="sparsegpt")]
    check = Check.of([parent(3.154), *runs], 1 * M, None)
    groups = configurations(check.scratch)
    assert [len(g.runs) for g in groups] == [4, 1] and groups[0].mean == pytest.approx(3.182)
    gap = groups[0].above(3.154)
    assert gap.mean == pytest.approx(0.028) and gap.se == pytest.approx(0.0156, abs=1e-4) and gap.n == 4
    assert pd.isna(groups[1].above(3.154).se)
    assert check.passes is False                               # the verdict keeps the strict every-run rule
    assert "mean 3.182; it − parent Δ +0.028 ± 0.016 (n=4, unpaired): within noise;" in check.noise()
    assert "Minitron-Depth r=0.5 on 2M tokens (S_N × 1, S_P+N × 3), mean" in check.noise()
    assert "parent below it beyond noise" in Check.of([parent(3.0), *runs[1:4]], 1 * M, None).noise()
    low = Check.of([parent(3.3), *runs[1:4]], 1 * M, None)
    assert "a from-scratch configuration below the parent beyond noise" in low.noise()
    alone = Check.of([parent(3.0), runs[4]], 1 * M, None).noise()
    assert "no noise estimate (n=1): by its sign only: parent below it;" in alone and "beyond" not in alone
