# Percorso — every target creates and uses its own virtualenv (.venv); nothing else is assumed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
FUZZ_EXAMPLES ?= 5000

.DEFAULT_GOAL := help
.PHONY: help install run demo worker analytics chromium test test-unit test-broker test-embedded test-faults fuzz lint typecheck validate simulate bench bench-quick clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install Percorso with its dev tools

run: $(STAMP) ## the embedded default: local broker, worker, synthetic traffic, live summary
	$(BIN)/percorso demo

demo: run ## same as run

worker: $(STAMP) ## one Faust worker against KAFKA_BOOTSTRAP_SERVERS
	$(BIN)/percorso worker

analytics: $(STAMP) ## journey figures and the journey page (http://127.0.0.1:6067/)
	$(BIN)/percorso analytics

test: $(STAMP) chromium ## the whole suite (unit, property, real-broker, broker-fault and browser tests)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The journey-page test drives Debian's headless chromium. Installed only when it is missing
# and we are root with apt-get (CI, containers); otherwise that one test skips and says why.
chromium:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium (for the journey-page test) ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core \
	    || echo "could not install chromium: the journey-page test will skip" >&2; \
	fi

test-unit: $(STAMP) ## only the tests that need no broker
	$(BIN)/python -m pytest -m 'not broker' $(PYTEST_ARGS)

test-broker: $(STAMP) ## only the real-broker tests
	$(BIN)/python -m pytest -m broker $(PYTEST_ARGS)

test-embedded: $(STAMP) ## the broker tests again on the embedded broker (what a Python-only machine runs)
	PERCORSO_BROKER=embedded $(BIN)/python -m pytest -m 'broker and not real_kafka and not kafka_semantics' $(PYTEST_ARGS)

test-faults: $(STAMP) ## only the tests that kill and restart a local Apache Kafka
	$(BIN)/python -m pytest -m real_kafka $(PYTEST_ARGS)

fuzz: $(STAMP) ## the fuzz tests at length: FUZZ_EXAMPLES (default 5000) inputs per test, no time limit
	PERCORSO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -m fuzz --timeout=0 $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check percorso journeys agents tests bench
	$(BIN)/ruff format --check percorso journeys agents tests bench

typecheck: $(STAMP) ## mypy
	$(BIN)/mypy

validate: $(STAMP) ## validate the shipped journey catalog
	$(BIN)/percorso validate journeys/

simulate: $(STAMP) ## replay the example events offline through the shipped journeys
	$(BIN)/percorso simulate --journeys journeys/catalog --events examples/events.jsonl

bench: $(STAMP) ## benchmarks at the target sizes (long; never part of make test)
	$(BIN)/python -m bench $(BENCH_ARGS)

bench-quick: $(STAMP) ## the same benchmarks at small sizes (minutes)
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
