#!/usr/bin/env bash
# End to end with a real Prometheus (Debian's `prometheus` package): Nereid serves its metrics on
# loopback, Prometheus scrapes them every second, N requests are sent with tritonclient, and a
# PromQL query over nv_inference_request_success must return N. Everything listens on
# 127.0.0.1 with ports picked at run time; both processes and their files are removed at exit.
#
# Env: NEREID_BIN (default target/debug/nereid), N (requests, default 20), PYTHON (default
# .venv/bin/python, with tritonclient[grpc]; scripts/setup-python.sh makes it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N="${N:-20}"
NEREID_BIN="${NEREID_BIN:-$PWD/target/debug/nereid}"
PYTHON="${PYTHON:-.venv/bin/python}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"

if ! command -v prometheus >/dev/null 2>&1; then
    echo "prometheus is not installed; installing Debian's package:"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # sed reads all of its input: a reader that stops early (head) would kill apt-cache with
    # SIGPIPE, and pipefail would end the script.
    apt-cache policy prometheus | sed -n 1,3p
    # --no-install-recommends: the node exporter is not needed. Services are not started here.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi
[ -x "$NEREID_BIN" ] || { echo "no server binary at $NEREID_BIN (cargo build, or set NEREID_BIN)" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
fail() {
    echo "FAILED: $*" >&2
    echo "--- nereid log (tail)" >&2; tail -n 30 "$work/nereid.log" >&2 || true
    echo "--- prometheus log (tail)" >&2; tail -n 30 "$work/prometheus.log" >&2 || true
    exit 1
}

# Waits for "<what> at HOST:PORT" in the server log; prints HOST:PORT.
wait_for_line() {
    local what="$1" line
    for _ in $(seq 600); do
        line="$(grep -o "$what at [^ ]*" "$work/nereid.log" | head -n1 || true)"
        if [ -n "$line" ]; then echo "${line##* }"; return 0; fi
        kill -0 "${pids[0]}" 2>/dev/null || fail "nereid exited early"
        sleep 0.1
    done
    fail "nereid did not log '$what'"
}

"$NEREID_BIN" --model-repository "$PWD/model_repository" \
    --grpc-address 127.0.0.1 --grpc-port 0 \
    --metrics-address 127.0.0.1 --metrics-port 0 --metrics-interval-ms 500 \
    >"$work/nereid.log" 2>&1 &
pids+=($!)
grpc="$(wait_for_line "Started GRPCInferenceService")"
metrics="$(wait_for_line "Started Metrics Service")"
echo "nereid: gRPC $grpc, metrics $metrics"

prom_port="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: nereid
    static_configs:
      - targets: ["$metrics"]
EOF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)
echo "prometheus: 127.0.0.1:$prom_port"

"$PYTHON" - "$grpc" "$N" <<'PY' || fail "sending the requests"
import sys
import numpy as np
import tritonclient.grpc as grpcclient

url, n = sys.argv[1], int(sys.argv[2])
client = grpcclient.InferenceServerClient(url=url)
for i in range(n):
    a = np.full((1, 16), i, dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    out = client.infer("simple", inputs).as_numpy("OUTPUT0")
    assert (out == 2 * a).all()
print(f"sent {n} requests to simple")
PY

# Polls PromQL until every query returns its expected value (a scrape every second).
"$PYTHON" - "127.0.0.1:$prom_port" "$N" <<'PY' || fail "PromQL did not return the request count"
import json, sys, time, urllib.parse, urllib.request

prom, n = sys.argv[1], int(sys.argv[2])
checks = {
    'up{job="nereid"}': 1.0,
    'nv_inference_request_success{model="simple",version="1"}': float(n),
    'sum(nv_inference_request_success{model="simple"})': float(n),
    'nereid_inference_request_duration_seconds_count{model="simple",version="1"}': float(n),
    'sum(nv_inference_request_failure{model="simple"})': 0.0,
    'count(nv_inference_request_failure{model="simple",version="1"})': 4.0,
}

def query(q):
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        body = json.load(urllib.request.urlopen(url, timeout=5))
    except OSError:
        return None  # not up yet
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if len(result) == 1 else None

deadline = time.monotonic() + 60
while True:
    got = {q: query(q) for q in checks}
    if got == checks:
        break
    if time.monotonic() > deadline:
        for q, want in checks.items():
            print(f"  {q} = {got[q]} (want {want})", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.5)
p95 = query('histogram_quantile(0.95, nereid_inference_request_duration_seconds_bucket{model="simple",version="1"})')
print(f"PromQL nv_inference_request_success{{model=\"simple\"}} = {n}; p95 request latency {p95 * 1000:.2f} ms")
PY
echo "prometheus test passed"
