# Remoe: `make test` and `make demo` install what is missing by themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .cache/demo

.PHONY: install system-deps test test-unit lint demo protos bench-engine bench-dispatch bench-cold-start bench-predictor bench-scheduler \
	bench bench-quick bench-quantized-kernels bench-quantization bench-evaluation bench-hardware bench-load bench-http images images-cuda compose-up compose-down kind-up kind-down clean help

help:
	@echo "make install       create .venv and install remoe with dev extras (idempotent)"
	@echo "make test          install if needed, then run the whole test suite"
	@echo "make test-unit     the tests that start no process and run no model end to end (under a minute)"
	@echo "make lint          ruff check + format check"
	@echo "make demo          trained tiny MoE -> split -> verify -> remoe up -> generate -> status -> shut down"
	@echo "make protos        regenerate remoe/proto from protos/remoe/v1"
	@echo "make bench-engine  LocalEngine vs transformers generate, tokens/s"
	@echo "make bench-dispatch  gRPC fan-out cost; TTFT/TPOT of remoe up vs LocalEngine vs transformers"
	@echo "make bench-cold-start  function cold start (fresh process, fork, pool); a cold cluster's first token, overlap"
	@echo "make bench-predictor   SPS forecast accuracy (trained and random-init model) and predict latency"
	@echo "make bench-scheduler   optimality gap, planning time, predicted vs measured latency, cost vs baselines"
	@echo "make bench-load    concurrent clients with a function killed mid-run: exact tokens, errors, ledger"
	@echo "make bench-http    the HTTP API's cost: the openai client vs the gRPC SDK on the same cluster"
	@echo "make bench-quantized-kernels  int8/int4 CPU expert kernels vs bf16 at DeepSeek-V2-Lite's shape; without AVX-512, kept vs widened"
	@echo "make bench-quantization   int8/int4 experts: greedy agreement, KL, perplexity, lm-eval accuracy, speed"
	@echo "make bench-quick   the headline comparison on the tiny model + hardware limits + docs/results/README.md (<10 min)"
	@echo "make bench         every bench, then docs/results/README.md (about two hours on 2 cores)"
	@echo "make images        build the remoe/* container images (needs a Docker engine); images-cuda: the CUDA backbone"
	@echo "make compose-up    the docker-compose local cluster (GPU=1: the CUDA backbone); compose-down stops it"
	@echo "make kind-up       a kind cluster with Knative Serving, Remoe deployed on it; kind-down deletes it"

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

# Tests marked `processes` (they start services, clusters, functions or CLIs) or `slow` (a model run end to end
# per architecture) are left out; the rest check the library's logic in under a minute.
test-unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m "not processes and not slow"

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

bench-quantized-kernels: $(STAMP)
	$(BIN)/python bench/quantized_kernels.py
	$(BIN)/python bench/quantized_fallback.py

# int8/int4 experts' quality (agreement, KL, perplexity, lm-eval accuracy), bytes and speed; needs the trained
# tiny model (make bench-predictor builds it); about 20 minutes.
bench-quantization: $(STAMP)
	$(BIN)/python bench/quantization.py

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

bench-hardware: $(STAMP)
	$(BIN)/python bench/hardware_limit.py

# Concurrent clients through remoe up with functions, a function replica killed mid-run, tokens and ledger checked.
bench-load: $(STAMP) system-deps
	$(BIN)/python -m bench.load

# The OpenAI-compatible HTTP API against the gRPC SDK, same cluster, same run.
bench-http: $(STAMP)
	$(BIN)/python -m bench.http_api

# CPU, GPU, MIX, Fetch, Remoe, Remoe-oracle side by side on tiny, medium and the paper models' shapes.
bench-evaluation: $(STAMP) system-deps
	$(BIN)/python -m bench.evaluation

bench-quick: $(STAMP) system-deps
	$(BIN)/python bench/hardware_limit.py --quick
	$(BIN)/python -m bench.evaluation --quick
	$(BIN)/python bench/results_index.py

# Everything, then the index. The GPU bench (bench/gpu/run.sh) skips itself without a GPU.
bench: bench-engine bench-dispatch bench-cold-start bench-predictor bench-scheduler bench-hardware bench-evaluation bench-load bench-http
	bench/gpu/run.sh .cache/bench/gpu   # docs/results/gpu.md holds the last run on a GPU machine
	$(BIN)/python bench/results_index.py

VERSION := 0.1.0
SERVICE_IMAGES := gateway backbone predictor scheduler expert tools
# Each image is a target of docker/Dockerfile (they share its build stage, so the later ones take seconds).
# torch from pip's own index, or from TORCH_INDEX_URL when given (make images TORCH_INDEX_URL=...: PyTorch's CPU
# wheels, for smaller images).
TORCH_INDEX_ARG := $(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL))
images:
	@for target in $(SERVICE_IMAGES); do \
	  echo "--- remoe/$$target:$(VERSION)"; \
	  docker build $(TORCH_INDEX_ARG) -f docker/Dockerfile --target $$target -t remoe/$$target:$(VERSION) . || exit 1; \
	done
	docker build $(TORCH_INDEX_ARG) -f docker/Dockerfile --target function -t remoe/expert-function:$(VERSION) .

# The backbone with the CUDA build of torch that pip's own index serves (the host needs an NVIDIA driver and
# container toolkit).
images-cuda:
	docker build -f docker/Dockerfile --target backbone -t remoe/backbone-cuda:$(VERSION) .

# docker compose v2 when there is one (it waits for health itself), else Debian's docker-compose (v1).
COMPOSE_V2 := $(shell docker compose version >/dev/null 2>&1 && echo yes)
COMPOSE := $(if $(COMPOSE_V2),docker compose,docker-compose)
COMPOSE_PROFILE := $(if $(GPU),gpu,cpu)

compose-up: images $(if $(GPU),images-cuda)
	COMPOSE_PROFILES=$(COMPOSE_PROFILE) $(COMPOSE) up -d $(if $(COMPOSE_V2),--wait)
	@# compose v1 has no --wait: poll the gateway's health (it is healthy once it and the backbone serve).
	@for i in $$(seq 1 120); do \
	  status=$$(docker inspect -f '{{.State.Health.Status}}' $$($(COMPOSE) ps -q gateway) 2>/dev/null); \
	  [ "$$status" = healthy ] && break; [ $$i = 1 ] && echo "waiting for the gateway to be healthy ..."; sleep 5; \
	done; [ "$$status" = healthy ] || { echo "gateway not healthy after 10 minutes: $(COMPOSE) logs"; exit 1; }
	@echo "gateway on 127.0.0.1:50051 (try: .venv/bin/remoe generate --address 127.0.0.1:50051 Hello); Jaeger UI http://127.0.0.1:16686"

compose-down:
	COMPOSE_PROFILES=cpu,gpu $(COMPOSE) down

kind-up:
	scripts/kind-up.sh

kind-down:
	kind delete cluster --name remoe

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
