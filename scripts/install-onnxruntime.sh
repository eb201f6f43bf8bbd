#!/usr/bin/env bash
# Extracts ONNX Runtime's shared library from the PyPI wheel (no venv, no numpy) into DEST (default .ort/).
# The server and `cargo test` find it through ORT_DYLIB_PATH (.cargo/config.toml points there).
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
DEST="${1:-.ort}"
mkdir -p "$DEST"
if [ ! -f "$DEST/libonnxruntime.so.$ORT_VERSION" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==$ORT_VERSION"
  python3 - "$tmp" "$DEST" "$ORT_VERSION" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest, ver = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, f"onnxruntime-{ver}-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in (f"onnxruntime/capi/libonnxruntime.so.{ver}", "onnxruntime/capi/libonnxruntime_providers_shared.so"):
        with z.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
            shutil.copyfileobj(src, out)
PY
fi
ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEST/libonnxruntime.so"
echo "ONNX Runtime $ORT_VERSION: $(cd "$DEST" && pwd)/libonnxruntime.so.$ORT_VERSION"
