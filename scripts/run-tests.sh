#!/usr/bin/env bash
# Runs the test suite with cargo-nextest when present (installing it when
# cargo can), else with cargo test. Called by `make test` inside
# with-test-services.sh, so the servers are up.
set -euo pipefail
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest >&2 || true
fi
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast --status-level fail --final-status-level slow
else
  exec cargo test --workspace --no-fail-fast
fi
