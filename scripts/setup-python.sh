#!/usr/bin/env bash
# Creates .venv/ with the pinned Python tooling from scripts/requirements.txt.
# Idempotent: skips pip entirely when the stamp matches the requirements hash.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/scripts/requirements.txt"
stamp="$venv/.requirements.sha256"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup-python: .venv up to date"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-virtualenv -r "$req"
# A stale stamp must not survive a failed install, so it is written last.
echo "$want" > "$stamp"
echo "setup-python: installed $(grep -c '==' "$req") pinned packages into .venv"
