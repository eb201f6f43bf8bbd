#!/usr/bin/env bash
# Proves the committed model_repository/ fixtures are exactly what scripts/gen_models.py produces.
# Only the model folders the generator owns are compared; other folders in the repository are not its business.
# The text model (text_repository/minilm) is generated, not committed: scripts/gen_text_model.py checks it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-python.sh >/dev/null
py="$root/.venv/bin/python"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" scripts/gen_models.py --out "$tmp" >/dev/null

status=0
while read -r model; do
  if [ ! -d "model_repository/$model" ]; then
    echo "check_models: model_repository/$model is missing" >&2
    status=1
  elif ! diff -r "$tmp/$model" "model_repository/$model" >&2; then
    status=1
  fi
done < <("$py" scripts/gen_models.py --list)

if [ "$status" -ne 0 ]; then
  echo "check_models: model_repository/ differs from what scripts/gen_models.py generates." >&2
  echo "check_models: run '.venv/bin/python scripts/gen_models.py --verify' and commit the result." >&2
  exit 1
fi
echo "check_models: model_repository/ matches scripts/gen_models.py"

# The sequence models of Triton's client examples (client_examples_repository/), same rule.
seq="$tmp/sequence"
"$py" scripts/gen_sequence_models.py --out "$seq" >/dev/null
while read -r model; do
  if [ ! -d "client_examples_repository/$model" ]; then
    echo "check_models: client_examples_repository/$model is missing" >&2
    status=1
  elif ! diff -r "$seq/$model" "client_examples_repository/$model" >&2; then
    status=1
  fi
done < <("$py" scripts/gen_sequence_models.py --list)
if [ "$status" -ne 0 ]; then
  echo "check_models: client_examples_repository/ differs from what scripts/gen_sequence_models.py generates." >&2
  echo "check_models: run '.venv/bin/python scripts/gen_sequence_models.py --verify' and commit the result." >&2
  exit 1
fi
echo "check_models: client_examples_repository/ sequence models match scripts/gen_sequence_models.py"
