# Two commands set everything up: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pair that imports on the reference machine (CPU or CUDA build from the local wheel cache).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# Every package's version as tested, so a fresh machine installs what passed (`make constraints` writes it).
CONSTRAINTS := constraints.txt
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: venv constraints data demo test test-faults clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(CONSTRAINTS) $(TORCH_PINS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

# Re-pin $(CONSTRAINTS) to what .venv holds now: run it once `make test` passes after a dependency change.
constraints:
	test -x $(BIN)/pip
	{ echo "# The versions 'make venv' installs (pip install -c $(CONSTRAINTS)): every package of the .venv that"; \
	  echo "# 'make test' passed in (Python $$($(BIN)/python -c 'import platform; print(platform.python_version())')," \
	       "$$(uname -sm)), as 'pip freeze --exclude-editable' lists them."; \
	  echo "# Written by 'make constraints'; do not edit by hand."; \
	  $(BIN)/pip freeze --exclude-editable; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)

# Real offline data: Debian's Fashion-MNIST package (the embedded default).
data:
	@if [ -f $(FMNIST) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not found at /usr/share/datasets/fashion-mnist."; \
		echo "Install it with 'apt-get install dataset-fashion-mnist' or pass --root DIR holding the IDX .gz files."; \
		exit 1; \
	fi

demo: venv data
	$(BIN)/rgm demo

test: venv data
	$(BIN)/python -m pytest -q

# Nightly-style: every fault-injection test, the long variants too (README "What survives what").
test-faults: venv data
	$(BIN)/python -m pytest -q -m "faults or faults_long" tests/test_faults_driver.py tests/test_faults_node.py \
		tests/test_faults_disk.py

clean:
	rm -rf runs mlflow.db .pytest_cache
