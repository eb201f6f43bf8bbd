#!/usr/bin/env bash
# Proves the README's two commands work on a fresh machine of the project's kind.
#
# 1. Removes what the project's scripts install outside a clone, and prints it:
#    - every Debian package named on an `apt-get install` line in scripts/ (read from the scripts,
#      so a package added later is covered), purged together with what apt pulled in for it
#      (autoremove), and the package lists, so the scripts' own `apt-get update` runs as on a new
#      machine;
#    - tools: the scripts install none outside the clone (ONNX Runtime goes to .ort/, Python tools
#      to .venv/, perf_analyzer to .tools/). This is checked, not assumed: the folders where tools
#      land (cargo's and /usr/local's bin folders, the system Python's site-packages) are listed
#      before and after the run, and anything new there fails the check, because this script would
#      not know to remove it next time;
#    - caches: the clone builds with an empty CARGO_HOME (every crate is fetched from crates.io
#      again) and an empty pip cache.
# 2. Clones HEAD into a temporary folder (committed files only; nothing ignored is carried over) and
#    runs there, as a new user would:
#    - `scripts/test.sh` end to end;
#    - `scripts/run.sh` on free ports: /v2/health/ready must answer 200 and one `simple` inference
#      the right sums; SIGTERM must then end it with exit status 0.
#
# Root only (it removes packages). Takes about half an hour on 2 cores. CHECK_FRESH_KEEP=1 keeps
# the temporary folder (the clone, its logs) for a look afterwards.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ "$(id -u)" -eq 0 ] || { echo "check_fresh: run as root (it purges Debian packages)" >&2; exit 1; }

step() { printf '\n== check_fresh: %s\n' "$*"; }

# --- 1. what the scripts install ----------------------------------------------------------------

# The package names on every `apt-get install` line of the scripts (this one aside): the words
# after `install` up to the first redirection or command separator, options skipped.
packages=()
while IFS= read -r line; do
  rest="${line#*apt-get install}"
  for word in $rest; do
    case "$word" in
      '>'* | '2>'* | '|'* | '&&' | ';' | '||' | '#'*) break ;;
      -*) ;;
      *[!a-z0-9.+-]*)
        echo "check_fresh: cannot read a package name from '$word' in: $line" >&2
        echo "check_fresh: name Debian packages literally on apt-get install lines" >&2
        exit 1 ;;
      *) packages+=("$word") ;;
    esac
  done
done < <(grep -h --exclude=check_fresh.sh 'apt-get install' "$root"/scripts/* | grep -v '^[[:space:]]*#' || true)
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
[ "${#packages[@]}" -gt 0 ] || { echo "check_fresh: found no apt-get install line in scripts/" >&2; exit 1; }
echo "check_fresh: Debian packages the scripts install: ${packages[*]}"

step "removing them"
installed=()
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ]; then
    installed+=("$p")
  fi
done
before_pkgs="$(dpkg-query -W -f='${Package}\n' | sort)"
if [ "${#installed[@]}" -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${installed[@]}" >/dev/null
else
  echo "none of them is installed"
fi
DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -qq >/dev/null
after_pkgs="$(dpkg-query -W -f='${Package}\n' | sort)"
removed="$(comm -23 <(echo "$before_pkgs") <(echo "$after_pkgs") | tr '\n' ' ')"
echo "removed packages: ${removed:-none}"
rm -rf /var/lib/apt/lists/*
echo "removed the package lists (/var/lib/apt/lists)"
for p in "${packages[@]}"; do
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ]; then
    echo "check_fresh: $p is still installed" >&2
    exit 1
  fi
done
if command -v prometheus >/dev/null 2>&1; then
  echo "check_fresh: a prometheus binary is still on PATH: $(command -v prometheus)" >&2
  exit 1
fi

# Where a tool installed outside the clone would land.
tool_dirs=("$HOME/.cargo/bin" /usr/local/bin /usr/local/sbin /usr/local/lib)
tool_dirs+=("$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')")
list_tools() { find "${tool_dirs[@]}" -maxdepth 2 2>/dev/null | sort; }
tools_before="$(list_tools)"

# --- 2. a clean clone ---------------------------------------------------------------------------

work="$(mktemp -d /tmp/nereid-fresh.XXXXXX)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  if [ "${CHECK_FRESH_KEEP:-0}" = 1 ]; then
    echo "check_fresh: kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

git clone -q "$root" "$work/nereid"
export CARGO_HOME="$work/cargo-home" PIP_CACHE_DIR="$work/pip-cache"
unset ORT_DYLIB_PATH NEREID_BIN
clone="$work/nereid"
echo "clean clone of $(git -C "$clone" rev-parse --short HEAD) in $clone; CARGO_HOME=$CARGO_HOME"

step "README command 2: scripts/test.sh"
t0=$SECONDS
(cd "$clone" && scripts/test.sh) 2>&1 | tee "$work/test.log"
echo "check_fresh: scripts/test.sh passed in $(((SECONDS - t0) / 60)) min $(((SECONDS - t0) % 60)) s"

step "README command 1: scripts/run.sh"
ports="$(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
read -r http_port grpc_port metrics_port <<<"$ports"
t0=$SECONDS
(cd "$clone" && exec scripts/run.sh --http-port "$http_port" --grpc-port "$grpc_port" \
  --metrics-port "$metrics_port") >"$work/run.log" 2>&1 &
server_pid=$!
# run.sh builds the release binary first, then execs the server in the same process.
ready=""
while kill -0 "$server_pid" 2>/dev/null; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/v2/health/ready" || true)"
  if [ "$code" = 200 ]; then ready=1; break; fi
  sleep 1
done
if [ -z "$ready" ]; then
  echo "check_fresh: scripts/run.sh exited before the server was ready; its log:" >&2
  tail -n 40 "$work/run.log" >&2
  exit 1
fi
echo "GET /v2/health/ready -> 200 ($((SECONDS - t0)) s after scripts/run.sh started, build included)"
body='{"inputs": [
  {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]},
  {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]}]}'
answer="$(curl -s -w '\n%{http_code}' "http://127.0.0.1:$http_port/v2/models/simple/infer" -d "$body")"
echo "POST /v2/models/simple/infer -> $answer"
python3 - "$answer" <<'PY'
import json, sys
text, code = sys.argv[1].rsplit("\n", 1)
assert code == "200", f"status {code}"
outputs = {o["name"]: o["data"] for o in json.loads(text)["outputs"]}
assert outputs["OUTPUT0"] == [i + 1 for i in range(16)], outputs
assert outputs["OUTPUT1"] == [i - 1 for i in range(16)], outputs
print("check_fresh: simple returned INPUT0+INPUT1 and INPUT0-INPUT1")
PY
kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
echo "SIGTERM -> exit status $status"
[ "$status" -eq 0 ] || { tail -n 20 "$work/run.log" >&2; exit 1; }

# --- 3. nothing landed outside the clone that step 1 would not remove -----------------------------

new_tools="$(comm -13 <(echo "$tools_before") <(list_tools))"
if [ -n "$new_tools" ]; then
  echo "check_fresh: the run installed tools outside the clone, which this script does not remove:" >&2
  echo "$new_tools" >&2
  exit 1
fi
echo
echo "check_fresh: passed (Debian packages removed first: ${removed:-none}; nothing new outside the clone)"
