# Remoe: `make test` and `make demo` install what is missing by themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo

.PHONY: install test lint demo bench-engine clean help

help:
	@echo "make install       create .venv and install remoe with dev extras (idempotent)"
	@echo "make test          install if needed, then run the whole test suite"
	@echo "make lint          ruff check + format check"
	@echo "make demo          make a tiny model, split it, generate from it, verify it against transformers"
	@echo "make bench-engine  LocalEngine vs transformers generate, tokens/s"

install: $(STAMP)

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Debian: apt-get install python3.11 python3.11-venv)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check remoe tests bench
	$(BIN)/ruff format --check remoe tests bench

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/remoe tiny-model --arch mixtral --layers 4 --experts 8 --out $(DEMO_DIR)/mixtral
	$(BIN)/remoe split $(DEMO_DIR)/mixtral --out $(DEMO_DIR)/mixtral-split
	$(BIN)/remoe inspect $(DEMO_DIR)/mixtral-split
	@echo "--- generate (random weights: the text is noise; what matters is that it is transformers' text)"
	$(BIN)/remoe generate --model $(DEMO_DIR)/mixtral-split --max-new-tokens 24 "The quick brown fox"
	@echo "--- verify: the split under a 2-expert budget against transformers' own generate"
	$(BIN)/remoe verify $(DEMO_DIR)/mixtral --split $(DEMO_DIR)/mixtral-split --expert-budget 200000

bench-engine: $(STAMP)
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
