#!/usr/bin/env bash
# Benchmarks the sequence batcher on the accumulator (client_examples_repository/
# simple_string_dyna_sequence: implicit state, CORRID TYPE_STRING): sequences per second and
# p50/p99 latency per request for the `direct` and `oldest` strategies at 1, 8 and 64 concurrent
# sequences, each row against one sequence at a time (the concurrency-1 row of its strategy).
# A sequence is 8 requests (START ... END) sent one after another over gRPC by one client
# thread, which then starts the next sequence with a new id. Not a timed test: it prints a
# table (Markdown) and checks every answer against the accumulator's arithmetic.
#
#   NEREID_BIN          server binary (default: <target>/release/nereid if built, else
#                       <target>/debug/nereid; say which in the report)
#   BENCH_GRPC_PORT     gRPC port (default 18021); BENCH_HTTP_PORT (18020), BENCH_METRICS_PORT (18022)
#   BENCH_CONCURRENCY   concurrent sequences, space-separated (default "1 8 64")
#   BENCH_SECONDS       seconds per measurement (default 5)
#
# Files (the two model copies, the server log) go to .bench/sequences/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

grpc_port="${BENCH_GRPC_PORT:-18021}"
http_port="${BENCH_HTTP_PORT:-18020}"
metrics_port="${BENCH_METRICS_PORT:-18022}"
concurrency="${BENCH_CONCURRENCY:-1 8 64}"
seconds="${BENCH_SECONDS:-5}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"

scripts/setup-python.sh >/dev/null
py="$root/.venv/bin/python"

if [ -n "${NEREID_BIN:-}" ]; then
  bin="$NEREID_BIN"
elif [ -x "$target_dir/release/nereid" ]; then
  bin="$target_dir/release/nereid"
else
  bin="$target_dir/debug/nereid"
fi
[ -x "$bin" ] || { echo "bench_sequences: server binary '$bin' is not executable (cargo build first)" >&2; exit 1; }
if [ -z "${ORT_DYLIB_PATH:-}" ] && [ -f "$root/.ort/libonnxruntime.so.1.31.1" ]; then
  export ORT_DYLIB_PATH="$root/.ort/libonnxruntime.so.1.31.1"
fi

out="$root/.bench/sequences"
repo="$out/repo"
rm -rf "$repo"
mkdir -p "$repo"
src="$root/client_examples_repository/simple_string_dyna_sequence"
# acc_oldest: the model as generated; acc_direct: the same graph under the direct strategy.
for strategy in oldest direct; do
  mkdir -p "$repo/acc_$strategy/1"
  cp "$src/1/model.onnx" "$repo/acc_$strategy/1/"
done
sed 's/name: "simple_string_dyna_sequence"/name: "acc_oldest"/' "$src/config.pbtxt" >"$repo/acc_oldest/config.pbtxt"
"$py" - "$src/config.pbtxt" "$repo/acc_direct/config.pbtxt" <<'PY'
import re, sys
text = open(sys.argv[1]).read().replace('name: "simple_string_dyna_sequence"', 'name: "acc_direct"')
text = re.sub(r"  oldest \{[^}]*\}\n", "", text)
open(sys.argv[2], "w").write(text)
PY

"$bin" --model-repository "$repo" --grpc-port "$grpc_port" --http-port "$http_port" \
  --metrics-port "$metrics_port" >"$out/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT

"$py" - "$grpc_port" "$seconds" "$bin" $concurrency <<'PY'
import itertools, os, sys, threading, time

import numpy as np
import tritonclient.grpc as grpcclient

port, seconds, binary = sys.argv[1], float(sys.argv[2]), sys.argv[3]
levels = [int(c) for c in sys.argv[4:]]
url = f"127.0.0.1:{port}"
VALUES = [20, -11, -7, -5, -3, -2, 0, -1]

deadline = time.monotonic() + 60
while True:
    try:
        c = grpcclient.InferenceServerClient(url)
        if c.is_model_ready("acc_oldest") and c.is_model_ready("acc_direct"):
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("bench_sequences: the server did not become ready (see .bench/sequences/server.log)")
    time.sleep(0.2)

ids = itertools.count(1)
ids_lock = threading.Lock()


def run(model, clients, stop_at, latencies, done, errors):
    client = grpcclient.InferenceServerClient(url)
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    while time.monotonic() < stop_at:
        with ids_lock:
            seq = str(next(ids))
        acc = 0
        for i, v in enumerate(VALUES):
            x.set_data_from_numpy(np.array([[v]], dtype=np.int32))
            t0 = time.perf_counter()
            r = client.infer(model, [x], sequence_id=seq, sequence_start=i == 0, sequence_end=i == len(VALUES) - 1)
            latencies.append(time.perf_counter() - t0)
            acc = v if i == 0 else acc + v
            want = acc + (int(seq) if i == len(VALUES) - 1 else 0)
            got = int(r.as_numpy("OUTPUT")[0][0])
            if got != want:
                errors.append(f"{model} sequence {seq} step {i}: {got} != {want}")
                return
        done.append(1)


rows = []
for strategy in ["direct", "oldest"]:
    model = f"acc_{strategy}"
    base = None
    for n in levels:
        latencies, done, errors = [], [], []
        stop_at = time.monotonic() + seconds
        t0 = time.monotonic()
        threads = [threading.Thread(target=run, args=(model, n, stop_at, latencies, done, errors)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        if errors:
            sys.exit("bench_sequences: wrong answer: " + errors[0])
        rate = len(done) / elapsed
        base = base or rate
        lat = np.array(latencies) * 1000
        rows.append((strategy, n, rate, rate / base, np.percentile(lat, 50), np.percentile(lat, 99)))

print(f"server: {binary}; {seconds:.0f} s per row; 8 requests per sequence; CPU cores: {os.cpu_count()}")
print()
print("| strategy | concurrent sequences | sequences/s | × one at a time | p50 ms/request | p99 ms/request |")
print("|---|---:|---:|---:|---:|---:|")
for strategy, n, rate, ratio, p50, p99 in rows:
    print(f"| {strategy} | {n} | {rate:.1f} | {ratio:.2f} | {p50:.2f} | {p99:.2f} |")
PY
