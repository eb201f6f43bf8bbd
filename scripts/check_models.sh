#!/usr/bin/env bash
# Proves the committed model_repository/ fixtures are exactly what scripts/gen_models.py produces, and the
# sequence models in client_examples_repository/ what scripts/gen_sequence_models.py produces.
# Only the model folders the generator owns are compared; other folders in the repository are not its business.
# The text model (text_repository/minilm) is generated, not committed: scripts/gen_text_model.py checks it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-python.sh >/dev/null
py="$root/.venv/bin/python"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# check GENERATOR REPOSITORY: the model folders GENERATOR owns in REPOSITORY are exactly what it writes.
check() {
  local gen="$1" repo="$2" out="$tmp/$(basename "$1" .py)" status=0
  "$py" "scripts/$gen" --out "$out" >/dev/null
  while read -r model; do
    if [ ! -d "$repo/$model" ]; then
      echo "check_models: $repo/$model is missing" >&2
      status=1
    elif ! diff -r "$out/$model" "$repo/$model" >&2; then
      status=1
    fi
  done < <("$py" "scripts/$gen" --list)
  if [ "$status" -ne 0 ]; then
    echo "check_models: $repo/ differs from what scripts/$gen generates." >&2
    echo "check_models: run '.venv/bin/python scripts/$gen --verify' and commit the result." >&2
    exit 1
  fi
  echo "check_models: $repo/ matches scripts/$gen"
}

check gen_models.py model_repository
# The sequence models of Triton's client examples.
check gen_sequence_models.py client_examples_repository
