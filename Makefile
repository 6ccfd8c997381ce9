# One-command entry points. `make demo` and `make test` each set everything up first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= data
RUNS   ?= runs

.PHONY: setup demo test test-fast clean

# Creates the virtual environment and installs noisyflow (editable) with its pinned torch/torchvision pair.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

DEMO := $(DATA)/cifar10-demo/manifest.json

# Shards of the shipped CIFAR-10 subset (made once; `make clean` or --force to redo).
$(DEMO): | setup
	$(PY) tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out $(DATA) \
		--label-set sym-0.40-s0 --label-set cifar10n-worse --cifar-n tools/demo/cifar10n-demo.npz

# The main job: a short CPU training run on the demo shards with 40 % symmetric noise, ending in a
# printed result table. Each call is a new run directory (runs/demo-<time>).
demo: setup $(DEMO)
	$(PY) training/run.py --config training/configs/demo_cpu.yaml data.root=$(DATA) out_dir=$(RUNS) \
		run_name=demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(RUNS)
