#!/usr/bin/env bash
# Overload benchmark (not a timed test): capacity of `simple` and of the dynamic-batching
# benchmark model, then 1x/2x/4x that rate open loop with two priority classes, per step:
# accepted throughput and p50/p99, high-priority p99, rejections and p99 time to a rejection,
# peak resident memory. Uses a queue of 64 per model so overload shows as fast rejections.
#   NEREID_BIN   server binary (default: cargo build --release)
#   SECONDS_PER_STEP (default 30)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${NEREID_BIN:-}" ]; then cargo build --release --quiet; NEREID_BIN=target/release/nereid; fi
scripts/setup-python.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"
repo=.bench/overload_repository
rm -rf "$repo" && mkdir -p "$repo"
# simple with two priority levels and a short batching window
cp -r model_repository/simple "$repo/simple_prio"
sed -i 's/name: "simple"/name: "simple_prio"/' "$repo/simple_prio/config.pbtxt"
printf '\ndynamic_batching { max_queue_delay_microseconds: 200 priority_levels: 2 default_priority_level: 2 }\n' >> "$repo/simple_prio/config.pbtxt"
if [ -d .bench/model_repository/resnet50_dynamic ]; then
  cp -r .bench/model_repository/resnet50_dynamic "$repo/resnet_prio"
  sed -i 's/name: "resnet50_dynamic"/name: "resnet_prio"/; s/dynamic_batching {/dynamic_batching { priority_levels: 2 default_priority_level: 2/' "$repo/resnet_prio/config.pbtxt"
fi
port="${OVERLOAD_GRPC_PORT:-18201}"
"$NEREID_BIN" --model-repository "$repo" --grpc-port "$port" --allow-http false --allow-metrics false \
  --max-queue-size-per-model 64 > .bench/overload-server.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "Started GRPCInferenceService" .bench/overload-server.log && break; sleep 0.1; done
status=0
for m in simple_prio resnet_prio; do
  [ -d "$repo/$m" ] || continue
  .venv/bin/python scripts/overload.py --url "localhost:$port" --pid "$pid" --model "$m" \
    --seconds "${SECONDS_PER_STEP:-30}" || status=1
done
exit $status
