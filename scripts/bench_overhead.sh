#!/usr/bin/env bash
# What Nereid spends per request beyond the protocol floor (issue 22). Runs, one after the other
# and OVERHEAD_REPEATS times (default 3), the floor server (tools/floor/: a bare tonic + axum
# server answering `simple` over gRPC and HTTP, no queue, no ONNX Runtime) and Nereid (release
# build) on a repository holding `simple` and `simple_delay` (the same model with dynamic_batching
# and max_queue_delay_microseconds: OVERHEAD_DELAY_US, default 100), with perf_analyzer sync
# batch-1 requests, over gRPC and then over HTTP (perf_analyzer's default binary tensor data) for
# each server in each repeat:
#
#   server CPU per request   utime+stime of the server (/proc/<pid>/stat) over its c1 and c16
#                            runs ÷ the requests it answered in them (ModelStatistics)
#   p50 at concurrency 1     perf_analyzer's p50
#   throughput at c16        perf_analyzer's inferences/s
#   delay row                Nereid's c1 p50 on simple_delay, beside its own no-delay p50
#   batcher lateness         dispatch − oldest arrival − delay over the delay run, p50/p99 read
#                            from nereid_batcher_lateness_seconds (interpolated in its µs buckets)
#
# Prints one table per protocol with the median of each figure over the repeats and the median of
# the same-repeat ratios (only those count on a shared machine), each beside its target and
# whether it was met; scripts/bench_overhead.py reads the files and prints them. Exits 1 when a
# target is missed (the tables are printed either way).
#
#   OVERHEAD_REPEATS      repeats (default 3)
#   OVERHEAD_WINDOW_MS    perf_analyzer -p (default 3000)
#   OVERHEAD_DELAY_US     the delay of simple_delay (default 100)
#   OVERHEAD_SERVER_CPUS  taskset CPU list for the servers (default: not pinned)
#   OVERHEAD_CLIENT_CPUS  taskset CPU list for perf_analyzer (default: not pinned)
#   OVERHEAD_PROTOCOLS    which protocols, in order (default "grpc http")
#   NEREID_BIN / FLOOR_BIN  binaries (default: cargo build --release of both)
#   BENCH_GRPC_PORT (18201), BENCH_HTTP_PORT (18200), BENCH_METRICS_PORT (18202)
#
# Output files (logs, perf_analyzer output and CSVs, per-repeat results) go to .bench/overhead/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

repeats="${OVERHEAD_REPEATS:-3}"
window_ms="${OVERHEAD_WINDOW_MS:-3000}"
delay_us="${OVERHEAD_DELAY_US:-100}"
server_cpus="${OVERHEAD_SERVER_CPUS:-}"
client_cpus="${OVERHEAD_CLIENT_CPUS:-}"
protocols="${OVERHEAD_PROTOCOLS:-grpc http}"
for proto in $protocols; do
  case "$proto" in
    grpc | http) ;;
    *) echo "bench_overhead: unknown protocol '$proto' (grpc, http)" >&2; exit 2 ;;
  esac
done
grpc_port="${BENCH_GRPC_PORT:-18201}"
http_port="${BENCH_HTTP_PORT:-18200}"
metrics_port="${BENCH_METRICS_PORT:-18202}"

if [ -z "${NEREID_BIN:-}" ] || [ -z "${FLOOR_BIN:-}" ]; then
  cargo build --release --quiet --bin nereid --example floor
fi
nereid="${NEREID_BIN:-$root/target/release/nereid}"
floor="${FLOOR_BIN:-$root/target/release/examples/floor}"
for b in "$nereid" "$floor"; do
  [ -x "$b" ] || { echo "bench_overhead: '$b' is not executable" >&2; exit 1; }
done

scripts/setup-python.sh >/dev/null
scripts/install-perf-analyzer.sh >/dev/null
py="$root/.venv/bin/python"
perf_analyzer="$root/.tools/bin/perf_analyzer"
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -f "$root/.ort/libonnxruntime.so.1.31.1" ]; then
  export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"
fi

out="$root/.bench/overhead"
rm -rf "$out"
mkdir -p "$out"

# The repository: simple as bundled, and simple_delay with the dynamic batcher's delay.
repo="$out/repo"
mkdir -p "$repo/simple/1" "$repo/simple_delay/1"
cp model_repository/simple/config.pbtxt "$repo/simple/"
cp model_repository/simple/1/model.onnx "$repo/simple/1/"
cp model_repository/simple/1/model.onnx "$repo/simple_delay/1/"
sed 's/^name: "simple"/name: "simple_delay"/' model_repository/simple/config.pbtxt > "$repo/simple_delay/config.pbtxt"
printf 'dynamic_batching { max_queue_delay_microseconds: %s }\n' "$delay_us" >> "$repo/simple_delay/config.pbtxt"

