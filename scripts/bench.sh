#!/usr/bin/env bash
# Benchmarks the server. BENCH_PARTS (comma-separated, default "simple,batching") picks the parts:
#
#   simple    on model_repository/: startup time to first readiness, idle RSS, and perf_analyzer
#             throughput/latency on `simple` over gRPC at concurrency 1..8, then over HTTP.
#   batching  on a real architecture from the onnx wheel's light model zoo (AlexNet by default,
#             made batchable by scripts/gen_bench_models.py into .bench/model_repository): raw ONNX
#             Runtime in-process throughput at batch 1, 2, 4, 8 (scripts/bench_ort.py, the ceiling);
#             perf_analyzer with batch-1 requests at concurrency 1, 4, 8, 16 on `<net>` (no
#             batching) and `<net>_dynamic` (dynamic batching); the ratio of the best dynamic
#             throughput to the best raw ORT throughput; the server's statistics (average batch).
#             Takes about 5 minutes on 2 cores (the first run also generates and verifies the model).
#
#   NEREID_BIN          server binary (default: cargo build --release, then target/release/nereid)
#   BENCH_GRPC_PORT     gRPC port (default 18001); BENCH_HTTP_PORT (18000), BENCH_METRICS_PORT (18002)
#   BENCH_CONCURRENCY   simple: perf_analyzer --concurrency-range (default 1:8)
#   BENCH_HTTP_CONCURRENCY  simple: the same for the HTTP run (default: BENCH_CONCURRENCY)
#   BENCH_WINDOW_MS     simple: perf_analyzer measurement window -p (default 2000; CI uses a shorter one)
#   BENCH_NET                batching: network, alexnet (default) or resnet50 (compute-bound on a
#                            CPU at every batch size: batching has next to nothing to win there)
#   BENCH_BATCH_CONCURRENCY  batching: concurrencies, space-separated (default "1 4 8 16")
#   BENCH_BATCH_WINDOW_MS    batching: perf_analyzer -p (default 4000)
#   BENCH_LAYOUT             batching: instance_group count x intra_op threads of both bench
#                            models (default 2x1; 1x2 is the other way to use 2 cores)
#   BENCH_ORT_LAYOUTS        batching: sessions x intra_op threads measured for the raw ORT ceiling
#                            (default "1x2 2x1": every way to use the same 2 threads; the ratio
#                            uses the best of them)
#   BENCH_ORT_SECONDS        batching: timed seconds per batch size in bench_ort.py (default 5)
#
# Output files (server logs, perf_analyzer output and CSVs, the ORT ceiling as JSON) go to .bench/.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

parts="${BENCH_PARTS:-simple,batching}"
grpc_port="${BENCH_GRPC_PORT:-18001}"
http_port="${BENCH_HTTP_PORT:-18000}"
metrics_port="${BENCH_METRICS_PORT:-18002}"
concurrency="${BENCH_CONCURRENCY:-1:8}"
window_ms="${BENCH_WINDOW_MS:-2000}"
batch_concurrency="${BENCH_BATCH_CONCURRENCY:-1 4 8 16}"
batch_window_ms="${BENCH_BATCH_WINDOW_MS:-4000}"
ort_seconds="${BENCH_ORT_SECONDS:-5}"
layout="${BENCH_LAYOUT:-2x1}"
net="${BENCH_NET:-alexnet}"
ort_layouts="${BENCH_ORT_LAYOUTS:-1x2 2x1}"

want_part() { [[ ",$parts," == *",$1,"* ]]; }
for p in ${parts//,/ }; do
  case "$p" in
    simple | batching) ;;
    *) echo "bench: unknown part '$p' in BENCH_PARTS (known: simple, batching)" >&2; exit 1 ;;
  esac
done

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

