#!/usr/bin/env bash
# What Nereid spends per request beyond the protocol floor (issue 22). Runs, one after the other
# and OVERHEAD_REPEATS times (default 3), the floor server (tools/floor.rs: a bare tonic server
# answering `simple`, no queue, no ONNX Runtime) and Nereid (release build) on a repository
# holding `simple` and `simple_delay` (the same model with dynamic_batching and
# max_queue_delay_microseconds: OVERHEAD_DELAY_US, default 100), with perf_analyzer sync gRPC
# batch-1 requests:
#
#   server CPU per request   utime+stime of the server (/proc/<pid>/stat) over its c1 and c16
#                            runs ÷ the requests it answered in them (ModelStatistics)
#   p50 at concurrency 1     perf_analyzer's p50
#   throughput at c16        perf_analyzer's inferences/s
#   delay row                Nereid's c1 p50 on simple_delay, beside its own no-delay p50
#   batcher lateness         dispatch − oldest arrival − delay over the delay run, p50/p99 read
#                            from nereid_batcher_lateness_seconds (interpolated in its µs buckets)
#
# Prints the table with the median of each figure over the repeats and the median of the
# same-repeat ratios (only those count on a shared machine).
#
#   OVERHEAD_REPEATS      repeats (default 3)
#   OVERHEAD_WINDOW_MS    perf_analyzer -p (default 3000)
#   OVERHEAD_DELAY_US     the delay of simple_delay (default 100)
#   OVERHEAD_SERVER_CPUS  taskset CPU list for the servers (default: not pinned)
#   OVERHEAD_CLIENT_CPUS  taskset CPU list for perf_analyzer (default: not pinned)
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

# Client-side helper: waits for `simple` to be ready, or prints the successes counted so far.
helper="$out/helper.py"
cat > "$helper" <<'PY'
import sys, time
import tritonclient.grpc as grpcclient
what, port, model = sys.argv[1:4]
client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
if what == "ready":
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(model):
                sys.exit(0)
        except Exception:
            pass
        time.sleep(0.02)
    sys.exit(f"bench_overhead: {model} not ready on port {port}")
stats = client.get_inference_statistics(model, as_json=True)
print(sum(int(s["inference_stats"].get("success", {}).get("count", 0)) for s in stats["model_stats"]))
PY

ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
served() { "$py" "$helper" count "$grpc_port" simple; }

# perf NAME MODEL CONCURRENCY: one perf_analyzer run; its CSV is $out/NAME.csv (absent when it
# found no stable window twice).
perf() {
  local name="$1" model="$2" c="$3" try
  for try in 1 2; do
    rm -f "$out/$name.csv"
    if pin "$client_cpus" "$perf_analyzer" -m "$model" -i grpc -u "localhost:$grpc_port" \
      --concurrency-range "$c" -p "$window_ms" -r 8 -s 30 -f "$out/$name.csv" \
      > "$out/$name.txt" 2>&1 && [ -s "$out/$name.csv" ]; then
      return 0
    fi
    echo "  ($name: no stable window on try $try; see $out/$name.txt)" >&2
  done
  rm -f "$out/$name.csv"
}

# measure SERVER R: the c1 and c16 runs against the running server, with its CPU and requests.
measure() {
  local server="$1" r="$2" t0 n0 t1 n1
  "$py" "$helper" ready "$grpc_port" simple
  kill -0 "$server_pid" 2>/dev/null || { echo "bench_overhead: $server exited; see $out/$server-r$r.log" >&2; exit 1; }
  t0="$(ticks)"
  n0="$(served)"
  perf "$server-c1-r$r" simple 1
  perf "$server-c16-r$r" simple 16
  t1="$(ticks)"
  n1="$(served)"
  echo "$((t1 - t0)) $((n1 - n0))" > "$out/$server-cpu-r$r.txt"
}

clk_tck="$(getconf CLK_TCK)"
echo "overhead bench: $repeats repeats, -p $window_ms ms, delay $delay_us µs," \
  "server CPUs ${server_cpus:-any}, perf_analyzer CPUs ${client_cpus:-any}, $(nproc) cores"
for r in $(seq "$repeats"); do
  echo "repeat $r: floor" >&2
  spawn "$server_cpus" "$floor" --grpc-port "$grpc_port" > "$out/floor-r$r.log" 2>&1 &
  server_pid=$!
  measure floor "$r"
  stop_server

  echo "repeat $r: nereid" >&2
  spawn "$server_cpus" "$nereid" --model-repository "$repo" --grpc-port "$grpc_port" \
    --http-port "$http_port" --metrics-port "$metrics_port" > "$out/nereid-r$r.log" 2>&1 &
  server_pid=$!
  measure nereid "$r"
  "$py" "$helper" ready "$grpc_port" simple_delay
  perf "nereid-delay-c1-r$r" simple_delay 1
  curl -s "http://127.0.0.1:$metrics_port/metrics" > "$out/nereid-metrics-r$r.txt" || true
  stop_server
