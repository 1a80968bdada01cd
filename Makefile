# driver-ranker: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 3000
export PORT

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	@# `bentoml serve` runs with -O (driver_ranker/ops/processes.py: SERVING_ENV): its bytecode now.
	$(BIN)/python -O -m compileall -q -j 0 $(VENV)/lib >/dev/null
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned dependencies (the image's and the dev tools')

# PySpark (the `spark` extra, pinned in requirements-spark.lock) only where OFFLINE_STORE=spark asks
# for it: never in the image, nor in `make serve`'s install. Spark 4 runs on Java 17 or 21.
$(VENV)/.installed-spark: $(VENV)/.installed requirements-spark.lock
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-spark.lock
	touch $@

install-spark: $(VENV)/.installed-spark ## add the `spark` extra's pinned PySpark to .venv (OFFLINE_STORE=spark installs it itself)

# `make batch|features|train OFFLINE_STORE=spark`: the Spark variant of the Feast repo (make exports
# the variable, which the settings and feature_repo/driver_repo.py read).
SPARK := $(if $(filter spark,$(OFFLINE_STORE)),$(VENV)/.installed-spark)

data: $(VENV)/.installed ## generate the seeded synthetic data into feature_repo/data/ (FORCE=1 rewrites it)
	$(BIN)/python -m driver_ranker.jobs.data $(if $(FORCE),--force)

features: $(VENV)/.installed $(SPARK) ## feast apply and materialize into the online store (FULL=1: all data again; OFFLINE_STORE=spark: on Spark)
	$(BIN)/python -m driver_ranker.features.store $(if $(FULL),--full)

train: $(VENV)/.installed $(SPARK) ## train, register a version, promote it to champion if it passes the gate (OFFLINE_STORE=spark: the join on Spark)
	$(BIN)/python -m driver_ranker.jobs.training

promote: $(VENV)/.installed ## move the champion alias to VERSION=n (the old one becomes `previous`)
	@test -n "$(VERSION)" || { echo "usage: make promote VERSION=n"; exit 2; }
	$(BIN)/python -m driver_ranker.ops.release promote $(VERSION)

rollback: $(VENV)/.installed ## move the champion alias back to `previous`
	$(BIN)/python -m driver_ranker.ops.release rollback

canary: $(VENV)/.installed ## set the canary alias (CANARY_ALIAS, default challenger) to VERSION=n
	@test -n "$(VERSION)" || { echo "usage: make canary VERSION=n"; exit 2; }
	$(BIN)/python -m driver_ranker.ops.release canary $(VERSION)

serve: $(VENV)/.installed ## everything from a fresh clone (Redis, demo data, features, champion), then serve on PORT
	DEMO_DATA=$${DEMO_DATA:-true} $(BIN)/python -m driver_ranker.ops.bootstrap serve

# HAProxy for replicas (make stack REPLICAS=n, make bench-replicas): apt-get installs it when it is
# missing and this runs as root, as wrk for make bench; otherwise the Python says how to install it.
HAPROXY_INSTALL = command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && { apt-get install -y -qq haproxy >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null 2>&1; }; }; } || true
REPLICAS ?= 1
stack: $(VENV)/.installed ## the compose topology as processes (demo data on): Redis, mlflow server (PostgreSQL if up), init, ranker; REPLICAS=n: n rankers behind HAProxy on PORT
	@[ "$(REPLICAS)" = 1 ] || { $(HAPROXY_INSTALL); }
	$(BIN)/python -m driver_ranker.ops.stack --replicas $(REPLICAS)

BATCH_EXAMPLE := artifacts/batch/requests.parquet
ab-sim: $(VENV)/.installed ## simulated dispatches on demo data: the A/B report's verdict, and the bandit's regret vs a 50/50 split
	$(BIN)/python -m bench.ab_sim

