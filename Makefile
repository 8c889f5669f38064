# `make demo` and `make test` each create .venv when missing and are quick once it is set up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export OMP_NUM_THREADS ?= 2

.PHONY: demo test venv bench clean

venv: $(STAMP)

# torch is pinned to the exact CPU wheel on these machines' disk *before* the package, so the
# package's torch range is already satisfied and pip never pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,metrics,train]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hiar demo

test: $(STAMP)
	$(BIN)/python -m pytest -x tests

bench: $(STAMP)
	$(BIN)/python benchmarks/model_forward.py
	$(BIN)/python benchmarks/sampling.py
	$(BIN)/python benchmarks/training.py

clean:
	rm -rf $(VENV) outputs
