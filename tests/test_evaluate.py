"""The evaluate stage: generated lm-eval tasks (pvs.evaluate.tasks) and scoring one model (pvs.evaluate).

Uses the session fixtures of conftest.py: ``byte_splits`` (a data dir from real text) and
``tiny_trained_model`` (a 10-layer Llama trained briefly on it). lm-eval runs offline on a few examples.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_BLIMP, TINY_ARCH
from safetensors.torch import save_file

from pvs.evaluate import score as evaluate, sets as evalsets, tasks as evaltasks
from pvs.modeling import load_model, load_tokenizer, llama_config, new_model
from pvs.data.tokens import read_manifest

EXAMPLES = 30
LIMIT = 12           # lm-eval examples per task in the end-to-end runs
RESULT_KEYS = {"study", "model", "params", "shape", "metrics", "curve", "lmeval_detail", "val_detail", "settings",
               "model_meta", "versions", "seconds"}


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """pvs.evaluate.main sets torch's thread count (--threads); later tests in the session keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task_dir(byte_splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    evaltasks.generate(byte_splits, out, EXAMPLES, seed=0, blimp_dir=None, blimp_subtasks=[], blimp_limit=None)
    return out


@pytest.fixture(scope="module")
def task_manager(task_dir):
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=str(task_dir), include_defaults=False)


def heldout_texts(data_dir) -> list[str]:
    return [json.loads(line)["text"] for line in open(data_dir / "heldout_docs.jsonl")]


def continues(texts: list[str], context: str, continuation: str) -> bool:
    """Does some held-out text contain ``context``, whitespace, then ``continuation``?"""
    pattern = re.compile(re.escape(context) + r"\s+" + re.escape(continuation))
    return any(pattern.search(t) for t in texts)


# ------------------------------------------------------------------------------------------ evaltasks
def test_tasks_json_and_absolute_data_files(task_dir):
    assert json.loads((task_dir / "tasks.json").read_text()) == {"heldout_mc": "acc_norm", "heldout_cloze": "acc"}
    for name in ("heldout_mc", "heldout_cloze"):
        text = (task_dir / f"{name}.yaml").read_text()
        path = re.search(r"test: (.+)", text).group(1).strip()
        assert path.startswith("/") and path.endswith(f"{name}.jsonl")


def test_multiple_choice_task_loads_with_true_answer_among_choices(task_manager, byte_splits):
    task = task_manager.load(["heldout_mc"])["tasks"]["heldout_mc"]
    docs = list(task.eval_docs)
    assert len(docs) == EXAMPLES
    texts = heldout_texts(byte_splits)
    for doc in docs:
        choices = task.doc_to_choice(doc)
        assert len(choices) == 4 and len(set(choices)) == 4
        true = choices[task.doc_to_target(doc)]
        assert continues(texts, task.doc_to_text(doc), true)
        assert not any(continues(texts, doc["context"], c) for c in choices if c != true)
    assert len({d["label"] for d in docs}) > 1, "the true answer should not always sit at one position"


def test_cloze_task_loads_and_targets_end_the_passage(task_manager, byte_splits):
    task = task_manager.load(["heldout_cloze"])["tasks"]["heldout_cloze"]
    docs = list(task.eval_docs)
    assert len(docs) == EXAMPLES
    texts = heldout_texts(byte_splits)
    for doc in docs:
        target = task.doc_to_target(doc)
        assert target == " " + doc["target"] and doc["target"].isalpha()
        assert any(task.doc_to_text(doc) + target in t for t in texts)
        assert re.search(rf"\b{doc['target']}\b", doc["context"], flags=re.IGNORECASE)


def test_generation_is_deterministic_given_the_seed(byte_splits, task_dir, tmp_path):
    evaltasks.generate(byte_splits, tmp_path / "same", EXAMPLES, 0, None, [], None)
    evaltasks.generate(byte_splits, tmp_path / "other", EXAMPLES, 1, None, [], None)
    for name in ("heldout_mc.jsonl", "heldout_cloze.jsonl"):
        assert (tmp_path / "same" / name).read_text() == (task_dir / name).read_text()
        assert (tmp_path / "other" / name).read_text() != (task_dir / name).read_text()


def test_paper_hub_tasks_are_registry_tasks_with_their_metrics():
    """configs/paper.yaml's eight lm-eval tasks exist offline in the pinned lm-eval, with the named metrics."""
    from lm_eval.tasks import TaskManager

    from pvs.config import load_config

    hub = load_config(Path(__file__).resolve().parents[1] / "configs" / "paper.yaml")["evaluate"]["hub_tasks"]
    assert hub == {"winogrande": "acc", "arc_challenge": "acc_norm", "arc_easy": "acc_norm", "hellaswag": "acc_norm",
                   "piqa": "acc_norm", "sciq": "acc", "boolq": "acc", "openbookqa": "acc_norm"}
    evaltasks.check_hub_tasks(hub, TaskManager())


