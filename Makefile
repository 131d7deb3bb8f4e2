# Two commands set everything up: `make demo` and `make test`. Both create/reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch/torchvision pair that imports on the reference machine (CPU or CUDA build from the local wheel cache).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: venv data demo test test-faults clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

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
