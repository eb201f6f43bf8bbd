#!/usr/bin/env bash
# Rolling update under load behind HAProxy (scripts/rolling_update.py), in both drain modes:
# 1 s shutdown delay, and none (GOAWAY + HAProxy retries). Installs HAProxy from Debian's
# packages when it is missing, as CI's fresh machine needs. NEREID_BIN: the server binary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v haproxy >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
export NEREID_BIN="${NEREID_BIN:-$PWD/target/debug/nereid}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}"
exec .venv/bin/python scripts/rolling_update.py "$@"
