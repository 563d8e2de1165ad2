#!/usr/bin/env bash
# Runs a command with the real servers the tests need, starting whatever is
# missing and stopping only what this script started.
#
#   scripts/with-test-services.sh cargo nextest run --workspace
#
# NATS with JetStream and PostgreSQL: used where they already run on their
# standard loopback ports (127.0.0.1:4222, 127.0.0.1:5432, database `test`);
# otherwise installed from Debian's packages if absent and started on free
# loopback ports in a private state directory. Readiness is polled, never
# slept. The command sees:
#   BREAKGLASS_TEST_NATS_URL      nats://127.0.0.1:PORT
#   BREAKGLASS_TEST_DATABASE_URL  postgres://postgres@127.0.0.1:PORT/test
#   BREAKGLASS_TEST_PYTHON        a Python with moto[server], boto3 and
#                                 azure-storage-blob (the tests' independent S3
#                                 and Azure clients) installed
#   BREAKGLASS_TEST_MOTO          the moto_server command; tests start their
#                                 own instances (HTTP, HTTPS, IAM-enforcing)
#   BREAKGLASS_TEST_AZURITE       the azurite-blob command (Azure Blob
#                                 emulator); tests start their own instances
# The Python tools live in a virtualenv and Azurite in an npm prefix under
# ~/.cache/breakglass, each installed once per machine.
# BREAKGLASS_TEST_FORCE_START=1 ignores servers already running (to check
# this script's own start-up path, as on a machine without them).
set -euo pipefail
force="${BREAKGLASS_TEST_FORCE_START:-}"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${BREAKGLASS_TEST_STATE:-$here/.test-services}"
mkdir -p "$state"
started_pids=()
started_pg=""

log() { printf 'test-services: %s\n' "$*" >&2; }

cleanup() {
  local pid
  for pid in "${started_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$started_pg" ]]; then
    su postgres -s /bin/sh -c "$started_pg stop -m fast" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

apt_install() {
  if [[ $(id -u) -ne 0 ]]; then
    log "need root to install $* (or install it yourself)"; return 1
  fi
  if [[ ! -f "$state/apt-updated" ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && touch "$state/apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

wait_until() { # seconds, description, command...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if (( SECONDS >= deadline )); then log "$what not ready after ${limit}s"; return 1; fi
    sleep 0.2
  done
}

nats_has_jetstream() { # host port
  python3 - "$1" "$2" <<'PY'
import socket, sys, json
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
line = s.makefile().readline()
info = json.loads(line.split(" ", 1)[1])
sys.exit(0 if info.get("jetstream") else 1)
PY
}

# --- NATS with JetStream -------------------------------------------------
if [[ -z "${BREAKGLASS_TEST_NATS_URL:-}" ]]; then
  if [[ -z "$force" ]] && nats_has_jetstream 127.0.0.1 4222 2>/dev/null; then
    export BREAKGLASS_TEST_NATS_URL="nats://127.0.0.1:4222"
    log "using NATS at 127.0.0.1:4222"
  else
    command -v nats-server >/dev/null || apt_install nats-server
    port=$(free_port); mon=$(free_port)
    rm -rf "$state/nats"; mkdir -p "$state/nats"
    nats-server -js -a 127.0.0.1 -p "$port" -m "$mon" -sd "$state/nats" >"$state/nats.log" 2>&1 &
    started_pids+=($!)
    wait_until 30 "NATS" curl -fsS "http://127.0.0.1:$mon/healthz?js-enabled-only=true"
    export BREAKGLASS_TEST_NATS_URL="nats://127.0.0.1:$port"
    log "started NATS at 127.0.0.1:$port"
  fi
fi

# One installer at a time per machine: two runs side by side (two
# checkouts, or CI next to a developer) must not build one venv together.
tools_cache="${XDG_CACHE_HOME:-$HOME/.cache}/breakglass"
mkdir -p "$tools_cache"
exec 9>"$tools_cache/.install.lock"
flock 9

# --- Python test tools: moto (S3-compatible server), boto3, azure-storage-blob
if [[ -z "${BREAKGLASS_TEST_PYTHON:-}" ]]; then
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/breakglass/test-venv"
  if ! "$venv/bin/python" -c 'import moto, boto3, flask_cors, azure.storage.blob, openpyxl, yaml, msoffcrypto' >/dev/null 2>&1; then
    log "installing moto[server], boto3, azure-storage-blob, openpyxl and pyyaml into $venv"
    python3 -m venv "$venv" >&2 || { command -v apt-get >/dev/null && apt_install python3-venv && python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5.1' 'boto3>=1.35' 'azure-storage-blob>=12.19' 'openpyxl>=3.1' 'pyyaml>=6' 'msoffcrypto-tool>=5.4' >&2
  fi
  export BREAKGLASS_TEST_PYTHON="$venv/bin/python"
  export BREAKGLASS_TEST_MOTO="$venv/bin/moto_server"
fi
# The workbook tests read files back with openpyxl too, when told where it is.
export BREAKGLASS_OPENPYXL="${BREAKGLASS_OPENPYXL:-$BREAKGLASS_TEST_PYTHON}"

# --- age (the command-line tool reads what breakglass encrypts) -------
if [[ -z "${BREAKGLASS_TEST_AGE:-}" ]]; then
  command -v age >/dev/null || apt_install age
  export BREAKGLASS_TEST_AGE="$(command -v age)"
fi

# --- Azurite (Azure Blob emulator) --------------------------------------
if [[ -z "${BREAKGLASS_TEST_AZURITE:-}" ]]; then
  azurite_dir="${XDG_CACHE_HOME:-$HOME/.cache}/breakglass/azurite"
  if [[ ! -x "$azurite_dir/node_modules/.bin/azurite-blob" ]]; then
    command -v npm >/dev/null || apt_install npm
    log "installing azurite into $azurite_dir"
    mkdir -p "$azurite_dir"
    npm install --prefix "$azurite_dir" --no-audit --no-fund --loglevel=error 'azurite@^3.35' >&2
  fi
  export BREAKGLASS_TEST_AZURITE="$azurite_dir/node_modules/.bin/azurite-blob"
fi
flock -u 9
exec 9>&-

# --- PostgreSQL ----------------------------------------------------------
if [[ -z "${BREAKGLASS_TEST_DATABASE_URL:-}" ]]; then
  if [[ -z "$force" ]] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432 \
     && psql -h 127.0.0.1 -p 5432 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    export BREAKGLASS_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test"
    log "using PostgreSQL at 127.0.0.1:5432"
  else
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$pg_bin" ]]; then
      apt_install postgresql
      pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    port=$(free_port)
    data="$state/pg"
    rm -rf "$data"; mkdir -p "$data"; chown postgres "$data" "$state" 2>/dev/null || true
    run_pg() { if [[ $(id -u) -eq 0 ]]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
    run_pg "$pg_bin/initdb -D '$data' -A trust -U postgres" >"$state/initdb.log" 2>&1
    run_pg "$pg_bin/pg_ctl -D '$data' -o \"-p $port -k /tmp -c listen_addresses=127.0.0.1\" -l '$state/pg.log' -w start" >&2
    started_pg="$pg_bin/pg_ctl -D '$data'"
    wait_until 30 "PostgreSQL" "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port"
    "$pg_bin/psql" -h 127.0.0.1 -p "$port" -U postgres -c 'create database test' >/dev/null
    export BREAKGLASS_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
    log "started PostgreSQL at 127.0.0.1:$port"
  fi
fi

"$@"
