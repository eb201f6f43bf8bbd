#!/usr/bin/env bash
# perf_analyzer with client system shared memory (--shared-memory system) against `simple` and the
# AlexNet bench model (scripts/gen_bench_models.py, no dynamic batching), at concurrency 1 and 8,
# beside the same runs with tensors in the gRPC messages. Prints one table row per run.
#
#   NEREID_BIN       server binary (default: cargo build --release, then target/release/nereid)
#   BENCH_WINDOW_MS  perf_analyzer -p (default 3000)
#   BENCH_SHM_CONCURRENCY  concurrencies, space-separated (default "1 8")
#   BENCH_STABILITY  perf_analyzer -s, the stability percentage (default 30; a busy shared machine
#                    needs more)
#
# Output files (server log, perf_analyzer output and CSVs) go to .bench/shm/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
window_ms="${BENCH_WINDOW_MS:-3000}"
concurrency="${BENCH_SHM_CONCURRENCY:-1 8}"
stability="${BENCH_STABILITY:-30}"

if [ -n "${NEREID_BIN:-}" ]; then
  bin="$NEREID_BIN"
else
  cargo build --release --quiet
  bin="$root/target/release/nereid"
fi
scripts/setup-python.sh >/dev/null
scripts/install-perf-analyzer.sh >/dev/null
py="$root/.venv/bin/python"
pa="$root/.tools/bin/perf_analyzer"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/libonnxruntime.so.1.31.1}"

out="$root/.bench/shm"
mkdir -p "$out"
bench_repo="$root/.bench/model_repository"
"$py" scripts/gen_bench_models.py --net alexnet --out "$bench_repo" --instances 2 --threads 1 >/dev/null

log="$out/server.log"
"$bin" --model-repository "$root/model_repository" --model-repository "$bench_repo" \
  --allow-client-shm=true --grpc-address 127.0.0.1 --grpc-port 0 --http-port 0 \
  --allow-metrics false >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null' EXIT
grpc=""
for _ in $(seq 600); do
  grpc="$(sed -n '/Started GRPCInferenceService at/{s/.* at \([0-9.]*:[0-9]*\).*/\1/p;q}' "$log")"
  http="$(sed -n '/Started HTTPService at/{s/.* at [0-9.]*:\([0-9]*\).*/\1/p;q}' "$log")"
  if [ -n "$grpc" ] && [ -n "$http" ] && curl -sf -o /dev/null "http://127.0.0.1:$http/v2/health/ready"; then
    break
  fi
  kill -0 "$pid" || { cat "$log" >&2; exit 1; }
  sleep 0.2
done

printf '%-8s %-7s %11s %10s %9s %9s\n' model shm concurrency infer/s "p50 ms" "p99 ms"
for model in simple alexnet; do
  for shm in none system; do
    for c in $concurrency; do
      csv="$out/$model-$shm-$c.csv"
      "$pa" -m "$model" -i grpc -u "$grpc" -b 1 --shared-memory "$shm" \
        --concurrency-range "$c:$c" -p "$window_ms" -s "$stability" -f "$csv" >"$out/$model-$shm-$c.txt" 2>&1 || {
        echo "bench_shm: perf_analyzer failed for $model shm=$shm c=$c:" >&2
        tail -n 20 "$out/$model-$shm-$c.txt" >&2
        exit 1
      }
      "$py" - "$csv" "$model" "$shm" <<'PY'
import csv, sys
path, model, shm = sys.argv[1:]
row = next(csv.DictReader(open(path)))
print(f"{model:<8} {shm:<7} {row['Concurrency']:>11} {float(row['Inferences/Second']):>10.1f}"
      f" {int(row['p50 latency']) / 1000:>9.3f} {int(row['p99 latency']) / 1000:>9.3f}")
PY
    done
  done
done
