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

# The main job: CE and SELC in the CPU memorisation regime on the shipped CIFAR-10 subset with 40 %
# symmetric noise (converted once into $(DATA)), a side-by-side table and a plot of both test-accuracy
# curves. Each call is a new run directory (runs/demo-<time>).
demo: setup
	PY=$(PY) tools/demo.sh $(DATA) $(RUNS)/demo-$$(date +%Y%m%d-%H%M%S)

test: setup
	$(PY) -m pytest -q

# Everything not marked slow (tests over 10 s are marked @pytest.mark.slow).
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DATA) $(RUNS)
