"""The trainer: token accounting, the recipe's schedule, falling loss, exact resume, frozen sparse masks."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pvs.train import trainer as train
from pvs.budget import format_tokens, parse_tokens, steps_for_budget
from pvs.config import validate_config
from pvs.modeling import MASKS_FILE, load_model, save_masks

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 128}


@pytest.fixture
def config_file(tmp_path):
    cfg = {"parent": {"arch": SMALL}, "threads_per_job": 1, "prune": {"methods": ["sparsegpt"], "calib_seq_len": 32},
           "train": {"seq_len": 32, "batch_size": 4, "lr": 0.003, "checkpoint_every": 3,
                     "eval_every_tokens": 256, "eval_windows": 4}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(arm, tokens, data, out, config, *extra):
    argv = ["--arm", arm, "--tokens", str(tokens), "--data", str(data), "--out", str(out), "--config", str(config),
            "--ckpt", str(out) + ".ckpt", *map(str, extra)]
    return train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config))))


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_budgets_parse_format_and_steps():
    assert parse_tokens("300k") == 300_000 and parse_tokens("1.5M") == 1_500_000 and parse_tokens("50B") == 5 * 10**10
    assert parse_tokens(4096) == 4096
    assert format_tokens(1_300_000) == "1.3M" and format_tokens(75_000) == "75k" and format_tokens(123) == "123"
    assert steps_for_budget(300_000, 256, 16) == math.ceil(300_000 / 4096) == 74
    assert steps_for_budget(4096, 256, 16) == 1
    # 50B at the paper's 8192 x 512 batch is 11,921 steps (the paper rounds to "12,500 steps" for 4.2M/step)
    assert steps_for_budget(parse_tokens("50B"), 8192, 512) == 11921
    for bad in ("12x", "-5k", "0", 0, 1.5):
        with pytest.raises(ValueError):
            parse_tokens(bad)


def test_schedule_warms_up_then_decays_to_floor():
    recipe = validate_config({})["train"]
    steps = 100
    lrs = [train.lr_at(s, steps, recipe) for s in range(steps)]
    assert lrs[0] == pytest.approx(recipe["lr"] / 5) and lrs[4] == pytest.approx(recipe["lr"])  # 5 warm-up steps
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert lrs[-1] == pytest.approx(recipe["lr"] * recipe["min_lr_ratio"], rel=0.01)


def test_parent_loss_falls_and_outputs_reload(byte_splits, config_file, tmp_path):
    out = tmp_path / "parent"
    meta = run("parent", 16384, byte_splits, out, config_file)
    records = metrics(out)
    assert meta["steps"] == 128 and records[-1]["tokens"] == 16384
    losses = [r["loss"] for r in records if "loss" in r]
    assert sum(losses[-32:]) / 32 < sum(losses[:4]) / 4 - 0.7
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 1 + 16384 // 256 and vals[-1] < vals[0] - 0.7
    model = load_model(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert not (out.parent / "parent.ckpt").exists()
    assert json.loads((out / "train_meta.json").read_text())["versions"]["torch"] == torch.__version__


def test_resume_matches_uninterrupted_run(byte_splits, config_file, tmp_path):
    straight = tmp_path / "straight"
    run("parent", 2048, byte_splits, straight, config_file)
    resumed = tmp_path / "resumed"
    assert run("parent", 2048, byte_splits, resumed, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    assert not resumed.exists() and (tmp_path / "resumed.ckpt" / "latest").exists()
    meta = run("parent", 2048, byte_splits, resumed, config_file)
    assert meta["resumed_from_step"] == 5
    def curve(out):
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in metrics(out)]
    assert curve(resumed) == curve(straight)
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def sparse_child(parent_dir, out_dir):
    """Magnitude-mask every block linear of a model to 50% and save it as a sparse child."""
    model = load_model(parent_dir)
    masks = {}
    for name, p in model.named_parameters():
        if ".layers." in name and p.ndim == 2:
            masks[name] = p.abs() > p.abs().flatten().median()
            p.data.mul_(masks[name])
    model.save_pretrained(out_dir)
    save_masks(masks, out_dir / MASKS_FILE)
    return masks


@pytest.mark.parametrize("arm", ["retrain", "scratch"])
def test_sparse_mask_holds_after_training(byte_splits, config_file, tmp_path, arm):
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child = tmp_path / "child"
    masks = sparse_child(parent, child)
    out = tmp_path / arm
    run(arm, 2048, byte_splits, out, config_file, "--init", child)
    trained = load_model(out).state_dict()
    start = load_model(child).state_dict()
    for name, mask in masks.items():
        assert torch.all(trained[name][~mask] == 0), name
        assert torch.all(trained[name][mask] != 0), name
        assert not torch.equal(trained[name], start[name])
    assert load_file(str(out / MASKS_FILE)).keys() == masks.keys()
    if arm == "scratch":  # surviving weights were re-initialized, not inherited
        name = next(iter(masks))
        corr = torch.corrcoef(torch.stack([trained[name][masks[name]], start[name][masks[name]]]))[0, 1]
        assert abs(corr) < 0.5


def test_window_order_is_a_seeded_permutation():
    a, b = train.window_order(64, 0), train.window_order(64, 1)
    assert sorted(a) == list(range(64)) and sorted(b) == list(range(64))   # every window once
    assert list(a) != list(b) and list(a) == list(train.window_order(64, 0))


def test_seeds_change_the_data_order_but_not_the_tokens(byte_splits, config_file, tmp_path):
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child = tmp_path / "child"
    sparse_child(parent, child)
    first = run("retrain", 1024, byte_splits, tmp_path / "s0", config_file, "--init", child, "--seed", "0")
    again = run("retrain", 1024, byte_splits, tmp_path / "s0b", config_file, "--init", child, "--seed", "0")
    other = run("retrain", 1024, byte_splits, tmp_path / "s1", config_file, "--init", child, "--seed", "1")
    assert first["final_train_loss"] == again["final_train_loss"]              # a seed is reproducible
    assert first["final_train_loss"] != other["final_train_loss"]              # another seed is another run
    assert first["tokens_seen"] == other["tokens_seen"] == 1024


def test_tokens_from_a_setting3_budget_file(byte_splits, config_file, tmp_path):
    parent = tmp_path / "parent"
    run("parent", 512, byte_splits, parent, config_file)
    child = tmp_path / "child"
    sparse_child(parent, child)
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"tokens": 700}))
    argv = ["--arm", "scratch_flops", "--tokens-from", str(budget), "--data", str(byte_splits),
            "--out", str(tmp_path / "sf"), "--config", str(config_file), "--init", str(child)]
    meta = train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config_file))))
    assert meta["tokens"] == 700 and meta["tokens_seen"] == 768                 # ceil(700 / 128) = 6 steps x 128
    budget.write_text(json.dumps({"tokens": "lots"}))
    with pytest.raises(ValueError, match="budget.json: needs a positive integer 'tokens'"):
        train.train(train.parse_args(argv), validate_config(yaml.safe_load(open(config_file))))


def test_scratch_init_is_a_real_truncated_normal():
    """Sampled from N(0, std) restricted to +-2 std (not clamped): nothing at the cut, std 0.8796 x 0.02."""
    from pvs.modeling import llama_config, new_model

    config = llama_config({**SMALL, "hidden_size": 128, "intermediate_size": 384, "rope_theta": 1e4}, 512, 0, 0)
    std = 0.02
    model = new_model(config, std, seed=3)
    matrices = torch.cat([p.detach().flatten() for p in model.parameters() if p.ndim >= 2])
    assert matrices.numel() > 200_000
    assert not torch.any(matrices.abs() == torch.tensor(2 * std, dtype=torch.float32))
    assert matrices.abs().max() < 2 * std
    assert matrices.std().item() == pytest.approx(std * 0.8796, rel=0.02)
    assert abs(matrices.mean().item()) < 1e-4
    again = new_model(config, std, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))   # seeded
    assert not torch.equal(model.lm_head.weight, new_model(config, std, seed=4).lm_head.weight)


def test_sparse_gradients_are_masked_before_clipping(byte_splits, config_file, tmp_path, monkeypatch):
    """Gradients of pruned weights are zero when the clip sees them (so the logged norm covers only kept
    weights), and AdamW's moments at pruned positions stay exactly zero."""
    parent = tmp_path / "parent"
    run("parent", 512, byte_splits, parent, config_file)
    child = tmp_path / "child"
    masks = sparse_child(parent, child)
    seen = []
    clip = torch.nn.utils.clip_grad_norm_

    def checking_clip(parameters, max_norm, *a, **k):
        parameters = list(parameters)
        grads = {id(p): p.grad for p in parameters if p.grad is not None}
        seen.append((grads, torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads.values()]))))
        return clip(parameters, max_norm, *a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", checking_clip)
    out = tmp_path / "retrain"
    assert run("retrain", 2048, byte_splits, out, config_file, "--init", child,
               "--stop-after-steps", 4) == {"stopped_at": 4}
    monkeypatch.undo()
    assert len(seen) == 4
    # the parameters are those of the trainer's model: find each mask's gradient by shape and position
    model = load_model(child)
    names = [n for n, p in model.named_parameters()]
    for grads, norm in seen:
        by_name = dict(zip(names, grads.values()))
        for name, mask in masks.items():
            assert torch.all(by_name[name][~mask] == 0), name
            assert torch.any(by_name[name][mask] != 0), name
    records = [json.loads(line) for line in (tmp_path / "retrain.ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in records if "grad_norm" in r] == pytest.approx([float(n) for _, n in seen],
                                                                                rel=1e-5)
    ckpt = tmp_path / "retrain.ckpt"
    moments = load_file(str(ckpt / (ckpt / "latest").read_text().strip() / "optimizer.safetensors"))
    for name, mask in masks.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.all(moments[f"{key}.{name}"][~mask] == 0), (key, name)
            assert torch.all(moments["exp_avg_sq." + name][mask] > 0), name


def test_run_only_options_keep_the_checkpoint(byte_splits, config_file, tmp_path):
    """Changing checkpoint interval, logging, micro-batch, activation checkpointing or compile resumes the
    checkpoint; changing the recipe (the learning rate) starts over."""
    from pvs.config import RUN_ONLY_TRAIN_KEYS, result_recipe

    out = tmp_path / "run"
    assert run("parent", 2048, byte_splits, out, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    cfg = yaml.safe_load(config_file.read_text())
    cfg["train"].update(checkpoint_every=7, eval_every_tokens=512, micro_batch_size=2,
                        activation_checkpointing=True)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    before, after = (validate_config(yaml.safe_load(p.read_text()))["train"] for p in (config_file, changed))
    assert before != after and result_recipe(before) == result_recipe(after)
    assert {k for k in before if before[k] != after[k]} <= set(RUN_ONLY_TRAIN_KEYS)
    meta = run("parent", 2048, byte_splits, out, changed)
    assert meta["resumed_from_step"] == 5 and meta["tokens_seen"] == 2048
    assert meta["run_options"]["checkpoint_every"] == 7 and "checkpoint_every" not in meta["recipe"]
    # a result setting is part of the run's signature: the old checkpoint does not resume into it
    other = tmp_path / "other"
    assert run("parent", 2048, byte_splits, other, config_file, "--stop-after-steps", 5) == {"stopped_at": 5}
    cfg["train"]["lr"] = 0.001
    changed.write_text(yaml.safe_dump(cfg))
    assert run("parent", 2048, byte_splits, other, changed)["resumed_from_step"] == 0


def flap_child(parent_dir, data, out_dir):
    """FLAP at 0.5 on a trained parent, with bias compensation, saved as an HF directory."""
    from pvs.data.tokens import load_split, spread_windows
    from pvs.prune import flap

    model = load_model(parent_dir)
    calib = torch.from_numpy(spread_windows(load_split(data, "calib"), 32, 8))
    child = flap.prune(model, calib, 0.5, {"bias_compensation": True}).model
    child.save_pretrained(out_dir)
    return child


def test_flap_child_trains_only_its_compensation_biases(byte_splits, config_file, tmp_path):
    """Retraining a FLAP child moves its o_proj / down_proj biases and keeps the q/k/v/gate/up biases that
    stock LlamaConfig forces on exactly zero; its scratch twin is a plain Llama without biases."""
    parent = tmp_path / "parent"
    run("parent", 1024, byte_splits, parent, config_file)
    child_dir = tmp_path / "flap"
    child = flap_child(parent, byte_splits, child_dir)
    assert child.config.attention_bias and child.config.mlp_bias
    start = child.state_dict()
    run("retrain", 1024, byte_splits, tmp_path / "retrain", config_file, "--init", child_dir)
    trained = load_model(tmp_path / "retrain")
    biases = {n: p for n, p in trained.named_parameters() if n.endswith(".bias")}
    forced = [n for n in biases if n.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")]
    kept = [n for n in biases if n.split(".")[-2] in ("o_proj", "down_proj")]
    assert len(forced) == 5 * SMALL["num_hidden_layers"] and len(kept) == 2 * SMALL["num_hidden_layers"]
    for name in forced:
        assert torch.all(biases[name] == 0), name
    for name in kept:
        assert not torch.equal(biases[name], start[name]), name           # the compensation trains
    run("scratch", 1024, byte_splits, tmp_path / "scratch", config_file, "--init", child_dir)
    scratch = load_model(tmp_path / "scratch")
    assert not scratch.config.attention_bias and not scratch.config.mlp_bias
    assert not [n for n, _ in scratch.named_parameters() if n.endswith(".bias")]
    assert scratch.config.intermediate_size == child.config.intermediate_size
    assert scratch.config.num_key_value_heads == child.config.num_key_value_heads


def test_a_budget_beyond_one_epoch_fails_at_job_start_naming_file_and_key(byte_splits, config_file, tmp_path,
                                                                          capsys):
    pretrain = json.loads((byte_splits / "manifest.json").read_text())["splits"]["pretrain"]["tokens"]
    argv = ["--arm", "parent", "--tokens", str(2 * pretrain), "--data", str(byte_splits), "--out",
            str(tmp_path / "p"), "--config", str(config_file), "--device", "cpu"]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{byte_splits / 'manifest.json'}: train.max_epochs = 1: arm parent" in err and "split pretrain" in err
    assert not (tmp_path / "p").exists()                                   # nothing was trained or written


# ---------------------------------------------------------------- the training step's switches (pvs.train.step)
def toy_model(seed=0, vocab=512):
    from pvs.modeling import llama_config, new_model
    return new_model(llama_config({**SMALL, "rope_theta": 1e4}, vocab, 0, 0), 0.02, seed=seed)


def logits_sized_outputs(fn, vocab):
    """Run ``fn`` and return (its result, the largest numel of any new tensor (not a view, such as a weight's
    transpose) an op creates whose last dim is ``vocab``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[-1] == vocab and not func.is_view:
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    with Largest():
        result = fn()
    return result, Largest.largest


def test_chunked_cross_entropy_equals_the_plain_loss_and_never_holds_whole_logits():
    """loss_chunk_tokens: the same loss and gradients as cross-entropy over the full fp32 logits (1e-5), and no
    tensor of (tokens x vocab) appears in forward or backward: the largest is (chunk x vocab)."""
    from pvs.train.step import chunked_cross_entropy, micro_batch_loss
    import contextlib

    vocab, chunk = 512, 8
    x = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    grads, peaks, values = [], [], []
    for chunk_tokens in (None, chunk):
        model = toy_model()
        loss, largest = logits_sized_outputs(lambda: micro_batch_loss(model, model, x, y, contextlib.nullcontext,
                                                                      chunk_tokens), vocab)
        _, largest_bwd = logits_sized_outputs(loss.backward, vocab)
        values.append(loss.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        peaks.append(max(largest, largest_bwd))
    assert values[1] == pytest.approx(values[0], abs=1e-5)
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-5, rtol=1e-4), name
    assert peaks[0] >= x.numel() * vocab                         # the plain path holds the whole logits
    assert peaks[1] <= chunk * vocab                             # the chunked one a chunk's at most
    # a head with a bias (FLAP compensation style) and ignored labels: same as the plain formula
    h = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 12, (10,))
    labels[3] = -100
    assert torch.autograd.gradcheck(lambda h, w, b: chunked_cross_entropy(h, w, b, labels, 4), (h, w, b))
    plain = torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, w, b), labels)
    assert chunked_cross_entropy(h, w, b, labels, 6).item() == pytest.approx(plain.item(), rel=1e-12)


def test_the_step_synchronizes_with_the_host_once_whatever_the_micro_batches(monkeypatch):
    """Losses are accumulated on the device: the host reads (Tensor.item / float) do not grow with the number of
    micro-batches, and the step's loss is the micro-batches' mean, as the former per-micro-batch reads summed it."""
    import contextlib
    from pvs.train.step import TrainStep

    x = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, 1)
    reads = {"n": 0}
    for name in ("item", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads["n"] += 1
            return _original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    results = {}
    for micro in (4, 1):
        model = toy_model()
        optimizer = train.make_optimizer(model, validate_config({})["train"])
        step = TrainStep(model, optimizer, None, 1.0, contextlib.nullcontext)
        reads["n"] = 0
        loss, grad_norm = step([(x[i:i + micro], y[i:i + micro]) for i in range(0, 4, micro)], 1e-3)
        results[micro] = (reads["n"], loss, grad_norm)
    monkeypatch.undo()
    assert results[1][0] == results[4][0]                       # 4 micro-batches: no more host reads than 1
    assert results[1][1].dtype == torch.float64 and results[1][1].ndim == 0
    assert results[1][1].item() == pytest.approx(results[4][1].item(), rel=1e-6)
    assert results[1][2].item() == pytest.approx(results[4][2].item(), rel=1e-5)


def test_prefetched_batches_equal_the_synchronous_ones(byte_splits):
    """prefetch_batches: step s+1's windows are read in a background thread while step s runs; same tensors."""
    import threading
    from pvs.data.tokens import TokenStream, load_split
    from pvs.train.step import Batches

    stream = TokenStream([load_split(byte_splits, "pretrain")])
    order = train.window_order(6 * 4, 0)
    plain = Batches(stream, order, 4, 32, 2, 0, 1, torch.device("cpu"))
    ahead = Batches(stream, order, 4, 32, 2, 0, 1, torch.device("cpu"), prefetch=True)
    threads = []
    read = ahead.read
    ahead.read = lambda step: threads.append(threading.current_thread().name) or read(step)
    for step in range(6):
        a, b = plain.get(step), ahead.get(step)
        assert len(a) == len(b) == 2
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    ahead.close()
    assert threads[0] == threading.current_thread().name                 # step 0: nothing prefetched yet
    assert len(threads) == 6 and all(t.startswith("pvs-batches") for t in threads[1:])
    # ranks read disjoint shares of the same global batch
    shares = [Batches(stream, order, 4, 32, 1, r, 2, torch.device("cpu")).get(0) for r in (0, 1)]
    together = torch.cat([shares[0][0][0], shares[1][0][0], shares[0][1][0], shares[1][1][0]])
    assert torch.equal(together.sort(0).values, torch.cat([x for x, _ in plain.get(0)]).sort(0).values)


def switched_config(config_file, tmp_path, name, **train_keys):
    cfg = yaml.safe_load(config_file.read_text())
    cfg["train"].update(train_keys)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_chunked_loss_and_prefetch_follow_the_plain_trainer(byte_splits, config_file, tmp_path):
    """The trainer with loss_chunk_tokens, prefetch_batches and 2 micro-batches: the plain run's curve (1e-5)."""
    run("parent", 1024, byte_splits, tmp_path / "plain", config_file)
    switched = switched_config(config_file, tmp_path, "switched", loss_chunk_tokens=24, prefetch_batches=True,
                               micro_batch_size=2)
    run("parent", 1024, byte_splits, tmp_path / "switched", switched)
    a, b = metrics(tmp_path / "plain"), metrics(tmp_path / "switched")
    assert [r["step"] for r in a] == [r["step"] for r in b] and len(a) > 8
    assert [r.get("loss") for r in b if "loss" in r] == pytest.approx([r["loss"] for r in a if "loss" in r], abs=1e-5)
    assert [r["val_loss"] for r in b if "val_loss" in r] == pytest.approx(
        [r["val_loss"] for r in a if "val_loss" in r], abs=1e-5)


def test_per_layer_compile_follows_the_eager_trainer(byte_splits, config_file, tmp_path, monkeypatch):
    """compile: layers (each decoder layer compiled in place): the eager run's losses within 1e-5 over 5 steps,
    the saved weights keep their names, inductor's cache is the configured compile_cache_dir, and the
    validation passes (no-grad, another batch) run eagerly: dynamo captures the training graph only."""
    from torch._dynamo.utils import counters
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)        # restored after the test
    run("parent", 640, byte_splits, tmp_path / "eager", config_file)
    torch._dynamo.reset()
    counters.clear()
    run("parent", 640, byte_splits, tmp_path / "compiled",
        switched_config(config_file, tmp_path, "c", compile="layers", compile_cache_dir=str(tmp_path / "inductor"),
                        eval_windows=3))
    assert counters["stats"]["unique_graphs"] == 1           # one graph for every layer; none for validation
    assert any((tmp_path / "inductor").iterdir())
    eager, compiled = metrics(tmp_path / "eager"), metrics(tmp_path / "compiled")
    assert len([r for r in eager if "loss" in r]) == 5
    assert [r["loss"] for r in compiled if "loss" in r] == pytest.approx([r["loss"] for r in eager if "loss" in r],
                                                                         abs=1e-5)
    assert load_file(str(tmp_path / "compiled" / "model.safetensors")).keys() == \
        load_file(str(tmp_path / "eager" / "model.safetensors")).keys()


def test_a_run_below_compile_min_tokens_trains_eagerly(byte_splits, config_file, tmp_path, monkeypatch):
    """train.compile_min_tokens: a shorter run compiles nothing (dynamo captures no graph, inductor's cache is
    not set up, run_options say eager), a run of at least that many tokens compiles; both are eager's to 1e-5."""
    from torch._dynamo.utils import counters
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = switched_config(config_file, tmp_path, "c", compile="layers", compile_min_tokens="1k",
                             compile_cache_dir=str(tmp_path / "inductor"))
    assert train.compile_mode(validate_config(yaml.safe_load(config.read_text()))["train"], 999) is False
    torch._dynamo.reset()
    counters.clear()
    short = run("parent", 640, byte_splits, tmp_path / "short", config)
    assert short["run_options"]["compile"] is False and short["run_options"]["compile_min_tokens"] == "1k"
    assert counters["stats"]["unique_graphs"] == 0 and not (tmp_path / "inductor").exists()
    long = run("parent", 1024, byte_splits, tmp_path / "long", config)
    assert long["run_options"]["compile"] == "layers" and counters["stats"]["unique_graphs"] == 1
    eager = run("parent", 1024, byte_splits, tmp_path / "eager", config_file)
    assert long["final_val_loss"] == pytest.approx(eager["final_val_loss"], abs=1e-5)


def test_gpu_benchmark_and_check_run_at_toy_size_on_the_cpu(tmp_path, monkeypatch):
    """benchmarks/gpu_train.py (the trainer's step) and the parts of benchmarks/gpu_check.sh at toy size: the
    MFU counts attention (6N + 12 L H Q T), SparseGPT prunes both layers, lm-eval scores the generated tasks,
    and the estimator configs are valid study configs of the parts' shapes."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    import gpu_check
    import gpu_train

    out = tmp_path / "train.json"
    assert gpu_train.main(["--size", "tiny", "--device", "cpu", "--seq-len", "32", "--micro-batch", "2", "--accum", "2",
                           "--steps", "1", "--warmup", "1", "--precision", "fp32", "--loss-chunk-tokens", "16",
                           "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    f = result["flops_per_token"]
    assert f["attention"] == 12 * 2 * 4 * 16 * 32 and f["per_token"] == f["six_n"] + f["attention"]
    assert f["N_matmul_params"] == 2 * (64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 128) + 512 * 64
    assert result["mfu"] > result["mfu_6n"] > 0 and result["tokens_per_step"] == 128
    plan = gpu_check.plan(True, "cpu")
    pruned = gpu_check.prune_part(plan, "cpu")
    assert pruned["layers"] == 2 and pruned["sparsity"] == pytest.approx(0.5)
    scored = gpu_check.evaluate_part(plan, "cpu")
    assert set(scored["metrics"]) == {"lmeval/heldout_mc", "lmeval/heldout_cloze", "lmeval/avg"}
    assert scored["n_samples"] == {"heldout_mc": 8, "heldout_cloze": 8}
    configs = gpu_check.estimator_configs(gpu_check.plan(False, "cuda"), tmp_path)
    from pvs.config import load_config
    train_cfg, prune_cfg = load_config(configs["train"][0]), load_config(configs["prune"][0])
    assert train_cfg["parent"]["arch"]["hidden_size"] == 2048 and train_cfg["train"]["micro_batch_size"] == 2
    assert prune_cfg["prune"]["calib_windows"] == 128 and prune_cfg["prune"]["calib_seq_len"] == 8192
    assert prune_cfg["parent"]["arch"]["num_hidden_layers"] == 2
    if importlib.util.find_spec("pvs.memory") is None:
        assert gpu_check.estimate(plan, tmp_path, sys.executable)["train"]["estimate"] == "no estimate"
