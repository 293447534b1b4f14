"""Import an existing Hugging Face Llama checkpoint as the study's parent (instead of pretraining one).

    python -m pvs.parent --pretrained meta-llama/Llama-3.1-8B --out results/models/parent
    python -m pvs.parent --pretrained /path/to/local/llama --out results/models/parent

A hub id needs network access and, for gated models, ``HF_TOKEN`` in the environment (never in a file).
The checkpoint is re-saved as fp32 safetensors with its tokenizer, so every later stage reads one format.
Only Llama-architecture models are accepted: the pruning methods slice Llama modules by name.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from transformers import AutoConfig

from pvs.modeling import count_params, load_model, load_tokenizer, save_model, shape_of, write_json
from pvs.versions import library_versions


def import_parent(source: str, out: str, dtype: torch.dtype = torch.float32) -> dict:
    token = os.environ.get("HF_TOKEN")
    config = AutoConfig.from_pretrained(source, token=token)
    if config.model_type != "llama":
        raise ValueError(f"parent.pretrained = {source!r} is a {config.model_type!r} model; only 'llama' is supported")
    start = time.time()
    model = load_model(source, dtype=dtype)
    save_model(model, out, load_tokenizer(source))
    meta = {"source": source, "params": count_params(model), "shape": shape_of(model.config),
            "seconds": time.time() - start, "versions": library_versions()}
    write_json(os.path.join(out, "import_meta.json"), meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pvs.parent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrained", required=True, help="HF hub id or local directory of a Llama checkpoint")
    parser.add_argument("--out", required=True, help="output directory (HF format, safetensors)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    args = parser.parse_args(argv)
    meta = import_parent(args.pretrained, args.out, getattr(torch, args.dtype))
    print(f"[parent] imported {args.pretrained}: {meta['params']['total']:,} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
