#!/usr/bin/env python3
"""Open-loop overload benchmark against a running Nereid (see scripts/overload.sh).

Measures the capacity of a model (closed loop, `--concurrency` clients), then offers 1x, 2x and
4x that rate for `--seconds` each, open loop (arrivals do not wait for answers), with two
priority classes: `--high-share` of requests at priority 1, the rest at priority 2. Per step it
prints accepted throughput, accepted p50/p99, rejections and the p99 time to a rejection,
high-priority p99, and the server's peak resident memory. Any answer other than a success or an
UNAVAILABLE rejection is counted as an error (a lost request).
"""
import argparse, asyncio, random, statistics, sys, time

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException


def inputs_for(model, rng):
    if model.startswith("resnet"):
        x = aioclient.InferInput(INPUT_NAME[0], INPUT_SHAPE[0], "FP32")
        x.set_data_from_numpy(rng.random(INPUT_SHAPE[0], dtype=np.float32))
        return [x]
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    ins = [aioclient.InferInput("INPUT0", [1, 16], "INT32"), aioclient.InferInput("INPUT1", [1, 16], "INT32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a)
    return ins


INPUT_NAME, INPUT_SHAPE = [None], [None]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def capacity(client, model, concurrency, seconds):
    rng = np.random.default_rng(0)
    done, stop = 0, time.monotonic() + seconds

    async def worker():
        nonlocal done
        while time.monotonic() < stop:
            await client.infer(model, inputs_for(model, rng))
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - t0)


async def step(client, model, rate, seconds, high_share, pid):
    rng = np.random.default_rng(1)
    ok_lat, high_lat, rej_lat, errors = [], [], [], []
    peak = rss_kb(pid)
    tasks = []

    async def one(priority):
        t = time.monotonic()
        try:
            await client.infer(model, inputs_for(model, rng), priority=priority)
            (high_lat if priority == 1 else ok_lat).append(time.monotonic() - t)
        except InferenceServerException as e:
            if e.status() == "StatusCode.UNAVAILABLE":
                rej_lat.append(time.monotonic() - t)
            else:
                errors.append(f"{e.status()}: {e.message()}")

    t0 = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        target = int((now - t0) * rate)
        while n < target:
            tasks.append(asyncio.ensure_future(one(1 if random.random() < high_share else 2)))
            n += 1
        if n % 200 == 0:
            peak = max(peak, rss_kb(pid))
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    peak = max(peak, rss_kb(pid))
    accepted = len(ok_lat) + len(high_lat)
    return {
        "offered": n / seconds, "accepted": accepted / (time.monotonic() - t0),
        "p50": pct(ok_lat + high_lat, 0.50) * 1e3, "p99": pct(ok_lat + high_lat, 0.99) * 1e3,
        "high_p99": pct(high_lat, 0.99) * 1e3, "rejected": len(rej_lat),
        "rej_p99": pct(rej_lat, 0.99) * 1e3, "errors": errors, "peak_mb": peak / 1024,
    }


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--high-share", type=float, default=0.1)
    a = p.parse_args()
    client = aioclient.InferenceServerClient(a.url)
    meta = await client.get_model_metadata(a.model, as_json=True)
    INPUT_NAME[0] = meta["inputs"][0]["name"]
    INPUT_SHAPE[0] = [1] + [int(d) for d in meta["inputs"][0]["shape"][1:]]
    cap = await capacity(client, a.model, a.concurrency, min(10.0, a.seconds))
    print(f"model {a.model}: capacity {cap:.0f} infer/s (closed loop, {a.concurrency} clients)")
    print(f"{'load':>5} {'offered/s':>9} {'accepted/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'high p99':>8} "
          f"{'rejected':>8} {'rej p99 ms':>10} {'peak MB':>7} {'errors':>6}")
    lost = 0
    for mult in (1, 2, 4):
        r = await step(client, a.model, cap * mult, a.seconds, a.high_share, a.pid)
        lost += len(r["errors"])
        print(f"{mult:>4}x {r['offered']:>9.0f} {r['accepted']:>10.0f} {r['p50']:>7.2f} {r['p99']:>7.2f} "
              f"{r['high_p99']:>8.2f} {r['rejected']:>8} {r['rej_p99']:>10.2f} {r['peak_mb']:>7.1f} {len(r['errors']):>6}")
        for e in r["errors"][:3]:
            print(f"      error: {e}")
    await client.close()
    sys.exit(1 if lost else 0)


if __name__ == "__main__":
    asyncio.run(main())
