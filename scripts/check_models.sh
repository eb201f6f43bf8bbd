#!/usr/bin/env bash
# Proves the committed model fixtures are exactly what scripts/gen_models.py produces: model_repository/
# and, with --examples, client_examples_repository/ (the models Triton's client examples need beyond it).
# Only the model folders the generator owns are compared; other folders in a repository are not its business.
# The text model (text_repository/minilm) is generated, not committed: scripts/gen_text_model.py checks it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-python.sh >/dev/null
py="$root/.venv/bin/python"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

status=0
# check REPOSITORY [GENERATOR FLAGS...]
check() {
  local repo="$1"
  shift
  "$py" scripts/gen_models.py "$@" --out "$tmp/$repo" >/dev/null
  while read -r model; do
    if [ ! -d "$repo/$model" ]; then
      echo "check_models: $repo/$model is missing" >&2
      status=1
    elif ! diff -r "$tmp/$repo/$model" "$repo/$model" >&2; then
      status=1
    fi
  done < <("$py" scripts/gen_models.py "$@" --list)
}
check model_repository
check client_examples_repository --examples

if [ "$status" -ne 0 ]; then
  echo "check_models: the committed models differ from what scripts/gen_models.py generates." >&2
  echo "check_models: run '.venv/bin/python scripts/gen_models.py --verify' (and '... --examples --verify') and commit the result." >&2
  exit 1
fi
echo "check_models: model_repository/ and client_examples_repository/ match scripts/gen_models.py"
