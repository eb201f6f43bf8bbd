#!/usr/bin/env python3
"""Rolling update under load, on this machine: the role a Kubernetes Service and readiness
gates play is played by HAProxy (Debian's package).

Two Nereid replicas behind HAProxy, which balances gRPC (h2c) and health-checks
/v2/health/ready every 300 ms (fall 1, rise 1). Four clients (tritonclient.grpc) send `simple`
inferences steadily through HAProxy. Then, as a rollout with maxSurge 1 does: SIGTERM the
first replica, start a new one in its place, wait until the old one has exited and HAProxy
sees the new one up; then the same for the second. Every request must succeed.

Run once per mode: `--shutdown-delay 1` (readiness fails, HAProxy stops sending before the
connections close) and `--shutdown-delay 0` (the GOAWAY drain: streams HAProxy opened before
the GOAWAY finish, later ones are refused at the HTTP/2 level and HAProxy retries them on the
other replica, `retry-on refused-stream conn-failure` with `option redispatch`).

Every wait is on observable state (a replica's readiness, HAProxy's server status, the
clients' success counts, a process exit) and bounded; the client loops stop by themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
BOUND = 120.0  # seconds: turns a hang into a failure, never a pass condition


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(what: str, cond, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"rolling_update: never happened: {what}")
        time.sleep(0.02)


class Replica:
    def __init__(self, name: str, binary: str, delay: int, logdir: Path,
                 ports: tuple[int, int] | None = None):
        self.name = name
        self.grpc, self.http = ports or (free_port(), free_port())
        self.log = open(logdir / f"{name}.log", "w")
        self.proc = subprocess.Popen(
            [binary, f"--model-repository={ROOT / 'model_repository'}",
             "--model-control-mode=explicit", "--load-model=simple",
             f"--grpc-port={self.grpc}", f"--http-port={self.http}",
             "--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--allow-metrics=false",
             f"--shutdown-delay-secs={delay}", "--exit-timeout-secs=30"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise SystemExit(f"rolling_update: {self.name} exited early ({self.proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def exited(self) -> bool:
        return self.proc.poll() is not None


class HAProxy:
    def __init__(self, slots: list[tuple[str, int, int]], workdir: Path):
        self.front = free_port()
        self.sock = workdir / "haproxy.sock"
        servers = "\n".join(
            f"  server {name} 127.0.0.1:{grpc} check port {http}" for name, grpc, http in slots
        )
        cfg = f"""
global
  stats socket {self.sock} mode 600 level admin
  maxconn 2000

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout check 2s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response junk-response 0rtt-rejected 502 503

frontend grpc
  bind 127.0.0.1:{self.front} proto h2
  default_backend nereid

backend nereid
  balance roundrobin
  # The check speaks HTTP/1.1 to the HTTP port (`check port`), the traffic h2c to gRPC's.
  option httpchk
  http-check connect proto h1
  http-check send meth GET uri /v2/health/ready ver HTTP/1.1 hdr host localhost
  http-check expect status 200
  default-server inter 300ms fall 1 rise 1 proto h2
{servers}
"""
        self.cfg = workdir / "haproxy.cfg"
        self.cfg.write_text(cfg)
        self.log = open(workdir / "haproxy.log", "w")
        check = subprocess.run(["haproxy", "-c", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise SystemExit(f"rolling_update: haproxy config: {check.stdout}{check.stderr}")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def status(self) -> dict[str, str]:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(self.sock))
                s.sendall(b"show stat\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return {}
        out = {}
        lines = data.decode().splitlines()
        if not lines:
            return {}
        head = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "nereid" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row.get("status", "")
        return out

    def up(self, name: str) -> bool:
        return self.status().get(name, "").startswith("UP")

    def down(self, name: str) -> bool:
        return self.status().get(name, "").startswith("DOWN")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def client_loop(i: int, front: int, ok, failed, stop, errors) -> None:
    """One client: its own gRPC channel to HAProxy, one request at a time. Runs in a process
    of its own (spawned), so the parent, which forks replicas, never holds gRPC threads."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{front}")
    a = np.arange(16, dtype=np.int32).reshape(1, 16) + i
    b = np.ones((1, 16), dtype=np.int32)
    inputs = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
              grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    deadline = time.monotonic() + 10 * BOUND
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            r = client.infer("simple", inputs, client_timeout=30)
            if not np.array_equal(r.as_numpy("OUTPUT0"), a + b):
                raise ValueError("wrong OUTPUT0")
            with ok.get_lock():
                ok[i] += 1
        except Exception as e:  # noqa: BLE001 - every failure counts the same
            with failed.get_lock():
                failed[i] += 1
            errors.put(f"client {i}: {type(e).__name__}: {e}")
    client.close()