# start_server REPO LOG: starts the server on REPO and waits until it is ready. Sets server_pid,
# port_ms (gRPC port open) and ready_ms (first ServerReady true), both since the spawn.
#
# The Python side starts the server itself so that the clock starts at the spawn, not after Python's
# own (slow) import of grpc. It leaves the server running and writes its pid for stop_server.
start_server() {
  local repo="$1" log="$2"
  stop_server
  "$py" - "$bin" "$repo" "$grpc_port" "$http_port" "$metrics_port" "$pidfile" "$log" <<'PY' > "$out/startup.txt"
import socket, subprocess, sys, time
import tritonclient.grpc as grpcclient

binary, repo, grpc_port, http_port, metrics_port, pidfile, log = sys.argv[1:]
argv = [binary, "--model-repository", repo,
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
  server_pid="$(cat "$pidfile")"
}

# The machine may be shared (a 2-core box where others compile): measure how much CPU processes
# other than this script's children and the server took during a measurement. load_begin, then
# load_end prints that share of the whole machine (all cores) in percent.
# Children's CPU time comes from the `times` builtin, which must run in this shell, not a subshell.
children_ticks() { # sets _ticks
  times > "$out/.times"
  _ticks="$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); t += a[1] * 60 + a[2] }
                           printf "%d\n", t * 100 }' "$out/.times")"
}
server_ticks() {
  if [ -n "${server_pid:-}" ] && [ -r "/proc/$server_pid/stat" ]; then
    awk '{ print $14 + $15 }' "/proc/$server_pid/stat"
  else
    echo 0
  fi
}
machine_ticks() { awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat; }
load_begin() {
  children_ticks
  _load_children="$_ticks"
  _load_server="$(server_ticks)"
  read -r _load_busy _load_total < <(machine_ticks)
}
load_end() {
  local children server busy total
  children_ticks
  children="$_ticks"
  server="$(server_ticks)"
  read -r busy total < <(machine_ticks)
  awk -v b=$((busy - _load_busy)) -v t=$((total - _load_total)) \
      -v own=$((children - _load_children + server - _load_server)) \
      'BEGIN { o = t > 0 ? 100 * (b - own) / t : 0; printf "%.0f\n", o < 0 ? 0 : o }'
}

# rss_mb PID: resident set size in MB.
rss_mb() { awk '/^VmRSS:/ { printf "%.1f MB", $2 / 1024 }' "/proc/$1/status"; }

# run_perf TXT CSV PROTOCOL PORT ARGS...: runs perf_analyzer against the server; on failure prints
# its output and exits. With BENCH_ALLOW_UNSTABLE=1 set, a run that found no stable window (which a
# busy shared machine can cause; every request still succeeded) instead returns 3, after one retry.
run_perf() {
  local txt="$1" csv="$2" protocol="$3" port="$4" status=0 try
  shift 4
  for try in 1 2; do
    status=0
    rm -f "$csv"
    "$perf_analyzer" -i "$protocol" -u "localhost:$port" "$@" -f "$csv" > "$txt" 2>&1 || status=$?
    # perf_analyzer exits 0 or 1 after an unstable concurrency level, depending on which one it was.
    if [ "${BENCH_ALLOW_UNSTABLE:-0}" = 1 ] &&
      grep -q 'Failed to obtain stable measurement' "$txt" &&
      ! grep -vE 'Failed to obtain stable measurement' "$txt" | grep -iE '(^|[^a-z])(error|failed)' >/dev/null; then
      [ "$try" = 2 ] && return 3
      continue
    fi
    break
  done
  if [ "$status" -ne 0 ] || grep -qiE '(^|[^a-z])(error|failed)' "$txt"; then
    echo "bench: perf_analyzer $* failed (exit $status); its output:" >&2
    cat "$txt" >&2
    exit 1
  fi
}

part_simple() {
  start_server model_repository "$out/server.log"
  echo "server:      $bin (pid $server_pid)"
  echo "startup:     gRPC port open after ${port_ms} ms, first ready after ${ready_ms} ms"
  echo "idle RSS:    $(rss_mb "$server_pid")"
  echo "perf:        perf_analyzer -m simple -i grpc --concurrency-range $concurrency -s 30 -p $window_ms ..."

  local grpc_status=0
  run_perf "$out/perf.txt" "$out/perf.csv" grpc "$grpc_port" \
    -m simple --concurrency-range "$concurrency" -s 30 -p "$window_ms" || grpc_status=$?
  if [ "$grpc_status" -eq 3 ]; then
    echo "perf gRPC:   every request succeeded, but no window was stable on this busy machine: no table"
  else
  "$py" - "$out/perf.csv" <<'PY'
import csv, sys

with open(sys.argv[1], newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["Concurrency"]))
print(f"{'concurrency':>11}  {'infer/s':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
for r in rows:
    print(f"{r['Concurrency']:>11}  {float(r['Inferences/Second']):>10.1f}"
          f"  {int(r['p50 latency']) / 1000:>8.3f}  {int(r['p99 latency']) / 1000:>8.3f}")
PY
  fi

  # The same model over HTTP/REST (binary tensors, as perf_analyzer sends them); it must run clean.
  local http_concurrency="${BENCH_HTTP_CONCURRENCY:-$concurrency}" http_status=0
  echo "perf HTTP:   perf_analyzer -m simple -i http --concurrency-range $http_concurrency -s 30 -p $window_ms ..."
  run_perf "$out/perf_http.txt" "$out/perf_http.csv" http "$http_port" \
    -m simple --concurrency-range "$http_concurrency" -s 30 -p "$window_ms" || http_status=$?
  if [ "$http_status" -eq 3 ]; then
    echo "perf HTTP:   every request succeeded, but no window was stable on this busy machine: no table"
  else
  "$py" - "$out/perf_http.csv" <<'PY'
import csv, sys

with open(sys.argv[1], newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["Concurrency"]))
print(f"{'HTTP conc.':>11}  {'infer/s':>10}  {'p50 ms':>8}  {'p99 ms':>8}")
for r in rows:
    print(f"{r['Concurrency']:>11}  {float(r['Inferences/Second']):>10.1f}"
          f"  {int(r['p50 latency']) / 1000:>8.3f}  {int(r['p99 latency']) / 1000:>8.3f}")
