"""The regime table (pvs.regime, python -m pvs.study --regime): every number recomputed here by hand from the
config's own values (no training), the paper's values of DESIGN §1, epochs from a manifest, and the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pvs import regime
from pvs.config import validate_config
from pvs.prune import shapes

ROOT = Path(__file__).resolve().parents[1]
TOP_KEYS = ("parent_tokens_per_param", "embedding_share", "n_over_p", "scaling_n_over_p", "max_epochs",
            "parent_steps", "main_retrain_steps", "min_scaling_steps")
ROW_KEYS = ("arm", "method", "ratio", "non_embedding_params", "total_params", "tokens", "steps",
            "tokens_per_param", "epochs", "lr")


def _config(name: str, results_dir: Path, **overrides) -> dict:
    raw = yaml.safe_load((ROOT / name).read_text())
    raw["results_dir"] = str(results_dir)
    raw.update(overrides)
    return validate_config(raw)


def _layer(h, inter, heads, kv, hd):
    """One decoder layer by the arch formula: 2·h·q + 2·h·kv + 3·h·I + 2·h."""
    return 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * inter + 2 * h


# the numbers of config.yaml and configs/smoke.yaml, written out by hand: arch (hidden, MLP, layers, heads,
# kv heads), vocab, P, main N, smallest and largest scaling budget, batch x seq, ratios, methods, setting-2 methods
HAND = {
    "config.yaml": dict(arch=(32, 128, 10, 4, 2), vocab=512, P=1_550_000, N=387_500, smallest=77_500,
                        largest=1_937_500, per_step=12 * 128, ratios=(0.5, 0.6, 0.7, 0.8), methods=6, setting2=4),
    "configs/smoke.yaml": dict(arch=(64, 192, 10, 4, 2), vocab=1024, P=100_000, N=20_000, smallest=10_000,
                               largest=20_000, per_step=8 * 128, ratios=(0.5, 0.7), methods=3, setting2=3),
}
# issue 12's goal table for the default study, row by row (computed from config.yaml alone)
GOAL_ROWS = {"parent_tokens_per_param": lambda v: v >= 5, "embedding_share": lambda v: v <= 0.25,
             "n_over_p": lambda v: v == pytest.approx(0.25),
             "scaling_n_over_p": lambda v: v[0] <= 0.05 + 1e-9 and v[1] >= 1.25 - 1e-9,
             "scratch_total_tokens_per_param": lambda v: v[0] >= 10, "parent_steps": lambda v: v >= 1000,
             "main_retrain_steps": lambda v: v >= 250, "min_scaling_steps": lambda v: v >= 50}


@pytest.mark.parametrize("name", list(HAND))
def test_every_top_level_quantity_equals_the_hand_computation(name, tmp_path):
    hand = HAND[name]
    h, inter, layers, heads, kv = hand["arch"]
    non_embedding = layers * _layer(h, inter, heads, kv, h // heads)
    total = non_embedding + 2 * hand["vocab"] * h + h            # untied embedding + LM head + final norm
    P, N, per_step = hand["P"], hand["N"], hand["per_step"]
    cfg = _config(name, tmp_path / "results")
    reg = regime.regime(cfg)

    assert set(TOP_KEYS) <= reg.keys() and {"arms", "paper"} <= reg.keys()
    assert reg["parent_tokens_per_param"] == pytest.approx(P / non_embedding)
    assert reg["embedding_share"] == pytest.approx((total - non_embedding) / total)
    assert reg["n_over_p"] == pytest.approx(N / P)
    assert reg["scaling_n_over_p"] == pytest.approx([hand["smallest"] / P, hand["largest"] / P])
    assert reg["max_epochs"] is None and reg["data"] == regime.DATA_NOT_PREPARED
    assert reg["parent_steps"] == math.ceil(P / per_step)
    assert reg["main_retrain_steps"] == math.ceil(N / per_step)
    assert reg["min_scaling_steps"] == math.ceil(hand["smallest"] / per_step)

    parent = reg["arms"][0]
    assert parent["arm"] == "parent" and parent["non_embedding_params"] == non_embedding
    assert parent["total_params"] == total and parent["tokens"] == P
    # the smoke config sweeps the parent's LR (pvs.sweep): pending until results_dir/lr/chosen.json exists
    assert parent["lr"] == (0.003 if not cfg["train"]["lr_sweep"] else "swept (pending)")
    for row in reg["arms"]:
        assert set(ROW_KEYS) <= row.keys()
        assert row["steps"] == math.ceil(row["tokens"] / per_step)
        assert row["tokens_per_param"] == pytest.approx(row["tokens"] / row["non_embedding_params"])
        hidden = row["shape"]["hidden_size"]          # Minitron-Width and Sheared-LLaMA cut it; the rest keep it
        assert row["total_params"] - row["non_embedding_params"] == (2 * hand["vocab"] + 1) * hidden
        assert hidden == h or row["method"] in ("minitron_width", "sheared_llama")
    # per method x ratio at the main budget: P-R_N and S_N, and S_{P+N} at 0.5 on P + N tokens
    main = [r for r in reg["arms"] if r["arm"] in ("retrain", "scratch") and r["tokens"] == N]
    assert len(main) == 2 * hand["methods"] * len(hand["ratios"])
    totals = [r for r in reg["arms"] if r["arm"] == "scratch_total"]
    assert len(totals) == hand["setting2"] and all(r["tokens"] == P + N and r["ratio"] == 0.5 for r in totals)
    assert reg["scratch_total_tokens_per_param"] == pytest.approx(
        [min(r["tokens_per_param"] for r in totals), max(r["tokens_per_param"] for r in totals)])


def _rows(reg, method, ratio, arm):
    return [r for r in reg["arms"] if r["method"] == method and r["ratio"] == ratio and r["arm"] == arm]


def test_children_are_counted_as_pvs_compute_counts_them(tmp_path):
    """Depth and sparse children by hand; the other structured children are the shape solver's."""
    reg = regime.regime(_config("config.yaml", tmp_path / "r"))
    h, inter, layers, heads, kv = HAND["config.yaml"]["arch"]
    hd = h // heads
    layer = _layer(h, inter, heads, kv, hd)
    sizes = [h * heads * hd, h * kv * hd, h * kv * hd, heads * hd * h, h * inter, h * inter, inter * h]
    for ratio in (0.5, 0.6, 0.7, 0.8):
        depth = _rows(reg, "minitron_depth", ratio, "retrain")[0]
        assert depth["non_embedding_params"] == (layers - round(ratio * layers)) * layer
        kept = layers * (layer - sum(round(ratio * n) for n in sizes))
        for method in ("sparsegpt", "sparsegpt_nm"):
            for arm in ("retrain", "scratch"):            # the sparse scratch twin has the same mask
                assert _rows(reg, method, ratio, arm)[0]["non_embedding_params"] == kept
    arch = {**_config("config.yaml", tmp_path / "r")["parent"]["arch"], "vocab_size": HAND["config.yaml"]["vocab"]}
    for method in ("minitron_width", "sheared_llama", "flap"):
        solution = shapes.solve(method, 0.5, arch)
        assert _rows(reg, method, 0.5, "retrain")[0]["non_embedding_params"] == solution.child_params
    # FLAP's retrained child carries its compensation biases; its scratch twin is a plain Llama
    flap = shapes.solve("flap", 0.5, arch).shape
    assert _rows(reg, "flap", 0.5, "scratch")[0]["non_embedding_params"] == shapes.non_embedding_params(flap)
    assert (_rows(reg, "flap", 0.5, "retrain")[0]["non_embedding_params"]
            == shapes.non_embedding_params(flap, True, True))


