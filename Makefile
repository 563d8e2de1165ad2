# breakglass — the targets CI and people run. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help test build lint fmt bench run-once clean-test-services

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-14s %s\n", $$1, $$2}'

build: ## Build every crate and binary (debug)
	$(CARGO) build --workspace --bins

test: ## Run the whole test suite; installs and starts NATS/PostgreSQL when missing
	$(CARGO) build --workspace --bins
	scripts/with-test-services.sh scripts/run-tests.sh

lint: ## Formatting and clippy, warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

bench: ## Throughput and peak memory of run-once at 100k and 1M rows, beside the Python peer
	scripts/bench.sh

run-once: ## The embedded job on the bundled sample (writes ./breakglass-out/)
	$(CARGO) run -q -p breakglass-cli -- run-once
