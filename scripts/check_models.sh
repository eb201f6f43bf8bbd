#!/usr/bin/env bash
# Proves the committed model fixtures are exactly what their generators produce: model_repository/ from
# scripts/gen_models.py, and client_examples_repository/ (the models Triton's client examples need beyond
# it) from scripts/gen_models.py --examples and scripts/gen_sequence_models.py.
# Only the model folders a generator owns are compared; other folders in a repository are not its business.
# The text model (text_repository/minilm) is generated, not committed: scripts/gen_text_model.py checks it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-python.sh >/dev/null
py="$root/.venv/bin/python"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

status=0
# check REPOSITORY GENERATOR [GENERATOR FLAGS...]: the model folders GENERATOR owns in REPOSITORY are
# exactly what it writes.
check() {
  local repo="$1" gen="$2"
  shift 2
  local out="$tmp/$repo-$(basename "$gen" .py)"
  "$py" "scripts/$gen" "$@" --out "$out" >/dev/null
  while read -r model; do
    if [ ! -d "$repo/$model" ]; then
      echo "check_models: $repo/$model is missing" >&2
      status=1
    elif ! diff -r "$out/$model" "$repo/$model" >&2; then
      echo "check_models: $repo/$model differs: run '.venv/bin/python scripts/$gen $* --verify' and commit the result." >&2
      status=1
    fi
  done < <("$py" "scripts/$gen" "$@" --list)
}
check model_repository gen_models.py
check client_examples_repository gen_models.py --examples
check client_examples_repository gen_sequence_models.py

if [ "$status" -ne 0 ]; then
  echo "check_models: the committed models differ from what their generators produce." >&2
  exit 1
fi
echo "check_models: model_repository/ and client_examples_repository/ match their generators"