def test_s_f_is_estimated_until_its_budget_file_exists(tmp_path):
    results = tmp_path / "results"
    cfg = _config("configs/smoke.yaml", results)
    rows = [r for r in regime.regime(cfg)["arms"] if r["arm"] == "scratch_flops"]
    assert {r["method"] for r in rows} == {"minitron_depth", "flap", "sparsegpt"}
    assert all(r["tokens_estimated"] and r["tokens"] > 100_000 + 20_000 for r in rows)  # P + N through a parent
    budget = results / "compute" / "setting3" / "flap" / "r0.5" / "N20k.json"
    budget.parent.mkdir(parents=True)
    budget.write_text(json.dumps({"tokens": 123_456}))
    flap = [r for r in regime.regime(cfg)["arms"] if r["arm"] == "scratch_flops" and r["method"] == "flap"][0]
    assert flap["tokens"] == 123_456 and not flap["tokens_estimated"] and flap["steps"] == math.ceil(123_456 / 1024)


def test_epochs_come_from_the_manifest_of_this_config_data(tmp_path):
    results = tmp_path / "results"
    cfg = _config("config.yaml", results)
    splits = {"pretrain": 2_000_000, "retrain": 3_000_000, "calib": 50_000, "val": 80_000, "dev": 60_000}
    held = {"parent": 2_000_000, "retrain": 3_000_000}                         # scratch arms: pretrain + retrain
    manifest = {"seed": cfg["seed"], "split_fractions": cfg["data"]["splits"], "doc_chars": cfg["data"]["doc_chars"],
                "source": cfg["data"]["source"], "splits": {k: {"tokens": v} for k, v in splits.items()}}
    (results / "data").mkdir(parents=True)
    (results / "data" / "manifest.json").write_text(json.dumps(manifest))
    reg = regime.regime(cfg)
    hand = HAND["config.yaml"]
    per_step, P, N = hand["per_step"], hand["P"], hand["N"]

    def epochs(tokens, arm):
        return math.ceil(tokens / per_step) * per_step / held.get(arm, 5_000_000)

    assert reg["arms"][0]["epochs"] == pytest.approx(epochs(P, "parent"))                  # parent: pretrain
    retrain = _rows(reg, "sparsegpt", 0.5, "retrain")
    assert retrain[-1]["epochs"] == pytest.approx(epochs(N, "retrain"))                    # P-R_N: retrain
    total = _rows(reg, "sparsegpt", 0.5, "scratch_total")[0]
    assert total["epochs"] == pytest.approx(epochs(P + N, "scratch_total"))
    assert reg["max_epochs"] == pytest.approx(max(epochs(r["tokens"], r["arm"]) for r in reg["arms"]))
    assert reg["meets_goal"]["max_epochs"] is (reg["max_epochs"] < 1)
    manifest["doc_chars"] += 1                                                             # other data: not used
    (results / "data" / "manifest.json").write_text(json.dumps(manifest))
    stale = regime.regime(cfg)
    assert stale["max_epochs"] is None and "other data settings" in stale["data"]


