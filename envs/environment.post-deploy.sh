#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda environment (envs/environment.yaml): install the package
# pvs from the checkout the workflow runs from (the Snakefile sets PVS_REPO to its directory).
set -euo pipefail
: "${PVS_REPO:?PVS_REPO must name the workflow checkout (the Snakefile sets it)}"
python -m pip install --no-deps --no-build-isolation -e "$PVS_REPO"
