#!/usr/bin/env bash
# The GPU check of issue 11 on one H100/H200-class GPU, in under 10 minutes; writes one JSON.
#
#   benchmarks/gpu_check.sh                                   # -> benchmarks/results/gpu_check.json
#   benchmarks/gpu_check.sh --tiny --device cpu --out /tmp/gpu_check.json     # toy sizes, a logic check
#
# Parts (benchmarks/gpu_check.py has the details): the trainer's step on a ~1.2B child in bf16 for 20
# steps, plain and with compile: layers + chunked loss (tokens/s, MFU with attention FLOPs, peak memory);
# SparseGPT on two decoder layers of Llama-3.1-8B's shape with 128 x 8192 calibration tokens (seconds,
# peak memory); lm-eval on the GPU over generated local tasks. Peak memory is set against
# `python -m pvs.memory` when that module exists ("no estimate" otherwise). Each part has its own time
# limit (530 s in all); the whole script is cut at 600 s. Exit status 1 when a part failed (see "errors").
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
exec timeout 600 "$PYTHON" benchmarks/gpu_check.py "$@"
