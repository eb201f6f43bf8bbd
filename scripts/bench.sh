#!/usr/bin/env bash
# Benchmarks the server on model_repository/: startup time to first readiness, idle RSS, and
# perf_analyzer throughput/latency on `simple` over gRPC at concurrency 1..8, then over HTTP.
#
#   NEREID_BIN          server binary (default: cargo build --release, then target/release/nereid)
#   BENCH_GRPC_PORT     gRPC port (default 18001); BENCH_HTTP_PORT (18000), BENCH_METRICS_PORT (18002)
#   BENCH_CONCURRENCY   perf_analyzer --concurrency-range (default 1:8)
#   BENCH_HTTP_CONCURRENCY  the same for the HTTP run (default: BENCH_CONCURRENCY)
#   BENCH_WINDOW_MS     perf_analyzer measurement window -p (default 2000; CI uses a shorter one)
#
# Output files (server log, perf_analyzer output and CSV) go to .bench/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

grpc_port="${BENCH_GRPC_PORT:-18001}"
http_port="${BENCH_HTTP_PORT:-18000}"
metrics_port="${BENCH_METRICS_PORT:-18002}"
concurrency="${BENCH_CONCURRENCY:-1:8}"
window_ms="${BENCH_WINDOW_MS:-2000}"

if [ -n "${NEREID_BIN:-}" ]; then
  bin="$NEREID_BIN"
else
  cargo build --release --quiet
  bin="$root/target/release/nereid"
fi
[ -x "$bin" ] || { echo "bench: server binary '$bin' is not executable" >&2; exit 1; }

scripts/setup-python.sh >/dev/null
scripts/install-perf-analyzer.sh >/dev/null
py="$root/.venv/bin/python"
perf_analyzer="$root/.tools/bin/perf_analyzer"

# Outside cargo, .cargo/config.toml's ORT_DYLIB_PATH does not apply.
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -f "$root/.ort/libonnxruntime.so.1.31.1" ]; then
  export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"
fi

out="$root/.bench"
mkdir -p "$out"
pidfile="$out/server.pid"
rm -f "$pidfile" "$out/perf.csv"

stop_server() {
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  fi
}
trap stop_server EXIT INT TERM

# The Python side starts the server itself so that the clock starts at the spawn, not after Python's
# own (slow) import of grpc. It leaves the server running and writes its pid for the trap above.
"$py" - "$bin" "$grpc_port" "$http_port" "$metrics_port" "$pidfile" "$out/server.log" <<'PY' > "$out/startup.txt"
import socket, subprocess, sys, time
import tritonclient.grpc as grpcclient

binary, grpc_port, http_port, metrics_port, pidfile, log = sys.argv[1:]
argv = [binary, "--model-repository", "model_repository",
        "--grpc-port", grpc_port, "--http-port", http_port, "--metrics-port", metrics_port]
deadline_s, poll_s = 60.0, 0.005

t0 = time.monotonic()
proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
with open(pidfile, "w") as f:
    f.write(str(proc.pid))

def alive_or_exit():
    if proc.poll() is not None:
        sys.exit(f"bench: server exited with code {proc.returncode} before it was ready; see {log}")
    if time.monotonic() - t0 > deadline_s:
        sys.exit(f"bench: server not ready after {deadline_s:.0f} s; see {log}")

# Wait for the port first: a gRPC channel that failed to connect backs off for up to a second,
# which would swamp the measurement.
while True:
    alive_or_exit()
    try:
        socket.create_connection(("127.0.0.1", int(grpc_port)), timeout=0.05).close()
        break
    except OSError:
        time.sleep(poll_s)
port_ms = (time.monotonic() - t0) * 1000

client = grpcclient.InferenceServerClient(
    f"127.0.0.1:{grpc_port}",
    channel_args=[("grpc.initial_reconnect_backoff_ms", 5), ("grpc.min_reconnect_backoff_ms", 5),
                  ("grpc.max_reconnect_backoff_ms", 20), ("grpc.use_local_subchannel_pool", 1)],
)
while True:
    alive_or_exit()
    try:
        if client.is_server_ready(client_timeout=1):
            break
    except Exception:
        pass
    time.sleep(poll_s)
ready_ms = (time.monotonic() - t0) * 1000
client.close()
print(f"{port_ms:.1f} {ready_ms:.1f}")
PY
read -r port_ms ready_ms < "$out/startup.txt"
pid="$(cat "$pidfile")"
rss_kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")"

echo "server:      $bin (pid $pid)"
echo "startup:     gRPC port open after ${port_ms} ms, first ready after ${ready_ms} ms"
echo "idle RSS:    $(awk -v kb="$rss_kb" 'BEGIN { printf "%.1f MB", kb / 1024 }')"
echo "perf:        perf_analyzer -m simple -i grpc --concurrency-range $concurrency -s 30 -p $window_ms ..."

pa_status=0
"$perf_analyzer" -m simple -i grpc -u "localhost:$grpc_port" --concurrency-range "$concurrency" \
  -s 30 -p "$window_ms" -f "$out/perf.csv" > "$out/perf.txt" 2>&1 || pa_status=$?
if [ "$pa_status" -ne 0 ] || grep -qiE '(^|[^a-z])(error|failed)' "$out/perf.txt"; then
  echo "bench: perf_analyzer failed (exit $pa_status); its output:" >&2
  cat "$out/perf.txt" >&2
  exit 1
fi

"$py" - "$out/perf.csv" <<'PY'
import csv, sys

with open(sys.argv[1], newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["Concurrency"]))
print(f"{'concurrency':>11}  {'infer/s':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
for r in rows:
    print(f"{r['Concurrency']:>11}  {float(r['Inferences/Second']):>10.1f}"
          f"  {int(r['p50 latency']) / 1000:>8.3f}  {int(r['p99 latency']) / 1000:>8.3f}")
PY

# The same model over HTTP/REST (binary tensors, as perf_analyzer sends them); it must run clean.
http_concurrency="${BENCH_HTTP_CONCURRENCY:-$concurrency}"
echo "perf HTTP:   perf_analyzer -m simple -i http --concurrency-range $http_concurrency -s 30 -p $window_ms ..."
rm -f "$out/perf_http.csv"
pa_status=0
"$perf_analyzer" -m simple -i http -u "localhost:$http_port" --concurrency-range "$http_concurrency" \
  -s 30 -p "$window_ms" -f "$out/perf_http.csv" > "$out/perf_http.txt" 2>&1 || pa_status=$?
if [ "$pa_status" -ne 0 ] || grep -qiE '(^|[^a-z])(error|failed)' "$out/perf_http.txt"; then
  echo "bench: perf_analyzer -i http failed (exit $pa_status); its output:" >&2
  cat "$out/perf_http.txt" >&2
  exit 1
fi
"$py" - "$out/perf_http.csv" <<'PY'
import csv, sys

with open(sys.argv[1], newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["Concurrency"]))
print(f"{'HTTP conc.':>11}  {'infer/s':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
for r in rows:
    print(f"{r['Concurrency']:>11}  {float(r['Inferences/Second']):>10.1f}"
          f"  {int(r['p50 latency']) / 1000:>8.3f}  {int(r['p99 latency']) / 1000:>8.3f}")
PY
