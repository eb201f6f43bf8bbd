#!/usr/bin/env bash
# Extracts ONNX Runtime's shared libraries from the PyPI wheel (no venv, no numpy) into DEST (default .ort/).
# The server and `cargo test` find it through ORT_DYLIB_PATH (.cargo/config.toml points there).
# ORT_PACKAGE=onnxruntime-gpu takes the CUDA build instead (Dockerfile.gpu): the same
# libonnxruntime.so plus its CUDA/TensorRT provider libraries.
set -euo pipefail
ORT_VERSION="${ORT_VERSION:-1.31.1}"
ORT_PACKAGE="${ORT_PACKAGE:-onnxruntime}"
DEST="${1:-.ort}"
mkdir -p "$DEST"
if [ ! -f "$DEST/libonnxruntime.so.$ORT_VERSION" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$ORT_PACKAGE==$ORT_VERSION"
  python3 - "$tmp" "$DEST" "$ORT_VERSION" "$ORT_PACKAGE" <<'PY'
import glob, os, re, shutil, sys, zipfile
tmp, dest, ver, pkg = sys.argv[1:]
whl = glob.glob(os.path.join(tmp, f"{pkg.replace('-', '_')}-{ver}-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if re.fullmatch(r"onnxruntime/capi/lib[^/]+\.so(\.[0-9.]+)?", n)]
    for name in names:
        with z.open(name) as src, open(os.path.join(dest, os.path.basename(name)), "wb") as out:
            shutil.copyfileobj(src, out)
PY
fi
ln -sf "libonnxruntime.so.$ORT_VERSION" "$DEST/libonnxruntime.so"
echo "ONNX Runtime $ORT_VERSION ($ORT_PACKAGE): $(cd "$DEST" && pwd)/libonnxruntime.so.$ORT_VERSION"
