"""The prune stage: Minitron depth, SparseGPT unstructured and N:M, the CLI and its errors.

Runs on the session's tiny trained Llama (10 layers, GQA) and its real-text token files.
"""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from pvs.modeling import MASKS_FILE, count_params, load_masks, load_model, save_model, shape_of
from pvs.prune import __main__ as cli
from pvs.prune import depth, sparsegpt
from pvs.prune.common import calibration_windows, capture_layer_inputs, lm_loss, run_layer
from pvs.prune.registry import get_method
from pvs.prune.shapes import solve_shape

OPTIONS = {"blocksize": 32, "dampening": 0.01, "seed": 0, "device": "cpu", "patterns": {"0.5": "2:4", "0.6": "2:5"}}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def calib(byte_splits):
    return calibration_windows(byte_splits, windows=16, seq_len=64, seed=0)


def block_linears(model):
    return {n: p for n, p in model.named_parameters() if n.split(".")[-2] in LINEARS}


# ---------------------------------------------------------------- shared helpers
def test_calibration_windows_are_seeded_and_checked(byte_splits):
    a = calibration_windows(byte_splits, 8, 64, seed=0)
    assert a.shape == (8, 64) and a.dtype == torch.int64
    assert torch.equal(a, calibration_windows(byte_splits, 8, 64, seed=0))
    assert not torch.equal(a, calibration_windows(byte_splits, 8, 64, seed=1))
    with pytest.raises(ValueError, match="10000000 windows"):
        calibration_windows(byte_splits, 10_000_000, 64, seed=0)


def test_captured_layer_inputs_replay_the_model_exactly(tiny_trained_model, calib):
    model = load_model(tiny_trained_model)
    inputs = capture_layer_inputs(model, calib, batch_size=8)
    assert [len(i.hidden) for i in inputs] == [8, 8]
    for layer in model.model.layers:
        for inp in inputs:
            inp.hidden = run_layer(layer, inp)
    logits = model.lm_head(model.model.norm(torch.cat([i.hidden for i in inputs])))
    with torch.no_grad():
        expected = model(input_ids=calib, use_cache=False).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- minitron_depth
@pytest.fixture(scope="module")
def depth_result(tiny_trained_model, calib):
    return depth.prune(load_model(tiny_trained_model), calib, 0.5, OPTIONS)


def test_depth_child_shape_reload_and_kv_cache(depth_result, tiny_trained_model, tmp_path):
    parent = load_model(tiny_trained_model)
    child = depth_result.model
    assert len(child.model.layers) == child.config.num_hidden_layers == 5
    assert shape_of(child.config) == {**shape_of(parent.config), "num_hidden_layers": 5}
    save_model(child, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == list(range(5))
    prompt = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, child(prompt).logits)
        kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        cached = reloaded.generate(prompt, use_cache=True, **kw)
        uncached = reloaded.generate(prompt, use_cache=False, **kw)
    assert cached.shape[1] == prompt.shape[1] + 12
    assert torch.equal(cached, uncached)


def test_depth_removes_the_block_with_lowest_independent_loss(depth_result, tiny_trained_model, calib):
    info = depth_result.info
    independent = []
    for start in range(10 - 5 + 1):
        fresh = depth.remove_block(load_model(tiny_trained_model).eval(), start, 5)
        with torch.no_grad():
            losses = [fresh(input_ids=b, labels=b).loss.item() for b in calib.split(8)]
        independent.append(sum(losses) / len(losses))
    assert [c["start"] for c in info["candidates"]] == list(range(6))
    for c, loss in zip(info["candidates"], independent):
        assert c["loss"] == pytest.approx(loss, rel=1e-5)
    best = min(range(6), key=independent.__getitem__)
    assert (info["removed_start"], info["removed_end"]) == (best, best + 5)
    assert independent[best] < max(independent)  # the choice matters on a trained model


def test_depth_ratio_maps_to_whole_layers_and_rejects_bad_ratios():
    assert [depth.layers_to_remove(r, 10) for r in (0.5, 0.6, 0.7, 0.8)] == [5, 6, 7, 8]
    for bad in (0.01, 0.97):
        with pytest.raises(ValueError, match=str(bad)):
            depth.layers_to_remove(bad, 10)


# ---------------------------------------------------------------- sparsegpt
@pytest.fixture(scope="module")
def sparse_children(tiny_trained_model, calib):
    unstructured = sparsegpt.prune(load_model(tiny_trained_model), calib, 0.5, OPTIONS)
    two_four = get_method("sparsegpt_nm").prune(load_model(tiny_trained_model), calib, 0.5, OPTIONS)
    magnitude = load_model(tiny_trained_model)
    magnitude_masks = sparsegpt.magnitude_prune(magnitude, 0.5)
    return {"unstructured": unstructured, "2:4": two_four, "magnitude": (magnitude, magnitude_masks)}