def test_the_paper_column_is_design_section_1():
    paper = regime.paper()
    assert round(paper["parent_tokens_per_param"]) == 29 and round(paper["embedding_share"], 2) == 0.13
    assert paper["n_over_p"] == 0.25 and paper["scaling_n_over_p"] == pytest.approx([0.05, 2.5])
    assert paper["scratch_total_tokens_per_param"] == [55, 70] and paper["max_epochs"] == "< 1"
    assert (paper["parent_steps"], paper["main_retrain_steps"], paper["min_scaling_steps"]) == (50_000, 12_500, 2_500)
    by_label = {r["label"]: r for r in paper["arms"]}
    assert by_label["P200-R50"]["steps"] == 12_500 and by_label["P200-R10"]["steps"] == 2_500
    assert by_label["S250 (S_{P+N})"]["tokens_per_param"] == pytest.approx(250 / 3.5)


def test_the_default_study_meets_the_goal_row_by_row(tmp_path):
    """Issue 12's goal, from config.yaml alone: every row of the table holds (epochs need the data)."""
    reg = regime.regime(_config("config.yaml", tmp_path / "r"))
    for key, holds in GOAL_ROWS.items():
        assert holds(reg[key]), f"{key} = {reg[key]} misses the goal {reg['goal'][key]}"
        assert reg["meets_goal"][key] is True, key
    assert reg["meets_goal"]["max_epochs"] is None                                        # no data prepared
    smoke = regime.regime(_config("configs/smoke.yaml", tmp_path / "s"))
    assert smoke["meets_goal"]["parent_tokens_per_param"] is False                          # a toy: outside it


def test_an_imported_parent_is_read_from_its_config_json(tmp_path):
    results = tmp_path / "results"
    cfg = _config("configs/smollm2.yaml", results)
    with pytest.raises(regime.RegimeError, match="no config.json is local yet"):
        regime.regime(cfg)
    parent = results / "models" / "parent"
    parent.mkdir(parents=True)
    arch = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=10, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=1000, tie_word_embeddings=True, model_type="llama")
    (parent / "config.json").write_text(json.dumps(arch))
    row = regime.regime(cfg)["arms"][0]
    assert row["non_embedding_params"] == 10 * _layer(64, 192, 4, 2, 16)
    assert row["total_params"] == row["non_embedding_params"] + 1000 * 64 + 64          # tied: one matrix
    assert row["tokens"] == 2 * 10**12


def test_findings_get_the_table_after_their_title(tmp_path):
    text = regime.with_regime("# Findings of the paper\n\nGenerated ...\n## F0. x\n", _config("configs/smoke.yaml",
                                                                                              tmp_path / "r"))
    assert text.startswith("# Findings of the paper\n\n## Regime of study `smoke` beside the paper")
    assert text.index("| parent tokens per non-embedding parameter | 0.203 | 28.7 |") < text.index("## F0. x")


def test_cli_prints_both_columns_and_json_parses():
    env_py = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 120}
    table = subprocess.run([sys.executable, "-m", "pvs.study", "--regime", "config.yaml"], **env_py)
    assert table.returncode == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if line.startswith("quantity"))
    assert "this config" in header and "paper" in header
    row = next(line for line in table.stdout.splitlines() if line.startswith("optimizer steps: parent"))
    steps = math.ceil(HAND["config.yaml"]["P"] / HAND["config.yaml"]["per_step"])
    assert row.split()[3:5] == [f"{steps:,}", "50,000"]
    out = subprocess.run([sys.executable, "-m", "pvs.study", "--regime", "config.yaml", "--json"], **env_py)
    reg = json.loads(out.stdout)
    assert set(TOP_KEYS) <= reg.keys() and reg["parent_steps"] == steps and reg["paper"]["parent_steps"] == 50_000
    assert all(set(ROW_KEYS) <= row.keys() for row in reg["arms"])
    bad = subprocess.run([sys.executable, "-m", "pvs.study", "--json", "config.yaml"], **env_py)
    assert bad.returncode == 2 and "--json goes with --regime" in bad.stderr