def test_a_wrong_hub_task_or_metric_is_named_before_any_evaluation(capsys):
    code = evaltasks.main(["--check-only", "--hub-tasks", "arc_eazy=acc", "piqa=accuracy", "ai2_arc=acc", "sciq=acc"])
    err = capsys.readouterr().err
    assert code == 2
    assert "evaluate.hub_tasks.arc_eazy: no lm-eval task" in err and "arc_easy" in err
    assert "evaluate.hub_tasks.piqa = 'accuracy': lm-eval's piqa reports acc, acc_norm" in err
    assert "evaluate.hub_tasks.ai2_arc: a tag" in err and "arc_challenge, arc_easy" in err
    assert "sciq" not in err


def test_blimp_is_skipped_cleanly_when_its_directory_is_absent(byte_splits, tmp_path, caplog):
    with caplog.at_level("INFO", logger="pvs.evaluate.tasks"):
        tasks = evaltasks.generate(byte_splits, tmp_path, 10, 0, tmp_path / "no_blimp", ["x"], 5)
    assert set(tasks) == {"heldout_mc", "heldout_cloze"} and not (tmp_path / "blimp").exists()
    assert "BLiMP skipped" in caplog.text


def test_missing_heldout_docs_are_named(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="heldout_docs.jsonl"):
        evaltasks.generate(tmp_path, tmp_path / "tasks", 10, 0, None, [], None)
    assert evaltasks.main(["--data", str(tmp_path), "--out", str(tmp_path / "tasks")]) == 2
    assert str(tmp_path / "heldout_docs.jsonl") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ validation
def test_val_loss_of_trained_model_is_far_below_random_and_uniform(tiny_trained_model, byte_splits):
    config = llama_config(TINY_ARCH, vocab_size=512, bos_id=0, eos_id=0)
    random_model = new_model(config, std=0.02, seed=1).eval()
    trained = load_model(tiny_trained_model).eval()
    device = torch.device("cpu")
    trained_metrics, detail = evaluate.validation(trained, byte_splits, 128, 16, 8, device)
    random_metrics, _ = evaluate.validation(random_model, byte_splits, 128, 16, 8, device)
    uniform = math.log(512)
    assert abs(random_metrics["val_loss"] - uniform) < 0.5
    assert trained_metrics["val_loss"] < uniform - 1.5
    assert trained_metrics["val_loss"] < random_metrics["val_loss"] - 1.5
    assert trained_metrics["val_ppl"] == pytest.approx(math.exp(trained_metrics["val_loss"]))
    assert detail["windows"] == 16 and detail["tokens"] == 16 * 127
    assert set(detail["sources"]) == {"code", "prose"}
    assert all(1 < trained_metrics[f"ppl/{s}"] < 512 for s in ("code", "prose"))


