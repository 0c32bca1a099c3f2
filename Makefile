# Headrace: `make up` runs the mesh and a sample request; `make test` runs the tests.
# Both install what they need first: the Python venv in .venv, and redis-server
# from Debian/Ubuntu's packages when it is missing. Only the checks need more:
# buf, from npm, in .tools (make proto-tools: check-protos, lint) and promtool,
# Debian's prometheus (make monitoring-tools: check-monitoring); make test has both.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
HEADRACE := $(VENV)/bin/headrace
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch==2.13.0+cpu comes from pip's configured find-links where a wheel is
# on disk; elsewhere: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
PIP_EXTRA := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# buf breaking compares the protos with this git revision.
BUF_AGAINST ?= HEAD~1
PYTEST_ARGS ?=
BENCHMARKS := bench-autoscale bench-overhead bench-token-cost bench-peers bench-engine bench-placement bench-overload bench-gateway bench-connection-limits bench-cache bench-routing bench-batch bench-embeddings bench-failover bench-quant bench-cost
# protoc finds its mypy plugins (protoc-gen-mypy) in the venv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install install-test system-deps proto-tools monitoring-tools lock protos check-protos check-monitoring lint test test-unit up down status bench $(BENCHMARKS) clean

help:
	@echo "make up             install, start the mesh (Redis too if needed), send a sample request"
	@echo "make down           stop the mesh"
	@echo "make test           install, check protos and lint, run every test"
	@echo "make test-unit      the fast unit tests only"
	@echo "make protos         regenerate headrace/v1 from protos/"
	@echo "make lock           regenerate requirements/lock.txt from requirements/direct.txt"
	@echo "make check-monitoring  promtool: Prometheus config, SLO rules and their alert unit tests"
	@echo "make bench          every benchmark (results in bench/results/, table in README.md)"

system-deps:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }

$(VENV)/.installed: requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps $(PIP_EXTRA) -r requirements/lock.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

$(BUF):
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq npm; }
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

# buf (lint and breaking-change checks of protos/): only the proto checks need it.
proto-tools: $(BUF)

install: system-deps $(VENV)/.installed

# requirements/lock.txt from requirements/direct.txt and pyproject's build backend,
# resolved by pip into an empty environment (scripts/lock.py says what is left
# out). The lock's versions are kept; UPGRADE=1 takes the newest that fit.
UPGRADE ?=
lock: $(VENV)/.installed
	$(PY) scripts/lock.py $(if $(UPGRADE),--upgrade,) $(PIP_EXTRA) > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

# The Triton engine's tests run a real Triton server from its own venv
# (pytriton needs numpy<2; vLLM needs numpy>=2).
install-test: install
	PYTHON=$(PYTHON) TORCH_INDEX=$(TORCH_INDEX) HEADRACE_TORCH_INDEX_URL=$(TORCH_INDEX) scripts/install-triton-test-server.sh

