#!/usr/bin/env bash
# Starts Nereid in explicit mode on model_repository/ and runs scripts/lifecycle_bench.py:
# a reload under load from 8 clients (no request may fail) and 200 load/unload cycles
# (resident memory must stay within 5% of its value after the first cycle).
#   NEREID_BIN   server binary (default: cargo build --release, then target/release/nereid)
#   RELOADS, CYCLES   how many (defaults 10, 200)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${NEREID_BIN:-}" ]; then cargo build --release --quiet; NEREID_BIN=target/release/nereid; fi
scripts/setup-python.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"
port="${LIFECYCLE_GRPC_PORT:-18101}"
mkdir -p .bench
"$NEREID_BIN" --model-repository model_repository --model-control-mode explicit --load-model simple \
  --grpc-port "$port" --allow-http false --allow-metrics false > .bench/lifecycle-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q "Started GRPCInferenceService" .bench/lifecycle-server.log && break; sleep 0.1; done
.venv/bin/python scripts/lifecycle_bench.py --url "localhost:$port" --pid "$pid" \
  --reloads "${RELOADS:-10}" --cycles "${CYCLES:-200}"