done

"$py" - "$out" "$repeats" "$clk_tck" "$delay_us" <<'PY'
import csv, os, re, statistics, sys

out, repeats, clk_tck, delay_us = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def row(name):
    path = os.path.join(out, name + ".csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[0] if rows else None

def p50(name):
    r = row(name)
    return int(r["p50 latency"]) if r else None

def tput(name):
    r = row(name)
    return float(r["Inferences/Second"]) if r else None

def cpu_us(server, rep):
    with open(os.path.join(out, f"{server}-cpu-r{rep}.txt")) as f:
        ticks, n = map(int, f.read().split())
    return ticks * 1e6 / clk_tck / n if n > 0 else None

def lateness(rep):
    """p50, p99 (µs) of nereid_batcher_lateness_seconds for simple_delay, interpolated."""
    path = os.path.join(out, f"nereid-metrics-r{rep}.txt")
    if not os.path.exists(path):
        return None
    buckets = []
    pat = re.compile(r'^nereid_batcher_lateness_seconds_bucket\{(.*)\} (\S+)$')
    for line in open(path):
        m = pat.match(line.strip())
        if m and 'model="simple_delay"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(m.group(2))))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    def q(frac):
        want, lo, below = frac * total, 0.0, 0.0
        for le, count in buckets:
            if count >= want:
                if le == float("inf"):
                    return lo * 1e6
                span = count - below
                return (lo + (le - lo) * ((want - below) / span if span else 1)) * 1e6
            lo, below = le, count
        return lo * 1e6
    return q(0.5), q(0.99)

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def ratio(a, b):
    return b / a if a and b is not None else None

def fmt(x, unit="", digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"

reps = range(1, repeats + 1)
fc = [cpu_us("floor", r) for r in reps]
nc = [cpu_us("nereid", r) for r in reps]
fp = [p50(f"floor-c1-r{r}") for r in reps]
np_ = [p50(f"nereid-c1-r{r}") for r in reps]
ft = [tput(f"floor-c16-r{r}") for r in reps]
nt = [tput(f"nereid-c16-r{r}") for r in reps]
dp = [p50(f"nereid-delay-c1-r{r}") for r in reps]
late = [lateness(r) for r in reps]

print()
print(f"| (median of {repeats}) | floor | Nereid | ratio (median of same-repeat ratios) | target |")
print("| --- | --- | --- | --- | --- |")
print(f"| server CPU per request (c1 + c16 runs) | {fmt(med(fc), ' µs')} | {fmt(med(nc), ' µs')} "
      f"| {fmt(med([ratio(a, b) for a, b in zip(fc, nc)]), '×', 2)} | ≤ 1.5× |")
print(f"| p50 at concurrency 1 | {fmt(med(fp), ' µs')} | {fmt(med(np_), ' µs')} "
      f"| {fmt(med([ratio(a, b) for a, b in zip(fp, np_)]), '×', 2)} | ≤ 1.3× |")
print(f"| throughput at concurrency 16 | {fmt(med(ft), '/s')} | {fmt(med(nt), '/s')} "
      f"| {fmt(med([ratio(a, b) for a, b in zip(ft, nt)]), '×', 2)} | ≥ 0.9× |")
extra = [b - a if a is not None and b is not None else None for a, b in zip(np_, dp)]
print(f"| c1 p50 with max_queue_delay {delay_us} µs | | {fmt(med(dp), ' µs')} "
      f"| +{fmt(med(extra), ' µs')} over no delay | ≤ +150 µs |")
l50 = med([l[0] if l else None for l in late])
l99 = med([l[1] if l else None for l in late])
print(f"| batcher lateness p50 / p99 (delay run) | | {fmt(l50, ' µs')} / {fmt(l99, ' µs')} | | ≤ 50 / 200 µs |")
print()
print("per repeat (floor cpu µs, nereid cpu µs, floor p50, nereid p50, floor c16/s, nereid c16/s, delay p50, lateness p50/p99):")
for i, r in enumerate(reps):
    l = late[i]
    print(f"  {r}: {fmt(fc[i])} {fmt(nc[i])} {fmt(fp[i])} {fmt(np_[i])} {fmt(ft[i])} {fmt(nt[i])} "
          f"{fmt(dp[i])} {fmt(l[0] if l else None)}/{fmt(l[1] if l else None)}")
PY
