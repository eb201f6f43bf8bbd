#!/usr/bin/env bash
# Runs Triton's own Python client examples, unmodified, from ../shared/triton-client-examples (or
# $NEREID_EXAMPLES_DIR) against nereid, as a new user would, and prints PASS/FAIL/SKIP per example
# and "N passed, M failed" at the end. Exit status 0 only when every example it runs passes.
#
# Servers (all on loopback, ports chosen by the kernel and read from the log):
#   main     model_repository/ + client_examples_repository/, --allow-client-shm=true
#   control  two explicit-mode servers on temporary repositories of exactly 8 (gRPC) and 7 (HTTP)
#            model folders (symbolic links), because the model-control examples count the index.
# An example passes when it exits 0, prints its own "PASS" line where its source has one, and prints
# no "creation failed" line (a few exit 0 when they cannot connect).
#
# Environment: NEREID_BIN (default target/debug/nereid, built when missing), ORT_DYLIB_PATH,
# NEREID_EXAMPLES_DIR, EXAMPLE_TIMEOUT (seconds per example, default 120).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
examples="${NEREID_EXAMPLES_DIR:-$root/../shared/triton-client-examples}"
if [ ! -d "$examples" ]; then
  echo "run_examples: the examples folder $examples is missing (Triton's client examples, see its README)" >&2
  exit 1
fi
examples="$(cd "$examples" && pwd)"
per_example="${EXAMPLE_TIMEOUT:-120}"
py="$root/.venv/bin/python"
[ -x "$py" ] || "$root/scripts/setup-python.sh" >/dev/null
bin="${NEREID_BIN:-$root/target/debug/nereid}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --quiet --bin nereid) || exit 1
fi
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/libonnxruntime.so.1.31.1}"

# Skipped examples, each with its reason.
declare -A SKIP=(
  [simple_grpc_cudashm_client.py]="CUDA shared memory needs a GPU"
  [simple_http_cudashm_client.py]="CUDA shared memory needs a GPU"
  [simple_grpc_custom_repeat.py]="needs a decoupled custom-backend model (repeat_int32)"
  [ensemble_image_client.py]="ensembles are not supported"
  [memory_growth_test.py]="needs a custom-backend model"
)

tmp="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# start NAME ARGS...: starts a server logging to $tmp/NAME.log; sets GRPC and HTTP to its ports.
start() {
  local name="$1"
  shift
  local log="$tmp/$name.log"
  "$bin" --grpc-address 127.0.0.1 --grpc-port 0 --http-address 127.0.0.1 --http-port 0 \
    --allow-metrics false "$@" >"$log" 2>&1 &
  pids+=($!)
  local pid=$!
  GRPC="" HTTP=""
  for _ in $(seq 600); do
    GRPC="$(sed -n '/Started GRPCInferenceService at/{s/.* at [0-9.]*:\([0-9]*\).*/\1/p;q}' "$log")"
    HTTP="$(sed -n '/Started HTTPService at/{s/.* at [0-9.]*:\([0-9]*\).*/\1/p;q}' "$log")"
    if [ -n "$GRPC" ] && [ -n "$HTTP" ] &&
      curl -sf -o /dev/null "http://127.0.0.1:$HTTP/v2/health/ready"; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "run_examples: the $name server did not become ready; its log:" >&2
  cat "$log" >&2
  exit 1
}

# control_repo DIR N: a repository of exactly N model folders (links to the committed fixtures).
control_repo() {
  local dir="$1" n="$2" m
  mkdir -p "$dir"
  local models=(simple simple_nobatch simple_string simple_identity identity_int8 identity_int32
    identity_fp32 identity_uint8)
  for m in "${models[@]:0:$n}"; do ln -s "$root/model_repository/$m" "$dir/$m"; done
}

start main --model-repository "$root/model_repository" \
  --model-repository "$root/client_examples_repository" --allow-client-shm=true
MAIN_GRPC="$GRPC" MAIN_HTTP="$HTTP"
control_repo "$tmp/control8" 8
start control_grpc --model-repository "$tmp/control8" --model-control-mode explicit
CONTROL_GRPC="$GRPC"
control_repo "$tmp/control7" 7
start control_http --model-repository "$tmp/control7" --model-control-mode explicit
CONTROL_HTTP="$HTTP"

# A JPEG made now for the image classification examples.
image="$tmp/image.jpg"
"$py" -c "
import sys
from PIL import Image
img = Image.new('RGB', (320, 240))
img.putdata([((x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256) for y in range(240) for x in range(320)])
img.save(sys.argv[1], 'JPEG')
" "$image" || exit 1

# runs_of SCRIPT: one line per run of the example, each its arguments.
runs_of() {
  local g="127.0.0.1:$MAIN_GRPC" h="127.0.0.1:$MAIN_HTTP"
  case "$1" in
    simple_grpc_model_control.py) echo "-u 127.0.0.1:$CONTROL_GRPC" ;;
    simple_http_model_control.py) echo "-u 127.0.0.1:$CONTROL_HTTP" ;;
    reuse_infer_objects_client.py)
      echo "-i http -u $h"
      echo "-i grpc -u $g"
      ;;
    image_client.py)
      echo "-m densenet_onnx -c 3 -s INCEPTION -u $h $image"
      echo "-m densenet_onnx -c 3 -s INCEPTION -i grpc -u $g $image"
      ;;
    grpc_image_client.py) echo "-m densenet_onnx -c 3 -s INCEPTION -u $g $image" ;;
    # The sequence examples, also with -d (string correlation ids, simple_string_dyna_sequence).
    simple_http_sequence_*)
      echo "-u $h"
      echo "-u $h -d"
      ;;
    simple_grpc*sequence_*)
      echo "-u $g"
      echo "-u $g -d"
      ;;
    *http*) echo "-u $h" ;;
    *) echo "-u $g" ;;
  esac
}

passed=0 failed=0 skipped=0
failures=()
for path in "$examples"/*.py; do
  script="$(basename "$path")"
  if [ -n "${SKIP[$script]:-}" ]; then
    echo "SKIP  $script  (${SKIP[$script]})"
    skipped=$((skipped + 1))
    continue
  fi
  ok=1
  out="$tmp/$script.out"
  : >"$out"
  while read -r args; do
    # Word splitting of $args is intended: the paths in it have no spaces ($tmp is mktemp's).
    # shellcheck disable=SC2086
    (cd "$examples" && timeout "$per_example" "$py" "$script" $args) >>"$out" 2>&1
    rc=$?
    if [ "$rc" -ne 0 ]; then
      echo "[exit status $rc with: $args]" >>"$out"
      ok=0
    fi
  done < <(runs_of "$script")
  if grep -q 'print("PASS' "$path" && ! grep -q '^PASS' "$out"; then
    echo "[no PASS line]" >>"$out"
    ok=0
  fi
  if grep -qi 'creation failed' "$out"; then
    ok=0
  fi
  if [ "$ok" -eq 1 ]; then
    echo "PASS  $script"
    passed=$((passed + 1))
  else
    echo "FAIL  $script"
    tail -n 25 "$out" | sed 's/^/      /'
    failed=$((failed + 1))
    failures+=("$script")
  fi
done

echo "$passed passed, $failed failed ($skipped skipped)"
[ "$failed" -eq 0 ]
