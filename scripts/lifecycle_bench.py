#!/usr/bin/env python3
"""Lifecycle checks against a running Nereid in explicit mode (see scripts/lifecycle_bench.sh).

1. Reload under load: 8 client threads infer on `simple` in a loop while the model is reloaded
   N times (each reload carries a config override, so it is a real reload); every request must
   succeed with the right result.
2. Load/unload cycles: `simple_nobatch` is loaded and unloaded C times; the server's resident
   memory after cycle 1 and after the last cycle must stay within 5%.
"""
import argparse, json, sys, threading, time

import numpy as np
import tritonclient.grpc as grpcclient


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def simple_inputs(seed):
    a = (np.arange(16, dtype=np.int32) + seed).reshape(1, 16)
    b = np.full((1, 16), seed % 7, dtype=np.int32)
    ins = [grpcclient.InferInput("INPUT0", [1, 16], "INT32"), grpcclient.InferInput("INPUT1", [1, 16], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b)
    return ins, a + b


def reload_under_load(url, reloads):
    stop = threading.Event()
    ok, failures = [0] * 8, []

    def client(i):
        c = grpcclient.InferenceServerClient(url)
        n = 0
        while not stop.is_set():
            ins, want = simple_inputs(i * 1000 + n)
            n += 1
            try:
                got = c.infer("simple", ins).as_numpy("OUTPUT0")
                if np.array_equal(got, want):
                    ok[i] += 1
                else:
                    failures.append("wrong result")
            except Exception as e:  # every failure is reported, none is retried
                failures.append(str(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    admin = grpcclient.InferenceServerClient(url)
    config = admin.get_model_config("simple", as_json=True)["config"]
    t0 = time.monotonic()
    for r in range(reloads):
        time.sleep(0.2)
        config["instance_group"] = [{"count": 1 + r % 2, "kind": "KIND_CPU"}]
        admin.load_model("simple", config=json.dumps(config))
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    print(f"reload under load: {reloads} reloads in {elapsed:.1f} s, 8 clients, "
          f"{sum(ok)} requests succeeded, {len(failures)} failed")
    for f in failures[:5]:
        print(f"  failure: {f}")
    return not failures


def load_cycles(url, pid, cycles):
    c = grpcclient.InferenceServerClient(url)
    after_first = None
    t0 = time.monotonic()
    for i in range(cycles):
        c.load_model("simple_nobatch")
        ins = [grpcclient.InferInput(n, [16], "INT32") for n in ("INPUT0", "INPUT1")]
        for x in ins:
            x.set_data_from_numpy(np.arange(16, dtype=np.int32) + i)
        c.infer("simple_nobatch", ins)
        c.unload_model("simple_nobatch")
        # wait until it is really freed
        while any(m.get("state") == "UNLOADING" for m in c.get_model_repository_index(as_json=True).get("models", [])):
            time.sleep(0.005)
        if i == 0:
            after_first = rss_kb(pid)
    last = rss_kb(pid)
    growth = (last - after_first) / after_first * 100
    print(f"load/unload cycles: {cycles} in {time.monotonic() - t0:.1f} s; RSS after cycle 1 "
          f"{after_first / 1024:.1f} MB, after cycle {cycles} {last / 1024:.1f} MB ({growth:+.2f}%, limit 5%)")
    return abs(growth) <= 5.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--reloads", type=int, default=10)
    p.add_argument("--cycles", type=int, default=200)
    a = p.parse_args()
    good = reload_under_load(a.url, a.reloads)
    good = load_cycles(a.url, a.pid, a.cycles) and good
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
