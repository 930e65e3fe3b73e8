# The two set-up commands: `make repro` (venv, pinned deps, data, the default experiment)
# and `make test`. Everything runs from the project's own virtual environment.
VENV ?= .venv
PYTHON := $(abspath $(VENV))/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: repro test venv plots-template rounds paper replicates bench clean

# The page `dvc plots show` fills (.dvc/config plots.html_template), with vega, vega-lite and vega-embed
# inlined from pinned npm packages, so plots render without internet; DVC's own page needs a CDN.
PLOTS_TEMPLATE := .dvc/plots_offline.html

repro: $(VENV)/.installed $(PLOTS_TEMPLATE)
	dvc repro

# One worker per core; a test file stays on one worker, so a module's DVC repository is built once.
# Files go to the workers in collection order, the slowest first (tests/conftest.py SLOWEST_FILES).
test: $(VENV)/.installed $(PLOTS_TEMPLATE)
	$(PYTHON) -m pytest -q -n logical --dist loadfile --no-loadscope-reorder

venv: $(VENV)/.installed

plots-template: $(PLOTS_TEMPLATE)

# Standard library only: it needs no venv.
$(PLOTS_TEMPLATE): tools/plots_template.py
	python3 tools/plots_template.py $@

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Set the number of pruning rounds in params.yaml: `make rounds N=12`.
rounds: $(VENV)/.installed
	$(PYTHON) -m lottery rounds $(N)

# The paper's LeNet-300-100 schedule (Frankle & Carbin 2019) as the experiment `paper`: 15 rounds down
# to 3.5% of the weights, 50k iterations each, the validation loss every 100 iterations. That grain
# (a tenth of an epoch at batch 60) lets the early-stop iteration show how fast a ticket learns: in the
# run in docs/science-and-benchmarks.md the dense net stopped at 3,100 and the tickets from 41% down at
# 1,900-2,000; an earlier run at a grain of 1,000 read 2,000-3,000 in every round.
# Rounds that never ran have no outputs in dvc.lock, and the checkout `dvc exp run` starts with warns
# once for each of their outputs ("No file hash info found for ... It won't be created"): expected,
# so this target drops those lines and nothing else.
PAPER_ROUNDS ?= 15
PAPER_ITERATIONS ?= 50000
PAPER_EVAL_EVERY ?= 100
paper: SHELL := /bin/bash
paper: $(VENV)/.installed $(PLOTS_TEMPLATE)
	$(PYTHON) -m lottery rounds $(PAPER_ROUNDS)
	set -o pipefail; dvc exp run -n paper -S train.iterations=$(PAPER_ITERATIONS) -S train.eval_every=$(PAPER_EVAL_EVERY) 2>&1 \
		| { grep --line-buffered -v "^WARNING: No file hash info found for '.*'. It won't be created.$$" || true; }

# Replicates: one DVC experiment per seed, then the aggregate over those seeds: `make replicates SEEDS="0 1 2"`.
# WORKERS=N queues the experiments and runs the queue N at a time, each in a temporary copy of the project
# that logs to this project's MLflow store; `--run-all` exits 0 when one fails, so the aggregate checks
# that every seed has its lineage. `lottery queue start` starts DVC's N workers together, each with
# its own GPUs (CUDA_VISIBLE_DEVICES: G // N each when G >= N, else the G in turn) and cores / N torch
# threads unless OMP_NUM_THREADS is set; then `dvc exp run --run-all` follows the queue. GPUS="0,1" names
# the GPUs to share out (default: CUDA_VISIBLE_DEVICES' list when set, else every GPU torch finds).
SEEDS ?= 0 1
WORKERS ?=
GPUS ?=
replicates: $(VENV)/.installed
ifeq ($(WORKERS),)
	for seed in $(SEEDS); do dvc exp run -S seed=$$seed || exit 1; done
else
	@case "$(WORKERS)" in *[!0-9]*|0*) echo "error: WORKERS=$(WORKERS): must be a whole number, at least 1" >&2; exit 1;; esac
	for seed in $(SEEDS); do dvc exp run --queue -S seed=$$seed || exit 1; done
	$(PYTHON) -m lottery queue start --workers $(WORKERS) $(if $(GPUS),--gpus '$(GPUS)')
	dvc exp run --run-all --jobs $(WORKERS)
endif
	$(PYTHON) -m lottery replicates --seeds $(SEEDS)

bench: $(VENV)/.installed
	$(PYTHON) tools/bench_data.py
	$(PYTHON) bench/train_speed.py
	$(PYTHON) bench/repro_time.py
	$(PYTHON) bench/lineage_trust.py
	$(PYTHON) bench/lth_mnist.py
	$(PYTHON) bench/structured_fmnist.py
	$(PYTHON) bench/rethinking_lr.py
	$(PYTHON) bench/early_bird_fmnist.py
	$(PYTHON) bench/supermask_mnist.py
	$(PYTHON) bench/supermask_mnist.py --signs none --widths 1
	$(PYTHON) bench/factorized.py
	$(PYTHON) bench/compare_methods.py

clean:
	rm -rf models metrics/rounds metrics/compression plots/curves mlflow.db mlruns .lottery