protos: $(VENV)/.installed
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		protos/headrace/v1/*.proto 2>/dev/null

# Generated code must match the protos, and the protos must not break what
# BUF_AGAINST shipped (make lint runs buf lint).
check-protos: $(VENV)/.installed proto-tools
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -I protos --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp \
		--mypy_grpc_out=$$tmp protos/headrace/v1/*.proto >/dev/null 2>$$tmp/protoc.log || \
		{ cat $$tmp/protoc.log; exit 1; }; \
	for f in $$tmp/headrace/v1/*; do cmp -s $$f headrace/v1/$$(basename $$f) || \
		{ echo "headrace/v1/$$(basename $$f) differs from protos/: run make protos and commit"; exit 1; }; done && \
	rm -rf $$tmp && echo "generated code matches protos/"
	@if git rev-parse -q --verify "$(BUF_AGAINST):protos" >/dev/null; then \
		$(BUF) breaking protos --against ".git#ref=$(BUF_AGAINST),subdir=protos" && \
		echo "no breaking change against $(BUF_AGAINST)"; \
	else echo "buf breaking: $(BUF_AGAINST) has no protos/ to compare with; skipped"; fi

# The shipped Prometheus config and rules are valid, and every alert fires
# (and stays quiet) as its unit tests say; promtool is Debian's `prometheus`
# (make monitoring-tools: only this check needs it, make up does not).
monitoring-tools:
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq prometheus; }

check-monitoring: monitoring-tools
	promtool check config compose/prometheus/prometheus.yml
	promtool check rules compose/prometheus/rules/*.yml
	promtool test rules compose/prometheus/tests/*.yml

lint: $(VENV)/.installed proto-tools
	$(BUF) lint protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy headrace services bench tests

test: install-test check-protos check-monitoring lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: $(VENV)/.installed
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

up: install
	$(HEADRACE) models prepare
	$(HEADRACE) up --detach
	$(HEADRACE) status
	@echo "--- sample request: headrace generate \"...\" --stream --temperature 0"
	@echo "    (a 135M model, 4-bit GGUF dequantized: answers are often wrong; greedy, --temperature 0, is steadier)"
	$(HEADRACE) generate "In one sentence, what does a mill's headrace do?" --stream --max-tokens 48 --temperature 0
	@echo "--- the mesh keeps running: stop it with make down"

down:
	@test -x $(HEADRACE) && $(HEADRACE) down || true

status: $(VENV)/.installed
	$(HEADRACE) status

# Benchmarks: each prints a table and writes bench/results/NAME.{md,json}.
# The vLLM ones need `headrace models prepare` (make up does it) and a quiet machine.
bench: $(BENCHMARKS)

# The mesh's own added latency and throughput vs the worker alone (synthetic engine).
bench-overhead: install
	$(PY) -m bench.overhead

# The mesh's CPU per streamed token by process, next to this machine's floor
# for one gRPC message (bench/machine_floor.py).
bench-token-cost: install
	$(PY) -m bench.token_cost

# The mesh's own cost per request next to LiteLLM's proxy, on one fixed-response
# backend: added latency, TTFT, req/s at c=32, CPU per 1k requests (docs/performance.md).
# LiteLLM (pinned) and py-spy go in a venv of their own, bench/.peers-venv.
PEERS_VENV := bench/.peers-venv
LITELLM_VERSION := 1.108.7
PY_SPY_VERSION := 0.4.3
BENCH_PEERS_ARGS ?= --profile
$(PEERS_VENV)/.installed:
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install 'litellm[proxy]==$(LITELLM_VERSION)' 'py-spy==$(PY_SPY_VERSION)'
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(PY) -m bench.peers $(BENCH_PEERS_ARGS)

# vLLM through the mesh vs in-process at 1/16/64 streams; naive transformers baseline; cost per 1k requests;
# then vLLM's own `vllm bench serve` against plain `vllm serve` and against the gateway (bench/results/vllm-serve-peer.md).
bench-engine: install
	$(HEADRACE) models prepare
	$(PY) -m bench.engine
	$(PY) -m bench.vllm_serve_peer

# Prefix affinity vs round robin on 2 vLLM workers (needs ~12 GiB free), then
# 10x overload on the synthetic engine.
bench-placement: install
	$(HEADRACE) models prepare
	$(PY) -m bench.placement

# 10x overload with the default admission (queue bounded by expected wait)
# vs a queue bounded by count alone, side by side (synthetic engine).
bench-overload: install
	$(PY) -m bench.overload

# The gateway's added TTFT and per-token latency vs the router and the worker
# (vLLM on SmolLM2, then the synthetic engine).
bench-gateway: install
	$(HEADRACE) models prepare
	$(PY) -m bench.gateway

bench-connection-limits: install
	$(PY) -m bench.connection_limits

# A ramp to 10x replayed against static max / static min / the autoscaler
# with the local actuator (synthetic engine with a start-up delay).
BENCH_AUTOSCALE_ARGS ?=
bench-autoscale: install
	$(PY) -m bench.autoscale $(BENCH_AUTOSCALE_ARGS)

# Semantic cache hit rate and wrong hits on held-out paraphrase pairs; lookup latency.
bench-cache: install
	$(PY) -m bench.cache

# Fast-vs-accurate routing vs always-accurate (docs/routing.md);
# ROUTING_ENGINE=vllm for SmolLM2 on vLLM.
ROUTING_ENGINE ?= synthetic
bench-routing: install
	$(PY) -m bench.routing --engine $(ROUTING_ENGINE)

# A 2,000-row job through the queue vs the same rows offline on the real model
# (with the embedded CPU pool's scheduling, config.embedded_pool_scheduling);
# BENCH_BATCH_ARGS="--engine synthetic" for the queue alone.
BENCH_BATCH_ARGS ?=
bench-batch: install
	$(HEADRACE) models prepare
	$(PY) -m bench.batch $(BENCH_BATCH_ARGS)

# Scheduler replica failover: kill -9 one of two replicas under load through the
# router (synthetic engine): requests lost, extra slots, time to recover.
bench-failover: install
	$(PY) -m bench.failover

# Dynamic batching of embeddings through the gateway vs max_batch_size 1 (MiniLM on the CPU).
bench-embeddings: install
	$(PY) -m bench.embeddings

# SmolLM2 bf16 (smollm2@1) vs its int8 W8A8 variant (smollm2@q8) in one run: greedy
# agreement, perplexity on a held text, tokens/s at 1 and 16 streams, cost per 1M tokens.
bench-quant: install
	$(HEADRACE) models prepare smollm2 smollm2-w8a8
	$(PY) -m bench.quant

# The cost waterfall: one generated trace replayed against a naive deploy
# (transformers, one at a time) and the mesh with one lever more each time
# (batching, cache, int8/bf16 routing, batch lane): cost per 1k requests,
# TTFT/TPOT, answers differing from the naive deploy's.
bench-cost: install
	$(HEADRACE) models prepare smollm2 smollm2-w8a8
	$(PY) -m bench.cost_waterfall

clean:
	rm -rf $(VENV) .venv-triton $(PEERS_VENV) .tools .mypy_cache .ruff_cache .pytest_cache
