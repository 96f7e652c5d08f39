# Remoe: `make test` and `make demo` install what is missing by themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo

.PHONY: install system-deps test lint demo protos bench-engine bench-dispatch bench-cold-start bench-predictor bench-scheduler clean help

help:
	@echo "make install       create .venv and install remoe with dev extras (idempotent)"
	@echo "make test          install if needed, then run the whole test suite"
	@echo "make lint          ruff check + format check"
	@echo "make demo          trained tiny MoE -> split -> verify -> remoe up -> generate -> status -> shut down"
	@echo "make protos        regenerate remoe/proto from protos/remoe/v1"
	@echo "make bench-engine  LocalEngine vs transformers generate, tokens/s"
	@echo "make bench-dispatch  gRPC fan-out cost; TTFT/TPOT of remoe up vs LocalEngine vs transformers"
	@echo "make bench-cold-start  function cold start (lazy vs whole checkpoint); cold TTFT with/without pre-warm"
	@echo "make bench-predictor   SPS forecast accuracy (trained and random-init model) and predict latency"
	@echo "make bench-scheduler   optimality gap, planning time, predicted vs measured latency, cost vs baselines"

install: $(STAMP)

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Debian: apt-get install python3.11 python3.11-venv)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

# Debian packages: redis-server (the predictor's prior) and text for the prompt corpus.
system-deps:
	@scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check remoe tests bench
	$(BIN)/ruff format --check remoe tests bench

demo: $(STAMP) system-deps
	scripts/demo.sh

protos: $(STAMP)
	$(BIN)/python -m remoe.proto.generate

bench-engine: $(STAMP)
	$(BIN)/python bench/engine.py

bench-dispatch: $(STAMP)
	$(BIN)/python bench/dispatch.py

bench-cold-start: $(STAMP)
	$(BIN)/python bench/cold_start.py

# Builds the corpus and trains the model first when data/ lacks them (about 20 minutes on 2 cores).
bench-predictor: $(STAMP) system-deps
	scripts/bench-predictor.sh

# Needs the corpus and the trained tiny model (make bench-predictor builds them); about 20 minutes.
bench-scheduler: $(STAMP) system-deps
	$(BIN)/python bench/scheduler.py
	$(BIN)/python bench/scheduler_accuracy.py
	$(BIN)/python bench/scheduler_costs.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
