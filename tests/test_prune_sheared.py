"""Sheared-LLaMA: hard-concrete math, the Lagrangian, exact fold-and-cut, target shapes, and the learned child.

Runs on the session's tiny trained Llama (10 layers, 4 query / 2 KV heads, head_dim 16) and its token files.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from pvs.modeling import load_model, save_model, shape_of
from pvs.prune import sheared
from pvs.prune.common import calibration_windows, lm_loss
from pvs.prune.shapes import parent_shape
from pvs.prune.sheared_cut import cut_model, fold_masks_, plan_from_masks, random_plan
from pvs.prune.sheared_masks import BETA, GAMMA, ZETA, HardConcrete, ShearingMasks, mask_specs, masked

# ~195 mask-learning steps of 2 x 64 tokens: enough for the Lagrangian to settle, a few seconds on one core
OPTIONS = {"seed": 0, "device": "cpu", "mask_tokens": 25_000, "batch_size": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for the whole module, mask learning included (2 threads on 2 shared cores thrash)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def calib(byte_splits):
    return calibration_windows(byte_splits, windows=320, seq_len=64, seed=0)


@pytest.fixture(scope="module")
def result(tiny_trained_model, calib):
    return sheared.prune(load_model(tiny_trained_model), calib, 0.5, OPTIONS)


# ---------------------------------------------------------------- hard-concrete machinery
def test_hard_concrete_probabilities_samples_and_binarization():
    gate = HardConcrete(rows=1, size=4, target=2)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([[-3.0, 0.0, 2.0, 1.0]]))
    # P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta)); at log_alpha = 0 that is sigmoid(1.5986) = 0.8318
    p = gate.prob_nonzero()
    assert p[0, 1].item() == pytest.approx(0.8318, abs=1e-4)
    assert torch.allclose(p, torch.sigmoid(gate.log_alpha - BETA * math.log(-GAMMA / ZETA)))
    assert gate.expected_kept().item() == pytest.approx(p.sum().item())
    # Monte Carlo: samples lie in [0, 1], hit 0 and 1 exactly, and are nonzero with probability p
    generator = torch.Generator().manual_seed(0)
    draws = torch.cat([gate.sample(generator) for _ in range(20_000)])
    assert draws.min() == 0 and draws.max() == 1
    assert torch.allclose((draws != 0).float().mean(0), p[0].detach(), atol=0.01)
    assert ((draws > 0) & (draws < 1)).any()
    # reparameterized: gradients reach log_alpha
    gate.sample(generator).sum().backward()
    assert gate.log_alpha.grad is not None and gate.log_alpha.grad.abs().sum() > 0
    # binarization keeps exactly `target` gates (the highest log-alphas), valued sigmoid(log_alpha / beta * 0.8)
    assert gate.keep_indices().tolist() == [[2, 3]]
    z = gate.deterministic()
    expected = torch.sigmoid(torch.tensor([2.0, 1.0]) / BETA * 0.8)
    assert z[0, :2].tolist() == [0.0, 0.0] and torch.allclose(z[0, 2:], expected)


def test_lagrangian_gap_ramp_and_gradients():
    shape = {"hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 2}
    target = {**shape, "hidden_size": 6, "intermediate_size": 6}
    masks = ShearingMasks(shape, target)
    assert set(masks.masks) == {"hidden", "intermediate"}  # unchanged structures are not masked
    with torch.no_grad():
        masks.masks["hidden"].log_alpha.fill_(0.0)  # E[kept] = 8 * 0.8318
        for p in masks.lambdas.values():
            p.fill_(1.0)
    gap_start = masks.gaps(0.0, warmup=0.5)["hidden"].item()
    gap_mid = masks.gaps(0.25, warmup=0.5)["hidden"].item()
    gap_end = masks.gaps(0.9, warmup=0.5)["hidden"].item()
    assert gap_start == pytest.approx((8 * 0.8318 - 8) / 8, abs=1e-4)
    assert gap_mid == pytest.approx((8 * 0.8318 - 7) / 8, abs=1e-4)  # target ramps 8 -> 6 linearly
    assert gap_end == pytest.approx((8 * 0.8318 - 6) / 8, abs=1e-4)
    masks.lagrangian(1.0, warmup=0.5).backward()
    assert masks.lambdas["hidden_lambda1"].grad.item() == pytest.approx(gap_end, abs=1e-5)
    assert masks.lambdas["hidden_lambda2"].grad.item() == pytest.approx(gap_end ** 2, abs=1e-5)
    # above target: the Lagrangian pushes log-alpha down (fewer kept) when minimized
    assert (masks.masks["hidden"].log_alpha.grad > 0).all()


def test_mask_specs_gqa_choices_and_rejections():
    p = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 10, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}
    fewer_groups = mask_specs(p, {**p, "num_attention_heads": 2, "num_key_value_heads": 1}, False)
    assert fewer_groups == {"kv_group": (10, 2, 1)}
    fewer_per_group = mask_specs(p, {**p, "num_attention_heads": 2, "num_hidden_layers": 8}, False)
    assert fewer_per_group == {"head": (20, 2, 1), "layer": (1, 10, 8)}
    assert mask_specs(p, p, True) == {"layer": (1, 10, 10)}
    for bad in ({"head_dim": 8}, {"hidden_size": 65}, {"num_attention_heads": 3}):
        with pytest.raises(ValueError):
            mask_specs(p, {**p, **bad}, False)


# ---------------------------------------------------------------- hooks, folding and cutting are exact
def test_open_masks_leave_the_parent_unchanged(tiny_trained_model):
    model = load_model(tiny_trained_model).eval()
    parent = parent_shape(model.config)
    masks = ShearingMasks(parent, {**parent, "hidden_size": 32, "intermediate_size": 96, "num_attention_heads": 2})
    masks.z = {name: torch.ones_like(m.log_alpha) for name, m in masks.masks.items()}
    prompt = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    with torch.no_grad():
        reference = model(prompt).logits
        with masked(model, masks):
            torch.testing.assert_close(model(prompt).logits, reference)
        torch.testing.assert_close(model(prompt).logits, reference)  # hooks removed


def test_fold_and_cut_reproduce_the_masked_parent(tiny_trained_model):
    """Per-query-head masks (KV heads kept), layer masks and hidden/MLP masks with random log-alphas."""
    model = load_model(tiny_trained_model).eval()
    parent = parent_shape(model.config)
    target = {**parent, "hidden_size": 40, "intermediate_size": 120, "num_hidden_layers": 7,
              "num_attention_heads": 2}
    masks = ShearingMasks(parent, target, prune_layers=True)
    with torch.no_grad():
        for mask in masks.masks.values():
            mask.log_alpha.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(1))
    masks.fix_()
    prompt = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11, 60, 61]])
    with torch.no_grad(), masked(model, masks):
        expected = model(prompt).logits
    plan = plan_from_masks(masks)
    fold_masks_(model, masks)
    child = cut_model(model, plan).eval()
    assert shape_of(child.config) == {**target, "vocab_size": 512}
    with torch.no_grad():
        torch.testing.assert_close(child(prompt).logits, expected, rtol=1e-4, atol=1e-4)
    # each surviving query head still reads its own KV head: every group keeps one of its two heads
    assert all(sorted(h // 2 for h in row) == [0, 1] for row in plan.q_heads.tolist())


# ---------------------------------------------------------------- the learned child
def test_child_has_exactly_the_target_shape_reloads_and_generates(result, tiny_trained_model, tmp_path):
    parent = load_model(tiny_trained_model)
    target = sheared.target_shape(0.5, parent.config)
    child = result.model
    assert result.info["target_shape"] == target
    assert shape_of(child.config) == {**target, "vocab_size": 512}
    hd, d = target["head_dim"], target["hidden_size"]
    for layer in child.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        assert attn.q_proj.weight.shape == (target["num_attention_heads"] * hd, d)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (target["num_key_value_heads"] * hd, d)
        assert mlp.down_proj.weight.shape == (d, target["intermediate_size"])
        assert layer.input_layernorm.weight.shape == (d,)
    assert child.lm_head.weight.shape == (512, d) and child.model.embed_tokens.weight.shape == (512, d)
    save_model(child, tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert reloaded.config.head_dim == hd
    prompt = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 11]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(prompt).logits, child(prompt).logits)
        kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
        cached = reloaded.generate(prompt, use_cache=True, **kw)
        uncached = reloaded.generate(prompt, use_cache=False, **kw)
    assert cached.shape[1] == prompt.shape[1] + 12 and torch.equal(cached, uncached)


def test_binarized_masks_keep_exactly_the_target_counts(result):
    info, target = result.info, result.info["target_shape"]
    for structure in info["masked_structures"].values():
        assert structure["target"] < structure["size"]
    assert len(info["kept"]["hidden"]) == target["hidden_size"]
    assert len(info["kept"]["layers"]) == target["num_hidden_layers"]
    assert all(len(row) == target["num_key_value_heads"] for row in info["kept"]["kv_heads"])
    assert all(len(row) == target["num_attention_heads"] for row in info["kept"]["q_heads"])
    # the cut child computes what the masked parent computed with the binarized masks
    assert info["child_calib_loss"] == pytest.approx(info["masked_calib_loss"], abs=1e-4)


def test_lagrangian_drives_the_expected_shape_to_the_target(result):
    history = result.info["history"]
    first, last = history[0], history[-1]
    assert last["gap"] < 0.15 * first["gap"]
    for name, structure in result.info["masked_structures"].items():
        assert last["expected"][name] == pytest.approx(structure["target"], rel=0.15, abs=0.3)
    assert any(abs(v) > 0 for v in last["lambdas"].values())


def test_mask_learning_tokens_are_recorded(result, calib):
    info = result.info
    steps = OPTIONS["mask_tokens"] // (OPTIONS["batch_size"] * 64)
    assert info["mask_learning_steps"] == steps
    assert info["mask_learning_tokens"] == steps * OPTIONS["batch_size"] * 64 <= OPTIONS["mask_tokens"]
    assert info["mask_learning_unique_tokens"] == calib.numel()


def test_sheared_child_beats_random_structured_pruning(result, tiny_trained_model, calib, val):
    random_child = sheared.prune_random(load_model(tiny_trained_model), calib, 0.5, OPTIONS).model
    assert shape_of(random_child.config) == shape_of(result.model.config)
    assert lm_loss(result.model, val) < lm_loss(random_child, val) - 0.1


def test_random_plan_is_seeded_and_has_the_target_counts():
    p = {"hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 10, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}
    t = {**p, "hidden_size": 48, "intermediate_size": 100, "num_hidden_layers": 9, "num_attention_heads": 2}
    a, b = (random_plan(p, t, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.hidden, b.hidden) and a.layers == b.layers and torch.equal(a.q_heads, b.q_heads)
    assert a.shape(16) == t


def test_mask_windows_and_batches_cycle_in_seeded_order():
    calib = torch.arange(4 * 16).reshape(4, 16)
    windows = sheared.mask_windows(calib, 8)
    assert windows.shape == (8, 8) and torch.equal(windows[1], torch.arange(8, 16))
    with pytest.raises(ValueError, match="prune.sheared_llama.seq_len"):
        sheared.mask_windows(calib, 32)
    seen = torch.cat(list(sheared.batches(windows, 3, 8, seed=0)))  # 24 windows = 3 passes over 8
    assert seen.shape == (24, 8)
    assert sorted(seen[:, 0].tolist()) == sorted(windows[:, 0].tolist() * 3)
