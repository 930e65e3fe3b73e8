# The two set-up commands: `make repro` (venv, pinned deps, data, the default experiment)
# and `make test`. Everything runs from the project's own virtual environment.
VENV ?= .venv
PYTHON := $(abspath $(VENV))/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: repro test venv rounds replicates bench clean

repro: $(VENV)/.installed
	dvc repro

# One worker per core; a test file stays on one worker, so a module's DVC repository is built once.
test: $(VENV)/.installed
	$(PYTHON) -m pytest -q -n logical --dist loadfile

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Set the number of pruning rounds in params.yaml: `make rounds N=12`.
rounds: $(VENV)/.installed
	$(PYTHON) -m lottery rounds $(N)

# Replicates: one DVC experiment per seed, then the aggregate over seeds: `make replicates SEEDS="0 1 2"`.
SEEDS ?= 0 1
replicates: $(VENV)/.installed
	for seed in $(SEEDS); do dvc exp run -S seed=$$seed || exit 1; done
	$(PYTHON) -m lottery replicates

bench: $(VENV)/.installed
	$(PYTHON) bench/train_speed.py
	$(PYTHON) bench/repro_time.py
	$(PYTHON) bench/lineage_trust.py
	$(PYTHON) bench/lth_mnist.py
	$(PYTHON) bench/structured_fmnist.py
	$(PYTHON) bench/early_bird_fmnist.py
	$(PYTHON) bench/supermask_mnist.py
	$(PYTHON) bench/supermask_mnist.py --signs none --widths 1

clean:
	rm -rf models metrics/rounds metrics/compression plots/curves mlflow.db mlruns