class Clients:
    """Four clients sending steadily through HAProxy, with shared success/failure counts."""

    def __init__(self, front: int, n: int = 4):
        ctx = mp.get_context("spawn")
        self.ok = ctx.Array("q", n)
        self.failed = ctx.Array("q", n)
        self.stop = ctx.Event()
        self.errors_q = ctx.Queue()
        self.procs = [ctx.Process(target=client_loop, args=(i, front, self.ok, self.failed, self.stop, self.errors_q),
                                  daemon=True) for i in range(n)]
        for p in self.procs:
            p.start()

    def total(self) -> int:
        return sum(self.ok[:]) + sum(self.failed[:])

    def progressed(self, each: int):
        """A condition: every client has `each` more successes than now."""
        start = list(self.ok[:])
        return lambda: all(ok >= s + each for ok, s in zip(self.ok[:], start))

    def errors(self) -> list[str]:
        out = []
        while not self.errors_q.empty() and len(out) < 20:
            out.append(self.errors_q.get_nowait())
        return out

    def finish(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def run(binary: str, delay: int, workdir: Path) -> tuple[int, int, list[str]]:
    replicas = {"a": Replica("a", binary, delay, workdir), "b": Replica("b", binary, delay, workdir)}
    # The replacements' ports are known up front, so HAProxy has all four servers; those
    # not started yet are DOWN (their checks are refused) until they are ready.
    spares = {"a": (free_port(), free_port()), "b": (free_port(), free_port())}
    slots = [("a", replicas["a"].grpc, replicas["a"].http), ("b", replicas["b"].grpc, replicas["b"].http),
             ("a2", *spares["a"]), ("b2", *spares["b"])]
    procs = list(replicas.values())
    haproxy = None
    clients = None
    try:
        for r in replicas.values():
            wait(f"replica {r.name} ready", r.ready)
        haproxy = HAProxy(slots, workdir)
        wait("HAProxy sees a and b up, a2 and b2 down",
             lambda: haproxy.up("a") and haproxy.up("b") and haproxy.down("a2") and haproxy.down("b2"))
        clients = Clients(haproxy.front)
        wait("every client is served", clients.progressed(20))
        for old in ("a", "b"):
            r = replicas[old]
            r.sigterm()
            # In its place: the spare slot HAProxy already lists.
            new = Replica(f"{old}2", binary, delay, workdir, spares[old])
            procs.append(new)
            wait(f"replica {old} exits", r.exited)
            if r.proc.returncode != 0:
                raise SystemExit(f"rolling_update: replica {old} exited {r.proc.returncode}")
            wait(f"replica {old}2 ready", new.ready)
            wait(f"HAProxy sees {old}2 up and {old} down", lambda: haproxy.up(f"{old}2") and haproxy.down(old))
            wait(f"every client is served after replacing {old}", clients.progressed(20))
        clients.finish()
        return sum(clients.failed[:]), clients.total(), clients.errors()
    finally:
        if clients is not None:
            clients.finish()
        if haproxy is not None:
            haproxy.stop()
        for p in procs:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
                try:
                    p.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shutdown-delay", type=int, action="append",
                    help="seconds of --shutdown-delay-secs; repeatable (default: 1 then 0)")
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args()
    binary = os.environ.get("NEREID_BIN") or str(ROOT / "target" / "debug" / "nereid")
    if shutil.which("haproxy") is None:
        raise SystemExit("rolling_update: haproxy is not installed (apt-get install haproxy)")
    failed_any = False
    for delay in args.shutdown_delay or [1, 0]:
        workdir = Path(tempfile.mkdtemp(prefix=f"nereid-rolling-{delay}-"))
        failed, total, errors = run(binary, delay, workdir)
        mode = f"shutdown delay {delay} s" + (" (GOAWAY drain + HAProxy retries)" if delay == 0 else "")
        print(f"rolling update, {mode}: {failed} failed / {total} requests")
        for e in errors:
            print(f"  {e}")
        if failed:
            failed_any = True
            print(f"  logs: {workdir}")
        elif not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed_any else 0)


if __name__ == "__main__":
    main()
