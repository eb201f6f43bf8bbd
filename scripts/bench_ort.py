#!/usr/bin/env python3
"""Raw ONNX Runtime in-process throughput: the ceiling a server running the same model can reach.

    scripts/bench_ort.py --model PATH [--threads N] [--batches 1,2,4,8] [--seconds S] [--warmup K]
                         [--sessions K] [--json]

One session with the options Nereid gives an instance (intra_op_num_threads = N, inter_op 1,
sequential execution, graph optimization level ALL, CPU provider). For each batch size: K warm-up
runs, then back-to-back runs on one random input of that batch for S seconds (at least 3 runs).
Prints a table of rows/s (= inferences/s), mean and p50/p99 latency per run; with --json the last
line is a JSON object {"threads": N, "results": [{"batch": b, "infer_per_sec": ..., ...}, ...],
"best": {...}}.

--sessions K (default 1) runs K such sessions at once, one Python thread each (ONNX Runtime releases
the GIL while it runs), like a server with instance_group count K; throughput is their sum.
"""

import argparse
import json
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

NP_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16, "tensor(int32)": np.int32, "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


def make_inputs(sess, batch, rng):
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in NP_TYPES:
            sys.exit(f"bench_ort: input {i.name} has unsupported type {i.type}")
        shape = list(i.shape)
        if not shape:
            sys.exit(f"bench_ort: input {i.name} is a scalar; cannot batch")
        if isinstance(shape[0], int) and shape[0] > 0 and shape[0] != batch:
            sys.exit(f"bench_ort: input {i.name} has a fixed first dimension {shape[0]}; cannot run batch {batch}")
        dims = [batch] + [d if isinstance(d, int) and d > 0 else 1 for d in shape[1:]]
        dtype = NP_TYPES[i.type]
        if np.issubdtype(dtype, np.floating):
            feeds[i.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[i.name] = rng.integers(0, 2, dims).astype(dtype)
    return feeds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (default 2)")
    ap.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes (default 1,2,4,8)")
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per batch size (default 5)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per batch size first (default 3)")
    ap.add_argument("--sessions", type=int, default=1, help="concurrent sessions, one thread each (default 1)")
    ap.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    t0 = time.monotonic()
    sessions = [ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"]) for _ in range(args.sessions)]
    load_s = time.monotonic() - t0
    rng = np.random.default_rng(0)

    def worker(sess, feeds, start_at, lat, ends):
        for _ in range(args.warmup):
            sess.run(None, feeds)
        barrier.wait()
        start = start_at[0]
        while True:
            t = time.perf_counter()
            sess.run(None, feeds)
            now = time.perf_counter()
            lat.append(now - t)
            if now - start >= args.seconds and len(lat) >= 3:
                break
        ends.append(now)

    results = []
    for b in batches:
        feeds = make_inputs(sessions[0], b, rng)
        lats = [[] for _ in sessions]
        ends, start_at = [], [0.0]
        barrier = threading.Barrier(len(sessions), action=lambda: start_at.__setitem__(0, time.perf_counter()))
        threads = [threading.Thread(target=worker, args=(s, feeds, start_at, lat, ends)) for s, lat in zip(sessions, lats)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = max(ends) - start_at[0]
        runs = sum(len(lat) for lat in lats)
        lat_ms = np.concatenate([np.array(lat) for lat in lats]) * 1000
        results.append({
            "batch": b, "runs": runs, "seconds": round(elapsed, 3),
            "infer_per_sec": round(b * runs / elapsed, 3),
            "mean_ms": round(float(lat_ms.mean()), 3),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
        })

    layout = f"{args.sessions} sessions x " if args.sessions > 1 else ""
    print(f"raw ONNX Runtime {ort.__version__} in-process: {args.model}, {layout}intra_op {args.threads}, inter_op 1, "
          f"sequential, optimization ALL (session load {load_s:.1f} s)")
    print(f"{'batch':>5}  {'infer/s':>9}  {'runs':>5}  {'mean ms':>9}  {'p50 ms':>9}  {'p99 ms':>9}")
    for r in results:
        print(f"{r['batch']:>5}  {r['infer_per_sec']:>9.1f}  {r['runs']:>5}  {r['mean_ms']:>9.2f}"
              f"  {r['p50_ms']:>9.2f}  {r['p99_ms']:>9.2f}")
    best = max(results, key=lambda r: r["infer_per_sec"])
    print(f"best: batch {best['batch']} at {best['infer_per_sec']:.1f} infer/s")
    if args.json:
        print(json.dumps({"model": args.model, "threads": args.threads, "sessions": args.sessions,
                          "onnxruntime": ort.__version__,
                          "results": results, "best": best}))


if __name__ == "__main__":
    main()
