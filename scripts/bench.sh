#!/usr/bin/env bash
# make bench: run-once throughput and peak memory at 100k and 1M rows over
# 1,000 projects, beside the Python/XlsxWriter peer (../shared/peer_xlsxwriter.py)
# on the same input. Medians of BENCH_RUNS runs (default 3): the machines are
# noisy. Peak memory is the maximum resident set size from GNU time. Both
# write a plain workbook (--encryption none), like for like.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
runs="${BENCH_RUNS:-3}"
sizes="${BENCH_SIZES:-100000 1000000}"
data="$here/target/bench-data"
mkdir -p "$data"

cargo build --release -q -p breakglass-cli
bg="$here/target/release/breakglass"

peer_script=""
for candidate in "$here/../shared/peer_xlsxwriter.py" "$here/shared/peer_xlsxwriter.py"; do
  [[ -f "$candidate" ]] && peer_script="$candidate" && break
done
peer_python=""
if [[ -n "$peer_script" ]]; then
  venv="$here/target/bench-venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q xlsxwriter >&2 || true
  fi
  "$venv/bin/python" -c 'import xlsxwriter' 2>/dev/null && peer_python="$venv/bin/python"
fi
[[ -z "$peer_python" ]] && echo "bench: the Python peer is not available; measuring breakglass alone" >&2

measure() { # label command... -> prints "seconds maxrss_kib" per run, median chosen later
  shift # the label names the measurement for readers; the rest is the command
  local out; out=$(mktemp)
  local times=() mems=()
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>&1
    read -r t m <"$out"
    times+=("$t"); mems+=("$m")
  done
  rm -f "$out"
  local mt mm
  mt=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  mm=$(printf '%s\n' "${mems[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "$mt $mm"
}

printf '%-10s %-12s %10s %12s %10s %8s\n' rows tool "median s" "rows/s" "peak MiB" "speed-up"
for rows in $sizes; do
  csv="$data/inventory-$rows.csv"
  [[ -f "$csv" ]] || "$bg" generate --rows "$rows" --projects 1000 --seed 1 --out "$csv" 2>/dev/null
  out="$data/out-$rows"
  read -r t m < <(measure breakglass "$bg" run-once --inventory "$csv" --out "$out" --encryption none)
  printf '%-10s %-12s %10.2f %12.0f %10.1f %8s\n' "$rows" breakglass "$t" "$(awk -v a="$rows" -v b="$t" 'BEGIN{print a/b}')" "$(awk -v a="$m" 'BEGIN{print a/1024}')" ""
  if [[ -n "$peer_python" ]]; then
    read -r pt pm < <(measure peer "$peer_python" "$peer_script" "$csv" "$data/peer-$rows.xlsx")
    printf '%-10s %-12s %10.2f %12.0f %10.1f %7.1fx\n' "$rows" python-peer "$pt" "$(awk -v a="$rows" -v b="$pt" 'BEGIN{print a/b}')" "$(awk -v a="$pm" 'BEGIN{print a/1024}')" "$(awk -v a="$pt" -v b="$t" 'BEGIN{print a/b}')"
  fi
done
