#!/usr/bin/env bash
# make bench: one table of breakglass beside the Python/XlsxWriter peer
# (../shared/peer_xlsxwriter.py) on the same synthetic inventory.
#
# Rows of the table (medians of BENCH_RUNS runs, default 3, and of
# BENCH_ROUNDS rounds, default 5, for run-once and the pipeline; the
# machines are noisy): the peer; `run-once` with `encryption: none` and `password` at
# every size of BENCH_ROWS (default "100000 1000000") over 1,000 projects,
# and at the largest size over 10,000 projects; the NATS pipeline
# (`trigger --wait` with collector, renderer and uploader running) at the
# largest size in both modes, when `nats-server` is installed; and the
# emergency path at the largest size: `fetch` (local folder, and an S3
# bucket on loopback when the test venv's moto is installed) and `show
# DEVICE` on the encrypted file. Peak memory is the maximum resident set
# (GNU time for commands, VmHWM for the services). "vs peer" is the peer's
# median wall time divided by ours at the same rows (a speed-up); the note
# says what the targets of issue #13 compare. The run-once cases take turns
# round by round, and each pipeline run follows a run-once it is compared
# with: a 2-core VM's speed drifts by 10-15% over minutes, more than the
# ratios the targets bound. So each ratio a target bounds is taken within
# a round (or a pipeline run and the run-once beside it), from runs made
# seconds apart, and the note gives the median of those paired ratios
# (the walls' medians come from different rounds and can disagree with it
# by a few percent).
#
# BENCH_ROWS="20000 100000" BENCH_RUNS=1 BENCH_ROUNDS=1 scripts/bench.sh   # a quick look
# About 10 minutes at the defaults on a 2-core machine once the release
# build exists (the Python peer takes half of it: 59–87 s per run at 1M).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
runs="${BENCH_RUNS:-3}"
rounds="${BENCH_ROUNDS:-5}"
sizes=$(printf '%s\n' ${BENCH_ROWS:-${BENCH_SIZES:-100000 1000000}} | sort -nu | tr '\n' ' ')
largest=$(printf '%s\n' $sizes | sort -n | tail -1)
target_dir="${CARGO_TARGET_DIR:-$here/target}"
data="$target_dir/bench-data"
mkdir -p "$data"
work=$(mktemp -d)
cleanup() {
  for pid in "${service_pids[@]:-}"; do [[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true; done
  [[ -n "${nats_pid:-}" ]] && kill "$nats_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
service_pids=()

cargo build --release -q -p breakglass-cli -p breakglass-collector -p breakglass-renderer -p breakglass-uploader
bin="$target_dir/release"
bg="$bin/breakglass"

peer_script=""
for candidate in "$here/../shared/peer_xlsxwriter.py" "$here/shared/peer_xlsxwriter.py" /work/shared/peer_xlsxwriter.py; do
  [[ -f "$candidate" ]] && peer_script="$candidate" && break
done
peer_python=""
if [[ -n "$peer_script" ]]; then
  venv="$target_dir/bench-venv"
  if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" && "$venv/bin/pip" install -q xlsxwriter >&2 || true
  fi
  "$venv/bin/python" -c 'import xlsxwriter' 2>/dev/null && peer_python="$venv/bin/python"
fi
[[ -z "$peer_python" ]] && echo "bench: the Python peer is not available; measuring breakglass alone" >&2

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# paired_median "a1 a2 ..." "b1 b2 ..." [scale] -> the median of scale*ai/bi
paired_median() {
  awk -v a="$1" -v b="$2" -v k="${3:-1}" 'BEGIN{n=split(a,x," "); split(b,y," ")
    for (i=1;i<=n;i++) printf "%.6f\n", k*x[i]/y[i]}' | median
}

# measure command... -> "median_seconds median_peak_kib"
measure() {
  local out times=() mems=() t m
  out=$(mktemp)
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$out" "$@" >"$work/last.out" 2>"$work/last.err" || {
      echo "bench: failed: $*" >&2; cat "$work/last.err" >&2; exit 1; }
    read -r t m <"$out"
    times+=("$t"); mems+=("$m")
  done
  rm -f "$out"
  echo "$(printf '%s\n' "${times[@]}" | median) $(printf '%s\n' "${mems[@]}" | median)"
}

# measure_once command... -> "seconds peak_kib" of one run
measure_once() {
  local out t m
  out=$(mktemp)
  /usr/bin/time -f "%e %M" -o "$out" "$@" >"$work/last.out" 2>"$work/last.err" || {
    echo "bench: failed: $*" >&2; cat "$work/last.err" >&2; exit 1; }
  read -r t m <"$out"
  rm -f "$out"
  echo "$t $m"
}

declare -A peer_time
row() { # what mode rows projects seconds peak_kib size_bytes note
  local speedup="" size=""
  if [[ -n "${peer_time[$3]:-}" && "$1" != peer ]]; then
    speedup=$(awk -v p="${peer_time[$3]}" -v t="$5" 'BEGIN{printf "%.1fx", p/t}')
  fi
  [[ -n "$7" ]] && size=$(awk -v b="$7" 'BEGIN{printf "%.1f", b/1e6}')
  printf '%-9s %-9s %8s %8s %8.2f %8.1f %8s %8s  %s\n' "$1" "$2" "$3" "$4" "$5" \
    "$(awk -v k="$6" 'BEGIN{print k/1024}')" "$speedup" "$size" "$8"
}

inventory() { # rows projects -> path
  local csv="$data/inventory-$1-$2.csv"
  [[ -f "$csv" ]] || "$bg" generate --rows "$1" --projects "$2" --seed 1 --out "$csv" >/dev/null 2>&1
  echo "$csv"
}

newest() { ls -t "$1"/*.xlsx* 2>/dev/null | grep -v manifest | head -1; }

passphrase="bench passphrase, not a secret"
printf '%s\n' "$passphrase" >"$work/passphrase"
cat >"$work/password.conf" <<EOF
encryption: password
encryption_passphrase: $passphrase
EOF

printf '%-9s %-9s %8s %8s %8s %8s %8s %8s  %s\n' what mode rows projects "wall s" "peak MiB" "vs peer" "size MB" note
for rows in $sizes; do
  csv=$(inventory "$rows" 1000)
  if [[ -n "$peer_python" ]]; then
    read -r t m < <(measure "$peer_python" "$peer_script" "$csv" "$work/peer.xlsx")
    peer_time[$rows]=$t
    row peer none "$rows" 1000 "$t" "$m" "$(stat -c %s "$work/peer.xlsx")" "Python XlsxWriter, constant memory"
  fi
done

# run-once: every (rows, projects, mode) once per round, BENCH_ROUNDS
# rounds one after another. The ratios the targets ask for (password ÷
# none, time per row at each size, 10,000 ÷ 1,000 projects) are taken
# within each round, from runs made seconds apart, and their median over
# the rounds is reported: not a machine before and after its speed
# drifted. A case at a tenth of the largest size or less runs several
# times per round (at most 5: largest ÷ rows) and counts in its round by
# their median, since one run of half a second moves by 10-15% with the
# machine, as much as the per-row bound it is checked against. One untimed
# run first loads the binary. (An inventory is generated when its
# arguments are made, before the timing starts.)
cases=()
for rows in $sizes; do cases+=("$rows:1000:none" "$rows:1000:password"); done
cases+=("$largest:10000:none" "$largest:10000:password")
declare -A times mems took prev_rows per_round
run_once_args() { # rows projects mode -> args in the array `args`
  args=(run-once --inventory "$(inventory "$1" "$2")" --out "$work/out-$3-$1-$2" --encryption "$3")
  [[ $3 == password ]] && args+=(--config "$work/password.conf")
  return 0
}
IFS=: read -r rows projects mode <<<"${cases[0]}"
run_once_args "$rows" "$projects" "$mode"
# (A failure shows in the timed runs, with its message.)
"$bg" "${args[@]}" >/dev/null 2>&1 || true
for _ in $(seq "$rounds"); do
  for case in "${cases[@]}"; do
    IFS=: read -r rows projects mode <<<"$case"
    repeat=$(( largest / rows )); (( repeat > 5 )) && repeat=5
    run_once_args "$rows" "$projects" "$mode"
    this_round=""
    for _ in $(seq "$repeat"); do
      read -r t m < <(measure_once "$bg" "${args[@]}")
      times[$case]+="$t "; mems[$case]+="$m "; this_round+="$t "
    done
    per_round[$case]+="$(printf '%s\n' $this_round | median) "
  done
done
for case in "${cases[@]}"; do
  IFS=: read -r rows projects mode <<<"$case"
  t=$(printf '%s\n' ${times[$case]} | median)
  m=$(printf '%s\n' ${mems[$case]} | median)
  if [[ $projects == 1000 ]]; then
    took[$mode:$rows]=$t
    note=$(awk -v r="$rows" -v t="$t" 'BEGIN{printf "%.2f us/row", t/r*1e6}')
    # Growth, apart from fixed costs: time per row against the smaller
    # size (paired by round), the cost of each row added since, and the
    # fixed part that line implies.
    if [[ -n "${prev_rows[$mode]:-}" ]]; then
      r0=${prev_rows[$mode]}
      note+=$(paired_median "${per_round[$case]}" "${per_round[$r0:1000:$mode]}" "$(awk -v a="$r0" -v b="$rows" 'BEGIN{print a/b}')" |
        awk -v r0="$r0" '{printf "; per row %.2fx of %d rows", $1, r0}')
      note+=$(awk -v r0="$r0" -v t0="${took[$mode:$r0]}" -v r="$rows" -v t="$t" \
        'BEGIN{m=(t-t0)/(r-r0); printf "; %.2f us per row added since %d, fixed %.0f ms", m*1e6, r0, (t0-m*r0)*1e3}')
    fi
    prev_rows[$mode]=$rows
    if [[ $mode == password ]]; then
      note=$(paired_median "${per_round[$case]}" "${per_round[$rows:1000:none]}" |
        awk '{printf "%.2fx none; ", $1}')$note
    fi
  else
    note=$(paired_median "${per_round[$case]}" "${per_round[$rows:1000:$mode]}" |
      awk '{printf "%.2fx of 1,000 projects", $1}')
  fi
  row run-once "$mode" "$rows" "$projects" "$t" "$m" "$(stat -c %s "$(newest "$work/out-$mode-$rows-$projects")")" "$note"
done

# The emergency path on the largest encrypted workbook.
stored=$(newest "$work/out-password-$largest-1000")
cat >"$work/reader.conf" <<EOF
storage_provider: local
local_dir: $work/out-password-$largest-1000
EOF
export BREAKGLASS_PASSPHRASE="$passphrase"
read -r t m < <(measure bash -c "rm -rf '$work/fetched' && exec '$bg' fetch --config '$work/reader.conf' --out '$work/fetched' --max-age 1000")
row fetch password "$largest" 1000 "$t" "$m" "$(stat -c %s "$stored")" "local folder; download, verify, decrypt"
# The same from an S3 bucket on loopback (moto, from the test venv that
# `make test` installs), when it is there: run-once stores the workbook with
# its metadata and sidecar, then `fetch` downloads, verifies and decrypts.
moto="${BREAKGLASS_TEST_MOTO:-${XDG_CACHE_HOME:-$HOME/.cache}/breakglass/test-venv/bin/moto_server}"
if [[ -x "$moto" ]]; then
  moto_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$moto" -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
  service_pids+=($!)
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$moto_port") 2>/dev/null && break; sleep 0.1; done
  "$(dirname "$moto")/python" tests/py/s3tool.py "http://127.0.0.1:$moto_port" - create-bucket bench-fetch >/dev/null
  cat >"$work/s3.conf" <<EOF
storage_provider: s3
s3_url: 127.0.0.1:$moto_port
s3_protocol: http
s3_region: us-east-1
s3_bucket: bench-fetch
s3_access_key_id: testing-root
s3_secret_access_key: testing-root-secret
encryption: password
encryption_passphrase: $passphrase
EOF
  "$bg" run-once --config "$work/s3.conf" --inventory "$(inventory "$largest" 1000)" >/dev/null 2>"$work/run-once-s3.err" || {
    echo "bench: run-once to moto failed" >&2; cat "$work/run-once-s3.err" >&2; exit 1; }
  read -r t m < <(measure bash -c "rm -rf '$work/fetched-s3' && exec '$bg' fetch --config '$work/s3.conf' --out '$work/fetched-s3' --max-age 1000")
  row fetch password "$largest" 1000 "$t" "$m" "$(stat -c %s "$stored")" "S3 on loopback (moto); download, verify, decrypt"
else
  echo "bench: moto_server not found (make test installs it); the S3 fetch row is skipped" >&2
fi
device=$(sed -n 2p "$(inventory "$largest" 1000)" | cut -d, -f3)
read -r t m < <(measure "$bg" show "$device" --file "$stored")
row show password "$largest" 1000 "$t" "$m" "$(stat -c %s "$stored")" "decrypt + find $device"
unset BREAKGLASS_PASSPHRASE

# The pipeline over NATS: collector, renderer, uploader as processes.
if command -v nats-server >/dev/null; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  key=$("$bg" keygen 2>/dev/null | sed -n 's/^payload_key: //p')
  csv=$(inventory "$largest" 1000)
  for mode in none password; do
    conf="$work/pipeline-$mode.conf"
    cat >"$conf" <<EOF
nats_url: nats://127.0.0.1:$port
bus_prefix: bench$mode
payload_key: $key
inventory_url: $csv
local_dir: $work/pipeline-out-$mode
encryption: $mode
EOF
    [[ $mode == password ]] && echo "encryption_passphrase: $passphrase" >>"$conf"
    service_pids=()
    for service in collector renderer uploader; do
      "$bin/$service" --config "$conf" --http 127.0.0.1:0 2>"$work/$service-$mode.log" &
      service_pids+=($!)
    done
    # Ready when each has connected (its log says so).
    for service in collector renderer uploader; do
      for _ in $(seq 300); do grep -q "connected to NATS" "$work/$service-$mode.log" && break; sleep 0.1; done
    done
    # Each trigger right after a run-once on the same inventory: the ratio
    # compares runs made under the same machine conditions.
    pipeline_times=""; beside=""
    run_once_args "$largest" 1000 "$mode"
    for _ in $(seq "$rounds"); do
      read -r t m < <(measure_once "$bg" "${args[@]}")
      beside+="$t "
      read -r t m < <(measure_once "$bg" trigger --config "$conf" --wait --timeout 600)
      pipeline_times+="$t "
    done
    t=$(printf '%s\n' $pipeline_times | median)
    alone=$(printf '%s\n' $beside | median)
    peaks=""; worst=0
    for i in 0 1 2; do
      service=$(echo collector renderer uploader | cut -d' ' -f$((i + 1)))
      hwm=$(awk '/VmHWM/ {print $2}' "/proc/${service_pids[$i]}/status")
      peaks+="$service $((hwm / 1024)) "
      (( hwm > worst )) && worst=$hwm
    done
    for pid in "${service_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    service_pids=()
    ratio=$(paired_median "$pipeline_times" "$beside" |
      awk -v b="$alone" '{printf "%.2fx run-once (%.2f s beside it); ", $1, b}')
    row pipeline "$mode" "$largest" 1000 "$t" "$worst" "$(stat -c %s "$(newest "$work/pipeline-out-$mode")")" \
      "${ratio}peak MiB per service: ${peaks% }"
  done
else
  echo "bench: nats-server not installed; the pipeline rows are skipped" >&2
fi