PY
  fi
  stop_server
}

part_batching() {
  local t0=$SECONDS repo="$out/model_repository" dir="$out/batching" c m
  mkdir -p "$dir"
  rm -f "$dir"/perf-*.csv "$dir"/perf-*.txt "$dir"/ort-*.txt "$dir"/ort-*.json "$dir"/load-*.txt "$dir/stats.json"

  echo "== batching: $net (onnx light model zoo, symbolic batch), dynamic batching vs none"
  "$py" scripts/gen_bench_models.py --net "$net" --out "$repo" --instances "${layout%x*}" --threads "${layout#*x}" | sed 's/^/  /'

  for l in $ort_layouts; do
    echo
    echo "-- ceiling: raw ONNX Runtime in-process, ${l%x*} session(s) x ${l#*x} thread(s) (scripts/bench_ort.py, ${ort_seconds} s per batch size)"
    load_begin
    "$py" scripts/bench_ort.py --model "$repo/$net/1/model.onnx" --sessions "${l%x*}" --threads "${l#*x}" \
      --batches 1,2,4,8 --seconds "$ort_seconds" --json > "$dir/ort-$l.txt"
    load_end > "$dir/load-ort-$l.txt"  # a redirect, not $(...): `times` must see this shell's children
    sed '$d' "$dir/ort-$l.txt"
    echo "other processes' CPU during this measurement: $(cat "$dir/load-ort-$l.txt")% of the machine"
    tail -n 1 "$dir/ort-$l.txt" > "$dir/ort-$l.json"
  done

  echo
  start_server "$repo" "$out/server-batching.log"
  echo "server:      $bin (pid $server_pid) on $repo, ready after ${ready_ms} ms, idle RSS $(rss_mb "$server_pid")"
  for m in "$net" "${net}_dynamic"; do
    local cfg="$repo/$m/config.pbtxt" batching="no dynamic batching"
    if grep -q dynamic_batching "$cfg"; then
      # Both fields are optional (no preferred sizes; delay 0).
      batching="dynamic_batching preferred [$(grep -oP 'preferred_batch_size: \[\K[^]]*' "$cfg" || echo " none ")],"
      batching+=" max_queue_delay $(grep -oP 'max_queue_delay_microseconds: \K\d+' "$cfg" || echo 0) us"
    fi
    printf '  %-17s max_batch_size %s, %s instance(s) x intra_op %s thread(s), %s\n' "$m:" \
      "$(grep -oP 'max_batch_size: \K\d+' "$cfg")" "$(grep -oP 'count: \K\d+' "$cfg")" \
      "$(grep -oP 'intra_op_thread_count" value: \{ string_value: "\K\d+' "$cfg")" "$batching"
  done
  echo "perf:        perf_analyzer -m {$net,${net}_dynamic} -i grpc -b 1 --concurrency-range C:C -s 30 -p $batch_window_ms, C in: $batch_concurrency"
  for m in "$net" "${net}_dynamic"; do
    for c in $batch_concurrency; do
      load_begin
      BENCH_ALLOW_UNSTABLE=1 run_perf "$dir/perf-$m-c$c.txt" "$dir/perf-$m-c$c.csv" grpc "$grpc_port" \
        -m "$m" -b 1 --concurrency-range "$c:$c" -s 30 -p "$batch_window_ms" --max-trials 8 ||
        echo "  $m at concurrency $c: no stable measurement after two tries (see $dir/perf-$m-c$c.txt)"
      load_end > "$dir/load-$m-c$c.txt"
    done
  done

  "$py" - "$grpc_port" "$dir/stats.json" "$net" <<'PY'
import json, sys
import tritonclient.grpc as grpcclient

port, path, net = sys.argv[1:]
c = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
stats = {}
for m in (net, f"{net}_dynamic"):
    s = c.get_inference_statistics(m, as_json=True)["model_stats"][0]
    stats[m] = s
c.close()
with open(path, "w") as f:
    json.dump(stats, f)
PY
  echo "server RSS after the run: $(rss_mb "$server_pid")"
  stop_server

  "$py" - "$dir" "$batch_concurrency" "$net" <<'PY'
import csv, json, os, sys

d, concs, net = sys.argv[1], [int(c) for c in sys.argv[2].split()], sys.argv[3]
dnet = f"{net}_dynamic"

def row(model, c):
    path = os.path.join(d, f"perf-{model}-c{c}.csv")
    if not os.path.exists(path):  # no stable measurement
        return None
    with open(path, newline="") as f:
        r = next(csv.DictReader(f))
    return float(r["Inferences/Second"]), int(r["p50 latency"]) / 1000, int(r["p99 latency"]) / 1000

def cells(r):
    return f"{r[0]:>9.1f} {r[1]:>9.1f} {r[2]:>9.1f}" if r else f"{'unstable':>9} {'':>9} {'':>9}"

def speedup(y, n):
    return f"{y[0] / n[0]:>7.2f}x" if y and n else f"{'-':>8}"

def load(name):
    with open(os.path.join(d, f"load-{name}.txt")) as f:
        return int(f.read())

none = {c: row(net, c) for c in concs}
dyn = {c: row(dnet, c) for c in concs}
print()
print("-- Nereid over gRPC, batch-1 requests (perf_analyzer)")
print(f"{'':>11}  {f'no batching ({net})':^30}  {f'dynamic batching ({dnet})':^36}")
print(f"{'concurrency':>11}  {'infer/s':>9} {'p50 ms':>9} {'p99 ms':>9}     {'infer/s':>9} {'p50 ms':>9} {'p99 ms':>9}"
      f"  {'dyn/none':>8}  {'other CPU % (none/dyn)':>22}")
for c in concs:
    n, y = none[c], dyn[c]
    print(f"{c:>11}  {cells(n)}     {cells(y)}"
          f"  {speedup(y, n)}  {load(f'{net}-c{c}'):>13} / {load(f'{dnet}-c{c}'):<6}")

stats = json.load(open(os.path.join(d, "stats.json")))
print()
print("-- server ModelStatistics (whole run, warm-up included)")
for m, s in stats.items():
    inf, exe = int(s.get("inference_count", 0)), int(s.get("execution_count", 0))
    st = s.get("inference_stats", {})
    ok = st.get("success", {})
    n = int(ok.get("count", 0)) or 1
    def avg_ms(key, per):
        return int(st.get(key, {}).get("ns", 0)) / per / 1e6
    print(f"{m}: inference_count {inf}, execution_count {exe}, average batch {inf / max(exe, 1):.2f}; "
          f"per request: queue {avg_ms('queue', n):.1f} ms, compute infer {avg_ms('compute_infer', n):.1f} ms "
          f"(success {int(ok.get('count', 0))})")

import glob
orts = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(d, "ort-*.json")))]
ort = max(orts, key=lambda o: o["best"]["infer_per_sec"])
best_ort = ort["best"]
print()
measured = [c for c in concs if dyn[c]]
if measured:
    best_c = max(measured, key=lambda c: dyn[c][0])
    ratio = dyn[best_c][0] / best_ort["infer_per_sec"]
    print(f"raw ORT best: batch {best_ort['batch']} at {best_ort['infer_per_sec']:.1f} infer/s "
          f"({ort['sessions']} session(s) x intra_op {ort['threads']}); "
          f"dynamic best: concurrency {best_c} at {dyn[best_c][0]:.1f} infer/s")
    print(f"ratio dynamic(best concurrency)/raw ORT(best batch) = {ratio:.2f} (target >= 0.90)")
else:
    print("ratio dynamic(best concurrency)/raw ORT(best batch) = n/a (no stable dynamic measurement)")
ge4 = [c for c in concs if c >= 4]
if ge4:
    wins = ", ".join(f"c{c} {dyn[c][0] / none[c][0]:.2f}x" if dyn[c] and none[c] else f"c{c} n/a" for c in ge4)
    ok = all(dyn[c] and none[c] and dyn[c][0] > none[c][0] for c in ge4)
    print(f"dynamic vs no batching at concurrency >= 4: {wins} (target > 1.00x: {'met' if ok else 'not met'})")
loads = [load(os.path.basename(p)[5:-4]) for p in glob.glob(os.path.join(d, "load-*.txt"))]
if loads and max(loads) > 10:
    print(f"warning: other processes took up to {max(loads)}% of the machine's CPU during these measurements; "
          "the numbers above are not from a quiet machine")
PY
  echo "batching part: $((SECONDS - t0)) s"
}

if want_part simple; then part_simple; fi
if want_part batching; then part_batching; fi
