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

# The main job: shards from the shipped CIFAR-10 subset with 40 % symmetric noise, a short CPU training run,
# and a printed result table.
demo: setup
	$(PY) tools/make_shards.py --source tools/demo/cifar10-demo.tar.gz --name cifar10-demo --out $(DATA) \
		--label-set sym-0.40-s0 --cifar-n tools/demo/cifar10n-demo.npz --label-set cifar10n-worse --skip-existing
	$(PY) training/run.py --config training/configs/demo_cpu.yaml out_dir=$(RUNS)

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DATA) $(RUNS)
