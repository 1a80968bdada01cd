# driver-ranker: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
export PORT

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned dependencies

data: $(VENV)/.installed ## generate the seeded synthetic data into feature_repo/data/ (FORCE=1 rewrites it)
	$(BIN)/python -m driver_ranker.data $(if $(FORCE),--force)

features: $(VENV)/.installed ## feast apply and materialize into the online store (FULL=1: all data again)
	$(BIN)/python -m driver_ranker.feature_store $(if $(FULL),--full)

train: $(VENV)/.installed ## train, register a version, promote it to champion if it passes the gate
	$(BIN)/python -m driver_ranker.training

promote: $(VENV)/.installed ## move the champion alias to VERSION=n (the old one becomes `previous`)
	@test -n "$(VERSION)" || { echo "usage: make promote VERSION=n"; exit 2; }
	$(BIN)/python -m driver_ranker.release promote $(VERSION)

rollback: $(VENV)/.installed ## move the champion alias back to `previous`
	$(BIN)/python -m driver_ranker.release rollback

canary: $(VENV)/.installed ## set the canary alias (CANARY_ALIAS, default challenger) to VERSION=n
	@test -n "$(VERSION)" || { echo "usage: make canary VERSION=n"; exit 2; }
	$(BIN)/python -m driver_ranker.release canary $(VERSION)

serve: $(VENV)/.installed ## everything from a fresh clone (Redis, data, features, champion), then serve on PORT
	$(BIN)/python -m driver_ranker.bootstrap serve

stack: $(VENV)/.installed ## the compose topology as processes: Redis, mlflow server (PostgreSQL if up), init, ranker
	$(BIN)/python -m driver_ranker.stack

BATCH_EXAMPLE := artifacts/batch/requests.parquet
batch: $(VENV)/.installed ## score INPUT (CSV/Parquet) into OUTPUT (Parquet) with the champion or VERSION=n; no INPUT: 100k example rows
	$(if $(INPUT),,test -f $(BATCH_EXAMPLE) || $(BIN)/python -m driver_ranker.data --requests 100000 --requests-out $(BATCH_EXAMPLE))
	$(BIN)/python -m driver_ranker.batch $(or $(INPUT),$(BATCH_EXAMPLE)) $(or $(OUTPUT),artifacts/batch/scores.parquet) $(if $(VERSION),--version $(VERSION))

bento: $(VENV)/.installed ## bentoml build: import the champion into BentoML's model store, build the Bento
	$(BIN)/python -m driver_ranker.packaging

containerize: bento ## bentoml containerize the Bento into the image driver-ranker:latest (needs Docker)
	@docker info >/dev/null 2>&1 || { echo "error: make containerize needs a running Docker engine and 'docker info' fails here. The Bento is built (bentoml list); run this on a machine with Docker, or 'bentoml export driver-ranker:latest' and containerize it there."; exit 1; }
	$(BIN)/bentoml containerize driver-ranker:latest -t driver-ranker:latest

bench: $(VENV)/.installed ## benchmark vs the course design and BentoML's ceiling; writes artifacts/bench/
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } || echo "wrk not installed: using the asyncio client"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

soak: $(VENV)/.installed ## SOAK_MINUTES (5) of mixed traffic at 200 req/s; fails on a 5xx or 10% worker memory growth
	$(BIN)/python -m bench.soak

fuzz: $(VENV)/.installed ## schemathesis against a served ranker, FUZZ_EXAMPLES (default 2000) per mode
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest -q -rP tests/integration/test_fuzz.py

test: $(VENV)/.installed ## the whole test suite against real Redis and MLflow
	$(BIN)/python -m pytest

lint: $(VENV)/.installed ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed ## ruff format and fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove generated data, registries and reports (keeps .venv)
	rm -rf feature_repo/data artifacts/* .pytest_cache
	touch artifacts/.gitkeep

.PHONY: help install data features train promote rollback canary serve stack batch bento containerize bench soak fuzz test lint format clean