ab-report: $(VENV)/.installed ## per model version: completion of the recommended driver, difference, calibration; writes artifacts/ab/
	$(BIN)/python -m driver_ranker.jobs.ab_report

batch: $(VENV)/.installed $(SPARK) ## score INPUT (CSV/Parquet) into OUTPUT (Parquet) with the champion or VERSION=n; no INPUT: 100k example rows; OFFLINE_STORE=spark: on Spark
	$(if $(INPUT),,test -f $(BATCH_EXAMPLE) || $(BIN)/python -m driver_ranker.jobs.data --requests 100000 --requests-out $(BATCH_EXAMPLE))
	$(BIN)/python -m driver_ranker.jobs.batch $(or $(INPUT),$(BATCH_EXAMPLE)) $(or $(OUTPUT),artifacts/batch/scores.parquet) $(if $(VERSION),--version $(VERSION))

drift-report: $(VENV)/.installed ## the champion's (or VERSION=n's) training features against what it would score now (DRIVERS=file: the sample); writes artifacts/drift/
	$(BIN)/python -m driver_ranker.jobs.drift_report $(if $(VERSION),--version $(VERSION)) $(if $(DRIVERS),--drivers $(DRIVERS))

bento: $(VENV)/.installed ## import the champion into BentoML's model store as driver-ranker:latest, then bentoml build
	$(BIN)/python -m driver_ranker.ops.packaging

# Run from the temporary folder: BentoML 1.4.39's containerize refuses the Bento's dockerfile_template
# under any other working directory (bentoml/BentoML#5566).
containerize: bento ## bentoml containerize the Bento into the image driver-ranker:latest (needs Docker with BuildKit)
	@docker info >/dev/null 2>&1 || { echo "error: make containerize needs a running Docker engine and 'docker info' fails here. The Bento is built (bentoml list); run this on a machine with Docker, or 'bentoml export driver-ranker:latest' and containerize it there."; exit 1; }
	cd "$$($(BIN)/python -c 'import tempfile; print(tempfile.gettempdir())')" && $(CURDIR)/$(BIN)/bentoml containerize driver-ranker:latest -t driver-ranker:latest

test-compose: $(VENV)/.installed ## the compose stack for real (needs Docker): containerize, up, answers, release, faults, monitoring, down -v
	$(BIN)/python -m pytest -v tests/compose
.PHONY: test-compose

# Only the YAML on stdout (the recipe is not echoed), so that `make -s k8s | kubectl apply -f -` works.
OVERLAY ?= dev
k8s: ## print the rendered Kubernetes manifests (OVERLAY=dev|production)
	@command -v kubectl >/dev/null || { echo "error: make k8s needs kubectl (its built-in kustomize renders the manifests; no cluster is needed)" >&2; exit 1; }
	@kubectl kustomize deployment/k8s/overlays/$(OVERLAY)
.PHONY: k8s

bench: $(VENV)/.installed ## benchmark vs the course design and BentoML's ceiling; writes artifacts/bench/
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } || echo "wrk not installed: using the asyncio client"
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-replicas: $(VENV)/.installed ## throughput through HAProxy to 1 and 2 replicas of 1 worker, vs 1 replica of 2 workers; writes artifacts/bench/replicas.md
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null 2>&1; } || echo "wrk not installed: using the asyncio client"
	@$(HAPROXY_INSTALL)
	$(BIN)/python -m bench.replicas $(BENCH_ARGS)

soak: $(VENV)/.installed ## SOAK_MINUTES (5) of mixed traffic at 200 req/s; fails on a 5xx or 10% worker memory growth
	$(BIN)/python -m bench.soak

fuzz: $(VENV)/.installed ## schemathesis, every phase and check, on a served ranker: FUZZ_EXAMPLES (2000) per operation, FUZZ_SEED to replay
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

.PHONY: help install install-spark data features train promote rollback canary serve stack batch ab-report ab-sim drift-report bento containerize bench bench-replicas soak fuzz test lint format clean