@pytest.mark.parametrize("ratio,true_sequential", [(0.5, False), (0.7, True)])
def test_sparsegpt_exact_sparsity_per_linear(tiny_trained_model, sparse_children, calib, ratio, true_sequential):
    options = {**OPTIONS, "true_sequential": true_sequential}
    result = sparse_children["unstructured"] if ratio == 0.5 else \
        sparsegpt.prune(load_model(tiny_trained_model), calib, ratio, options)
    assert result.info["true_sequential"] == true_sequential
    weights = block_linears(result.model)
    assert set(result.masks) == set(weights) and len(weights) == 7 * 10
    for name, w in weights.items():
        mask = result.masks[name]
        assert mask.shape == w.shape and mask.dtype == torch.bool
        assert int((~mask).sum()) == round(ratio * w.numel()), name
        assert torch.all(w[~mask] == 0), name
    assert result.info["sparsity"] == pytest.approx(ratio, abs=1e-3)


def test_sparsegpt_nm_keeps_exactly_n_per_group(sparse_children, tiny_trained_model, calib):
    for (n, m), result in [((2, 4), sparse_children["2:4"]),
                           ((2, 5), get_method("sparsegpt_nm").prune(load_model(tiny_trained_model), calib, 0.6,
                                                                     OPTIONS))]:
        assert result.info["pattern"] == f"{n}:{m}"
        for name, w in block_linears(result.model).items():
            mask = result.masks[name]
            full = w.shape[1] // m * m
            kept = mask[:, :full].reshape(w.shape[0], -1, m).sum(-1)
            assert torch.all(kept == n), name
            if full < w.shape[1]:  # hidden 64 with M = 5: a trailing group of 4 keeps round(2 * 4 / 5) = 2
                assert torch.all(mask[:, full:].sum(1) == round(n * (w.shape[1] - full) / m)), name
            assert torch.all(w[~mask] == 0), name


