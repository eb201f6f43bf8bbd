"""Start-to-ready and idle-memory guards of scripts/bench_startup.sh (issue 22).

  bench_startup.py RUNS IDLE_S HTTP_PORT -- SERVER ARGS...

Each run spawns the server itself (so the interpreter's own start-up is not counted), then polls
`GET /v2/health/ready` about every millisecond over one kept-alive HTTP/1.1 connection (a new
connection only while the listener is not up yet or after the server closed one). Start to ready
is the time from just before the spawn to the first 200. The idle RSS is VmRSS from
/proc/<pid>/status IDLE_S seconds after ready, with no request in between. The server is then
stopped with SIGTERM. Prints one line per run and one JSON line at the end.
"""

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time


def vm_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_run(cmd, port, idle_s, log):
    conn = None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"bench_startup: the server exited with {proc.returncode} before ready")
            if time.monotonic() - t0 > 60:
                sys.exit("bench_startup: not ready after 60 s")
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.connect()
                conn.request("GET", "/v2/health/ready")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    ready = time.monotonic() - t0
                    break
                if resp.will_close:
                    conn.close()
                    conn = None
            except (ConnectionError, OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.001)
        conn.close()
        time.sleep(idle_s)
        rss = vm_rss_mb(proc.pid)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return ready * 1e3, rss


def main(argv):
    if len(argv) < 6 or argv[4] != "--":
        sys.exit(__doc__)
    runs, idle_s, port, cmd = int(argv[1]), float(argv[2]), int(argv[3]), argv[5:]
    out = os.environ.get("BENCH_STARTUP_LOG", os.devnull)
    ready, rss = [], []
    with open(out, "ab") as log:
        for i in range(runs):
            r, m = one_run(cmd, port, idle_s, log)
            ready.append(r)
            rss.append(m)
            print(f"  run {i + 1}: ready in {r:.1f} ms, idle RSS {m:.1f} MB", flush=True)
    print(json.dumps({"ready_ms": ready, "rss_mb": rss,
                      "ready_median_ms": statistics.median(ready), "rss_median_mb": statistics.median(rss)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
