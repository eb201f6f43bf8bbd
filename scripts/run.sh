#!/usr/bin/env bash
# Sets up a fresh Debian machine (ONNX Runtime from PyPI, release build) and starts Nereid on the
# bundled model_repository/ with tritonserver's default ports (HTTP 8000, gRPC 8001). Extra flags pass through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/install-onnxruntime.sh .ort
cargo build --release
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"
exec target/release/nereid --model-repository model_repository "$@"
