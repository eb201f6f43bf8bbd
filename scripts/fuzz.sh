#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted bytes with AFL++ (`cargo afl`, on stable
# Rust, without its `plugins` feature). The targets live in fuzz/ (a crate outside the main build);
# their seeds in fuzz/seeds/<target>/, an AFL++ dictionary in fuzz/dict/<target>.dict where one helps.
#
#   scripts/fuzz.sh [MINUTES] [TARGET...]     default: 10 minutes each, every target
#
# Installs cargo-afl into .tools/cargo-afl and builds AFL++ into .tools/afl-data (nothing outside
# the clone). FUZZ_JOBS targets run at once (default: the number of cores). Findings go to
# .fuzz/<target>/default/{crashes,hangs}; the script prints a line per target and exits 1 if any
# target found a crash or a hang (a run over 1 s, for inputs of at most a few KiB).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

minutes="${1:-10}"
shift || true
all=(bytes_codec decompress grpc_head http_infer pbtxt)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all[@]}")
jobs="${FUZZ_JOBS:-$(nproc)}"
AFL_VERSION=0.18.2

export PATH="$root/.tools/cargo-afl/bin:$PATH" XDG_DATA_HOME="$root/.tools/afl-data"
if [ "$(cargo afl --version 2>/dev/null || true)" != "cargo-afl $AFL_VERSION" ]; then
  cargo install --locked --quiet "cargo-afl@$AFL_VERSION" --root "$root/.tools/cargo-afl"
fi
if ! cargo afl config --help >/dev/null 2>&1 || [ ! -d "$XDG_DATA_HOME/afl.rs" ]; then
  cargo afl config --build
fi
scripts/install-onnxruntime.sh .ort >/dev/null
(cd fuzz && cargo afl build --release --quiet)

# This is a shared machine: no CPU binding, no frequency check, and a core pattern of the host's
# choosing (AFL++ would refuse to start otherwise).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

run_one() {
  local t="$1" out="$root/.fuzz/$1"
  local dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-x "fuzz/dict/$t.dict")
  rm -rf "$out"
  mkdir -p "$out"
  cargo afl fuzz -V "$((minutes * 60))" -t 1000 "${dict[@]}" -i "fuzz/seeds/$t" -o "$out" \
    "fuzz/target/release/$t" >"$out/afl.log" 2>&1 || {
    echo "fuzz: $t: afl-fuzz failed; the end of its log:" >&2
    tail -n 20 "$out/afl.log" >&2
    return 1
  }
}

echo "fuzz: ${targets[*]}, $minutes min each, $jobs at a time"
pids=()
status=0
for t in "${targets[@]}"; do
  [ -d "fuzz/seeds/$t" ] || { echo "fuzz: unknown target '$t' (known: ${all[*]})" >&2; exit 1; }
  run_one "$t" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$jobs" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

for t in "${targets[@]}"; do
  stats="$root/.fuzz/$t/default/fuzzer_stats"
  [ -f "$stats" ] || { echo "fuzz: $t: no statistics (see .fuzz/$t/afl.log)"; status=1; continue; }
  get() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  crashes="$(find "$root/.fuzz/$t/default/crashes" -type f -name 'id:*' | wc -l)"
  hangs="$(find "$root/.fuzz/$t/default/hangs" -type f -name 'id:*' | wc -l)"
  printf 'fuzz: %-12s %5s min  %10s execs  %6s paths  edges %s  crashes %s  hangs %s\n' \
    "$t" "$(( $(get run_time) / 60 ))" "$(get execs_done)" "$(get corpus_count)" \
    "$(get bitmap_cvg)" "$crashes" "$hangs"
  [ "$crashes" -eq 0 ] && [ "$hangs" -eq 0 ] || status=1
done
exit "$status"