def test_masks_save_and_reload(sparse_children, tmp_path):
    result = sparse_children["2:4"]
    save_model(result.model, tmp_path, masks=result.masks)
    assert (tmp_path / MASKS_FILE).exists()
    masks = load_masks(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    params = dict(reloaded.named_parameters())
    assert set(masks) == set(result.masks)
    for name, mask in masks.items():
        assert torch.equal(mask, result.masks[name])
        assert torch.all(params[name][~mask] == 0)
    assert count_params(reloaded, masks)["non_embedding"] < count_params(reloaded)["non_embedding"]


def test_sparsegpt_beats_magnitude_and_unstructured_beats_nm(sparse_children, tiny_trained_model, val):
    dense = lm_loss(load_model(tiny_trained_model), val)
    unstructured = lm_loss(sparse_children["unstructured"].model, val)
    two_four = lm_loss(sparse_children["2:4"].model, val)
    magnitude = lm_loss(sparse_children["magnitude"][0], val)
    print(f"val loss: dense {dense:.4f}  sparsegpt 0.5 {unstructured:.4f}  sparsegpt 2:4 {two_four:.4f}  "
          f"magnitude 0.5 {magnitude:.4f}")
    assert dense < unstructured < magnitude
    assert unstructured <= two_four


def test_obs_prune_handles_dead_inputs_and_reduces_error():
    torch.manual_seed(0)
    X = torch.randn(2000, 48) @ (torch.eye(48) + 0.3 * torch.randn(48, 48))
    X[:, 7] = 0.0
    W = torch.randn(24, 48)
    W_pruned, keep, stats = sparsegpt.obs_prune(W, X.T @ X / len(X), 0.5, 16, 0.01)
    assert stats["dead_inputs"] == 1 and not keep[:, 7].any() and torch.isfinite(W_pruned).all()
    magnitude = W.masked_fill(sparsegpt.smallest(W.abs(), W.numel() // 2), 0.0)
    error = lambda V: ((V - W) @ X.T).pow(2).sum().item()  # noqa: E731
    assert error(W_pruned) < 0.8 * error(magnitude)
    assert stats["rel_error"] == pytest.approx(error(W_pruned) / (W @ X.T).pow(2).sum().item(), rel=1e-3)


# ---------------------------------------------------------------- CLI
@pytest.mark.parametrize("method,ratio", [("minitron_depth", 0.5), ("minitron_depth", 0.8), ("sparsegpt", 0.7),
                                          ("sparsegpt_nm", 0.5), ("minitron_width", 0.6), ("flap", 0.7),
                                          ("sheared_llama", 0.5)])
def test_cli_end_to_end(tiny_trained_model, byte_splits, tmp_path, method, ratio):
    out, config = tmp_path / "child", tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"prune": {"sheared_llama": {"mask_tokens": 2048, "batch_size": 2}}}))
    assert cli.main(["--method", method, "--ratio", str(ratio), "--model", str(tiny_trained_model),
                     "--data", str(byte_splits), "--out", str(out), "--calib-windows", "4", "--config", str(config),
                     "--calib-seq-len", "64", "--seed", "3", "--device", "cpu", "--threads", "1"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    child = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    masks = load_masks(out)
    assert (masks is not None) == method.startswith("sparsegpt") == meta["sparse"]
    assert meta["method"] == method and meta["target_ratio"] == ratio
    assert abs(meta["achieved_ratio"] - ratio) <= 0.03
    if method == "minitron_depth":
        assert meta["achieved_ratio"] == pytest.approx(ratio, abs=1e-12)
        assert meta["info"]["removed_end"] - meta["info"]["removed_start"] == round(ratio * 10)
    if not meta["sparse"]:
        assert shape_of(child.config) == {**solve_shape(method, ratio, load_model(tiny_trained_model).config),
                                          "vocab_size": 512}
    assert meta["params"]["child"] == count_params(child, masks)
    assert meta["shape"]["child"] == shape_of(child.config)
    # Sheared-LLaMA draws enough distinct windows for its mask-learning budget (2048 / 64 = 32)
    windows = 32 if method == "sheared_llama" else 4
    assert meta["calibration"] == {"split": "calib", "windows": windows, "seq_len": 64, "seed": 3,
                                   "tokens": windows * 64}
    assert meta["mask_learning_tokens"] == (2048 if method == "sheared_llama" else 0)
    assert meta["versions"]["torch"] == torch.__version__
    assert (out / "tokenizer.json").exists()


def test_schema_mirrors_every_method_option():
    """Each registry record's options are its documented prune.<method> section of the schema, same defaults."""
    from pvs.config import load_schema
    from pvs.prune.registry import RECORDS
    properties = load_schema()["properties"]["prune"]["properties"]
    for record in RECORDS:
        section = properties[record.name]
        assert section["description"] and section["additionalProperties"] is False, record.name
        assert set(section["properties"]) == set(record.options), record.name
        for key, default in record.options.items():
            assert section["properties"][key]["description"], (record.name, key)
            assert section["properties"][key]["default"] == default, (record.name, key)


@pytest.mark.parametrize("argv,needle", [(["--method", "nope", "--ratio", "0.5"], "nope"),
                                         (["--method", "sparsegpt", "--ratio", "1.5"], "1.5"),
                                         (["--method", "sparsegpt", "--ratio", "0"], "0.0")])
def test_cli_rejects_bad_method_and_ratio(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv + ["--model", "m", "--data", "d", "--out", "o"])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_nm_ratio_without_pattern_and_unknown_method_are_named(tiny_trained_model, byte_splits, tmp_path, capsys):
    code = cli.main(["--method", "sparsegpt_nm", "--ratio", "0.55", "--model", str(tiny_trained_model),
                     "--data", str(byte_splits), "--out", str(tmp_path / "x")])
    assert code == 2 and "0.55" in capsys.readouterr().err
    with pytest.raises(KeyError, match="nope"):
        get_method("nope")
    with pytest.raises(ValueError, match="3:3"):
        sparsegpt.parse_nm("3:3")


def test_method_options_isolate_each_methods_rerun_trigger():
    from pvs.config import validate_config
    from pvs.prune.registry import METHOD_NAMES, method_options
    base = validate_config({})["prune"]
    tuned = validate_config({"prune": {"methods": list(METHOD_NAMES), "sheared_llama": {"mask_tokens": 5},
                                       "minitron_width": {"aggregation": "mean_l2"}}})["prune"]
    for method in ("minitron_depth", "flap", "sparsegpt", "sparsegpt_nm"):
        assert method_options(method, tuned) == method_options(method, base), method
    assert method_options("sheared_llama", tuned)["sheared_llama"]["mask_tokens"] == 5
    assert method_options("minitron_width", tuned) != method_options("minitron_width", base)
    assert "patterns" in method_options("sparsegpt_nm", base)["sparsegpt_nm"]
    assert "patterns" not in method_options("sparsegpt", base)["sparsegpt"]
    assert method_options("minitron_depth", base) == {"calib_windows": 32, "calib_seq_len": 256,
                                                      "match": "non_embedding",
                                                      "minitron_depth": {"calib_seq_len": None, "shapes": {}}}
    # prune.match and a method's shape override re-run the structured methods they concern, no sparse one
    total = validate_config({"prune": {"match": "total", "ratios": [0.5]}})["prune"]
    for method in METHOD_NAMES:
        changed = method_options(method, total) != method_options(method, base)
        assert changed == (method in ("minitron_depth", "minitron_width", "sheared_llama", "flap")), method
    shaped = validate_config({"prune": {"flap": {"shapes": {"0.5": {"intermediate_size": 96}}}}})["prune"]
    assert [m for m in METHOD_NAMES if method_options(m, shaped) != method_options(m, base)] == ["flap"]
    # run-only options: checkpointing more often re-runs nothing
    every = validate_config({"prune": {"sheared_llama": {"checkpoint_every": 7}}})["prune"]
    assert method_options("sheared_llama", every) == method_options("sheared_llama", base)