def test_per_source_ranges_cover_val_and_every_scored_token(tiny_trained_model, byte_splits):
    manifest = read_manifest(byte_splits)
    ranges = sorted(manifest["val_sources"].values())
    n_val = len(np.fromfile(byte_splits / "val.bin", dtype=manifest["dtype"]))
    assert ranges[0][0] == 0 and ranges[-1][1] == n_val
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    metrics, detail = evaluate.validation(load_model(tiny_trained_model).eval(), byte_splits, 128, 16, 8,
                                          torch.device("cpu"))
    assert detail["uncovered_tokens"] == 0
    assert sum(s["tokens"] for s in detail["sources"].values()) == detail["tokens"]
    weighted = sum(s["loss"] * s["tokens"] for s in detail["sources"].values()) / detail["tokens"]
    assert weighted == pytest.approx(metrics["val_loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------ lm-eval
def test_every_request_is_conditioned_on_the_document_separator(tiny_trained_model):
    model, tokenizer = load_model(tiny_trained_model).eval(), load_tokenizer(tiny_trained_model)
    lm = evaluate.separator_lm(model, tokenizer, batch_size=4, separator_id=tokenizer.eos_token_id)
    assert lm.prefix_token_id == tokenizer.eos_token_id
    context, continuation = lm._encode_pair("The answer is", " yes")
    assert context[0] == tokenizer.eos_token_id
    assert context[1:] + continuation == tokenizer("The answer is yes", add_special_tokens=False)["input_ids"]


def test_cli_writes_results_with_every_documented_key(tiny_trained_model, byte_splits, task_dir, tmp_path):
    out = tmp_path / "result.json"
    evaluate.main(["--model", str(tiny_trained_model), "--data", str(byte_splits), "--tasks", str(task_dir),
                   "--out", str(out), "--val-windows", "8", "--limit", str(LIMIT), "--batch-size", "16",
                   "--meta", "arm=retrain", "method=sparsegpt", "ratio=0.5", "budget=null", "seed=0",
                   "train_tokens=300000"])
    result = json.loads(out.read_text())
    assert set(result) == RESULT_KEYS
    assert result["model"] == {"path": str(tiny_trained_model), "arm": "retrain", "method": "sparsegpt",
                               "ratio": 0.5, "budget": None, "seed": 0, "train_tokens": 300000}
    metrics = result["metrics"]
    assert {"val_loss", "val_ppl", "ppl/code", "ppl/prose", "lmeval/heldout_mc", "lmeval/heldout_cloze",
            "lmeval/avg"} <= set(metrics)
    assert all(isinstance(v, float) for v in metrics.values())
    assert 0.0 <= metrics["lmeval/heldout_mc"] <= 1.0 and 0.0 <= metrics["lmeval/heldout_cloze"] <= 1.0
    assert metrics["lmeval/avg"] == pytest.approx((metrics["lmeval/heldout_mc"] + metrics["lmeval/heldout_cloze"]) / 2)
    detail = result["lmeval_detail"]
    assert detail["heldout_mc"]["n_samples"] == LIMIT and {"acc", "acc_norm"} <= set(detail["heldout_mc"])
    assert detail["heldout_cloze"]["perplexity"] > 1
    assert result["shape"]["num_hidden_layers"] == 10 and result["params"]["total"] > 0
    assert result["model_meta"] == {"prune": None, "train": None}
    assert result["curve"] is None                                  # no metrics.jsonl: no learning curve
    assert result["versions"]["lm-eval"] != "not installed" and result["seconds"] > 0


def test_masks_and_model_meta_are_read(tiny_trained_model, byte_splits, tmp_path):
    model_dir = tmp_path / "sparse"
    shutil.copytree(tiny_trained_model, model_dir)
    name = "model.layers.0.mlp.down_proj.weight"
    weight = load_model(model_dir).get_parameter(name)
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    mask[:, : weight.shape[1] // 2] = True
    save_file({name: mask}, str(model_dir / "masks.safetensors"))
    (model_dir / "meta.json").write_text(json.dumps({"method": "sparsegpt", "achieved_ratio": 0.5}))
    (model_dir / "train_meta.json").write_text(json.dumps({"arm": "retrain"}))
    out = tmp_path / "result.json"
    evaluate.main(["--model", str(model_dir), "--data", str(byte_splits), "--out", str(out), "--no-lmeval",
                   "--val-windows", "4"])
    result = json.loads(out.read_text())
    dense = sum(p.numel() for p in load_model(model_dir).parameters())
    assert result["params"]["total"] == dense - weight.numel() // 2
    assert result["model_meta"] == {"prune": {"method": "sparsegpt", "achieved_ratio": 0.5},
                                    "train": {"arm": "retrain"}}
    assert result["lmeval_detail"] == {} and "lmeval/avg" not in result["metrics"]


def test_blimp_tasks_run_from_the_shared_copy(tiny_trained_model, byte_splits, tmp_path):
    if not SHARED_BLIMP.is_dir():
        pytest.skip(f"BLiMP not present at {SHARED_BLIMP}")
    phenomena = ["anaphor_number_agreement", "determiner_noun_agreement_1"]
    tasks = evaltasks.generate(byte_splits, tmp_path, 10, 0, SHARED_BLIMP, phenomena, 15)
    assert tasks == {"heldout_mc": "acc_norm", "heldout_cloze": "acc", "blimp_anaphor_number_agreement": "acc",
                     "blimp_determiner_noun_agreement_1": "acc", "blimp": "acc"}
    model, tokenizer = load_model(tiny_trained_model).eval(), load_tokenizer(tiny_trained_model)
    metrics, detail = evaluate.run_lmeval(model, tokenizer, tmp_path, 16, None, tokenizer.eos_token_id)
    per_phenomenon = [metrics[f"lmeval/blimp_{p}"] for p in phenomena]
    assert all(0.0 <= a <= 1.0 for a in per_phenomenon)
    assert detail["blimp_anaphor_number_agreement"]["n_samples"] == 15
    assert metrics["lmeval/blimp"] == pytest.approx(np.mean(per_phenomenon))
    top = [metrics["lmeval/heldout_mc"], metrics["lmeval/heldout_cloze"], metrics["lmeval/blimp"]]
    assert metrics["lmeval/avg"] == pytest.approx(np.mean(top))


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("remove", ["model/config.json", "model/model.safetensors", "data/val.bin",
                                    "data/manifest.json", "tasks/tasks.json"])
def test_a_missing_input_file_is_named(tiny_trained_model, byte_splits, task_dir, tmp_path, remove, capsys):
    dirs = {"model": tmp_path / "model", "data": tmp_path / "data", "tasks": tmp_path / "tasks"}
    for key, source in [("model", tiny_trained_model), ("data", byte_splits), ("tasks", task_dir)]:
        shutil.copytree(source, dirs[key])
    (tmp_path / remove).unlink()
    code = evaluate.main(["--model", str(dirs["model"]), "--data", str(dirs["data"]), "--tasks", str(dirs["tasks"]),
                          "--out", str(tmp_path / "out.json")])
    assert code == 2 and str(tmp_path / remove) in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_meta_values_are_parsed():
    assert evaluate.parse_meta(["a=1", "b=0.5", "c=null", "d=300k", "e=None"]) == \
        {"a": 1, "b": 0.5, "c": None, "d": "300k", "e": None}
    with pytest.raises(ValueError, match="key=value"):
        evaluate.parse_meta(["novalue"])


def local_text_dataset(texts: list[str], root: Path) -> Path:
    """A json dataset (field "body", split "test") that `datasets.load_dataset(DIR, streaming=True)` reads."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "test.jsonl", "w") as f:
        for text in texts:
            f.write(json.dumps({"body": text}) + "\n")
    return root


def test_perplexity_sets_are_fetched_once_and_scored_offline(tiny_trained_model, byte_splits, tmp_path, capsys):
    """evaluate.perplexity_datasets (WikiText/C4 at scale) on a local json dataset: fetched into a token file by
    pvs.evaluate.sets, then pvs.evaluate scores exactly its windows."""
    import yaml

    from pvs.evaluate.sets import read_perplexity_set

    texts = heldout_texts(byte_splits)[:20]
    spec = {"name": str(local_text_dataset(texts, tmp_path / "ds")), "split": "test", "text_field": "body"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"train": {"seq_len": 64}, "evaluate": {
        "perplexity_datasets": {"local": spec}, "perplexity_max_tokens": 1000}}))
    assert evalsets.main(["--config", str(config), "--data", str(byte_splits), "--out", str(tmp_path / "sets")]) == 0
    tok = load_tokenizer(byte_splits / "tokenizer")
    eos = read_manifest(byte_splits)["eos_id"]
    ids = [i for t in texts if t.strip() for i in tok(t, add_special_tokens=False)["input_ids"] + [eos]]
    assert np.array_equal(read_perplexity_set(tmp_path / "sets", "local"), ids[:1000])
    index = json.loads((tmp_path / "sets" / "index.json").read_text())
    assert index["perplexity_sets"]["local"]["tokens"] == 1000 and index["hub_tasks"] == {}

    base = ["--model", str(tiny_trained_model), "--data", str(byte_splits), "--config", str(config), "--no-lmeval",
            "--val-windows", "4"]
    assert evaluate.main(base + ["--out", str(tmp_path / "no_sets.json")]) == 2         # the sets are required
    assert "evaluate.perplexity_datasets.local" in capsys.readouterr().err
    assert evaluate.main(base + ["--out", str(tmp_path / "r.json"), "--eval-sets", str(tmp_path / "sets")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    windows = np.asarray(ids[:15 * 64], dtype=np.int64).reshape(15, 64)          # 1000 tokens -> 15 windows
    expected = evaluate.token_nll(load_model(tiny_trained_model).eval(), windows, 8, torch.device("cpu"))
    assert result["val_detail"]["ppl/local"]["tokens"] == expected.numel()
    assert result["metrics"]["ppl/local"] == pytest.approx(math.exp(expected.mean().item()), rel=1e-4)
    assert 1 < result["metrics"]["ppl/local"] < len(tok)                           # better than uniform


def test_hub_tasks_are_built_once_into_the_cache(task_manager):
    """eval_sets builds each hub task once (here a local task stands in for a registry one)."""
    records = evalsets.fetch_hub_tasks({"heldout_mc": "acc_norm"}, task_manager)
    assert records == {"heldout_mc": {"metric": "acc_norm", "documents": {"heldout_mc": EXAMPLES}}}


def test_an_unreachable_hub_task_is_named(byte_splits, tmp_path):
    """Offline with an empty HF cache, fetching a registry task fails naming its config key; no index written."""
    import os
    import subprocess
    import sys

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"evaluate": {"hub_tasks": {"arc_easy": "acc_norm"}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-m", "pvs.evaluate.sets", "--config", str(config), "--data", str(byte_splits),
                             "--out", str(tmp_path / "sets")], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "evaluate.hub_tasks.arc_easy: lm-eval cannot build it" in result.stderr
    assert not (tmp_path / "sets" / "index.json").exists()
