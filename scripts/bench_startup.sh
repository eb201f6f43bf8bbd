#!/usr/bin/env bash
# Start-up guards (issue 22), median of STARTUP_RUNS (default 5) runs of the release binary on the
# bundled model_repository/:
#
#   start to ready   from spawning the server to the first 200 from GET /v2/health/ready, polled
#                    about every millisecond over one kept-alive connection by
#                    scripts/bench_startup.py, which spawns the server itself (the interpreter's
#                    start-up is not counted). Target <= 100 ms.
#   idle RSS         VmRSS (/proc/<pid>/status) STARTUP_IDLE_S (default 2) seconds after ready,
#                    no request in between. Target <= 50 MB.
#
# Prints both medians, the values of every run and the targets; exits 1 when a target is missed.
#
#   NEREID_BIN          server binary (default: cargo build --release, then target/release/nereid)
#   STARTUP_RUNS        runs (default 5)
#   STARTUP_IDLE_S      seconds idle before reading VmRSS (default 2)
#   BENCH_HTTP_PORT (18300), BENCH_GRPC_PORT (18301), BENCH_METRICS_PORT (18302)
#
# The servers' output goes to .bench/startup/server.log.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

runs="${STARTUP_RUNS:-5}"
idle_s="${STARTUP_IDLE_S:-2}"
http_port="${BENCH_HTTP_PORT:-18300}"
grpc_port="${BENCH_GRPC_PORT:-18301}"
metrics_port="${BENCH_METRICS_PORT:-18302}"

if [ -z "${NEREID_BIN:-}" ]; then
  cargo build --release --quiet --bin nereid
fi
nereid="${NEREID_BIN:-$root/target/release/nereid}"
[ -x "$nereid" ] || { echo "bench_startup: '$nereid' is not executable" >&2; exit 1; }
scripts/setup-python.sh >/dev/null
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -f "$root/.ort/libonnxruntime.so.1.31.1" ]; then
  export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"
fi

out="$root/.bench/startup"
rm -rf "$out"
mkdir -p "$out"

echo "start-up guards: $runs runs of $nereid on model_repository/ ($(ls model_repository | wc -l) models), idle ${idle_s} s, $(nproc) cores"
BENCH_STARTUP_LOG="$out/server.log" "$root/.venv/bin/python" scripts/bench_startup.py \
  "$runs" "$idle_s" "$http_port" -- \
  "$nereid" --model-repository model_repository --http-port "$http_port" \
  --grpc-port "$grpc_port" --metrics-port "$metrics_port" | tee "$out/runs.txt"

"$root/.venv/bin/python" - "$out/runs.txt" <<'PY'
import json, sys
res = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
ok = True
print()
print("| (median of %d) | median | all runs | target |" % len(res["ready_ms"]))
print("| --- | --- | --- | --- |")
for name, key, unit, limit in (("start to ready", "ready_ms", "ms", 100), ("idle RSS", "rss_mb", "MB", 50)):
    med = res[key.replace("_", "_median_", 1)]
    met = med <= limit
    ok &= met
    runs = ", ".join(f"{v:.1f}" for v in res[key])
    print(f"| {name} | {med:.1f} {unit} | {runs} | <= {limit} {unit}: {'met' if met else 'NOT met'} |")
sys.exit(0 if ok else 1)
PY