pin() { # pin CPUS CMD...: runs CMD under taskset when CPUS is set
  local cpus="$1"
  shift
  if [ -n "$cpus" ]; then taskset -c "$cpus" "$@"; else "$@"; fi
}

# spawn CPUS CMD...: like pin, replacing the calling (background) subshell, so that `$!` is the
# server's own pid.
spawn() {
  local cpus="$1"
  shift
  if [ -n "$cpus" ]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  server_pid=""
}
trap stop_server EXIT INT TERM

# Client-side helper (readiness, the successes counted so far, the report): bench_overhead.py.
helper="$root/scripts/bench_overhead.py"

ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
served() { "$py" "$helper" count "$grpc_port" simple; }

# perf PROTO NAME MODEL CONCURRENCY: one perf_analyzer run over PROTO; its CSV is $out/NAME.csv
# (absent when it found no stable window twice). Each try is bounded by OVERHEAD_TRY_TIMEOUT_S
# (default 180 s): perf_analyzer 2.51's HTTP client was seen to hang at c16 against the floor,
# its memory growing by gigabytes a minute.
perf() {
  local proto="$1" name="$2" model="$3" c="$4" try port="$grpc_port"
  [ "$proto" = grpc ] || port="$http_port"
  for try in 1 2; do
    rm -f "$out/$name.csv"
    if pin "$client_cpus" timeout -s KILL "${OVERHEAD_TRY_TIMEOUT_S:-180}" "$perf_analyzer" -m "$model" -i "$proto" -u "localhost:$port" \
      --concurrency-range "$c" -p "$window_ms" -r 8 -s 30 -f "$out/$name.csv" \
      > "$out/$name.txt" 2>&1 && [ -s "$out/$name.csv" ]; then
      return 0
    fi
    echo "  ($name: no stable window on try $try; see $out/$name.txt)" >&2
  done
  rm -f "$out/$name.csv"
}

# measure SERVER PROTO R: the c1 and c16 runs over PROTO against the running server, with its
# CPU and the requests it answered (counted over gRPC, which both servers always serve).
measure() {
  local server="$1" proto="$2" r="$3" t0 n0 t1 n1
  kill -0 "$server_pid" 2>/dev/null || { echo "bench_overhead: $server exited; see $out/$server-r$r.log" >&2; exit 1; }
  t0="$(ticks)"
  n0="$(served)"
  perf "$proto" "$server-$proto-c1-r$r" simple 1
  perf "$proto" "$server-$proto-c16-r$r" simple 16
  t1="$(ticks)"
  n1="$(served)"
  echo "$((t1 - t0)) $((n1 - n0))" > "$out/$server-$proto-cpu-r$r.txt"
}

clk_tck="$(getconf CLK_TCK)"
echo "overhead bench: $repeats repeats, protocols: $protocols, -p $window_ms ms, delay $delay_us µs," \
  "server CPUs ${server_cpus:-any}, perf_analyzer CPUs ${client_cpus:-any}, $(nproc) cores"
for r in $(seq "$repeats"); do
  echo "repeat $r: floor" >&2
  spawn "$server_cpus" "$floor" --grpc-port "$grpc_port" --http-port "$http_port" \
    > "$out/floor-r$r.log" 2>&1 &
  server_pid=$!
  "$py" "$helper" ready "$grpc_port" simple
  for proto in $protocols; do measure floor "$proto" "$r"; done
  stop_server

  echo "repeat $r: nereid" >&2
  spawn "$server_cpus" "$nereid" --model-repository "$repo" --grpc-port "$grpc_port" \
    --http-port "$http_port" --metrics-port "$metrics_port" > "$out/nereid-r$r.log" 2>&1 &
  server_pid=$!
  "$py" "$helper" ready "$grpc_port" simple
  "$py" "$helper" ready "$grpc_port" simple_delay
  for proto in $protocols; do
    measure nereid "$proto" "$r"
    perf "$proto" "nereid-$proto-delay-c1-r$r" simple_delay 1
    # Cumulative: the report subtracts the previous protocol's scrape.
    curl -s "http://127.0.0.1:$metrics_port/metrics" > "$out/nereid-$proto-metrics-r$r.txt" || true
  done
  stop_server
done

"$py" "$helper" report "$out" "$repeats" "$clk_tck" "$delay_us" $protocols
