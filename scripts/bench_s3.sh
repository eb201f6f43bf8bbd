#!/usr/bin/env bash
# Time to ready for the bundled model_repository/: from disk, against from a local
# S3-compatible server (moto, scripts/requirements.txt) with a cold cache (every model
# downloaded) and with a warm one (the cached copies of the same listing reused). The time runs
# from the server's exec to the first 200 from /v2/health/ready; each case runs BENCH_RUNS times
# and the median is printed.
#
#   NEREID_BIN   server binary (default target/debug/nereid; build it first)
#   BENCH_RUNS   runs per case (default 5)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup-python.sh >/dev/null
export NEREID_BIN="${NEREID_BIN:-$root/target/debug/nereid}"
export BENCH_RUNS="${BENCH_RUNS:-5}"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$root/.ort/libonnxruntime.so.1.31.1}"

exec .venv/bin/python - <<'PY'
import os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

import boto3

root, binary, runs = os.getcwd(), os.environ["NEREID_BIN"], int(os.environ["BENCH_RUNS"])

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_http(url, proc=None, limit=120):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.005)
    sys.exit(f"no answer from {url}")

moto_port = free_port()
moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    wait_http(f"http://127.0.0.1:{moto_port}/moto-api/")
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{moto_port}", aws_access_key_id="bench",
                      aws_secret_access_key="bench", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    repo, files, size = os.path.join(root, "model_repository"), 0, 0
    for d, _, names in os.walk(repo):
        for n in names:
            p = os.path.join(d, n)
            s3.upload_file(p, "models", "repo/" + os.path.relpath(p, repo))
            files, size = files + 1, size + os.path.getsize(p)
    print(f"model_repository/: {files} files, {size} bytes; {runs} runs per case")

    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")

    def time_to_ready(repository, cache):
        http = free_port()
        t0 = time.monotonic()
        proc = subprocess.Popen([binary, "--model-repository", repository, "--model-cache-dir", cache,
                                 "--http-port", str(http), "--grpc-port", "0", "--metrics-port", "0"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{http}/v2/health/ready", proc)
            return time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait()

    url = f"s3://127.0.0.1:{moto_port}/models/repo"
    work = tempfile.mkdtemp(prefix="nereid-bench-s3-")
    warm = os.path.join(work, "warm")
    cases = {"disk": [], "s3, cold cache": [], "s3, warm cache": []}
    time_to_ready(url, warm)  # fills the warm cache
    for i in range(runs):
        cases["disk"].append(time_to_ready(repo, os.path.join(work, "unused")))
        cold = os.path.join(work, f"cold{i}")
        cases["s3, cold cache"].append(time_to_ready(url, cold))
        shutil.rmtree(cold, ignore_errors=True)
        cases["s3, warm cache"].append(time_to_ready(url, warm))
    shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(cases["disk"])
    for name, t in cases.items():
        med = statistics.median(t)
        print(f"{name:16s} median {med * 1000:7.0f} ms  (min {min(t) * 1000:.0f}, max {max(t) * 1000:.0f})  x{med / base:.2f} of disk")
finally:
    moto.terminate()
    moto.wait()
PY
