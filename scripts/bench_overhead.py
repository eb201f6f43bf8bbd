"""Client-side helper of scripts/bench_overhead.sh.

  bench_overhead.py ready PORT MODEL     wait (60 s at most) until MODEL is ready over gRPC
  bench_overhead.py count PORT MODEL     print the successes ModelStatistics counts for MODEL
  bench_overhead.py report OUT REPEATS CLK_TCK DELAY_US PROTO...
                                         print one table per protocol from the files in OUT;
                                         exits 1 when a target is missed

The report reads, per repeat r and protocol p (grpc, http): {floor,nereid}-p-c1-r.csv and
-c16-r.csv (perf_analyzer), {floor,nereid}-p-cpu-r.txt (server ticks and requests over the c1
and c16 runs), nereid-p-delay-c1-r.csv, and nereid-p-metrics-r.txt (a /metrics scrape after that
protocol's runs; scrapes are cumulative, so a protocol's batcher lateness is its scrape minus the
previous protocol's).
"""

import csv
import os
import re
import statistics
import sys
import time


def ready(port, model):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.is_model_ready(model):
                return 0
        except Exception:
            pass
        time.sleep(0.02)
    sys.exit(f"bench_overhead: {model} not ready on port {port}")


def count(port, model):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    stats = client.get_inference_statistics(model, as_json=True)
    print(sum(int(s["inference_stats"].get("success", {}).get("count", 0)) for s in stats["model_stats"]))
    return 0


def row(out, name):
    path = os.path.join(out, name + ".csv")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return rows[0] if rows else None


def p50(out, name):
    r = row(out, name)
    return int(r["p50 latency"]) if r else None


def tput(out, name):
    r = row(out, name)
    return float(r["Inferences/Second"]) if r else None


def cpu_us(out, name, clk_tck):
    path = os.path.join(out, name + ".txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        ticks, n = map(int, f.read().split())
    return ticks * 1e6 / clk_tck / n if n > 0 else None


def lateness_buckets(out, name):
    """Cumulative buckets (upper bound s, count) of nereid_batcher_lateness_seconds for simple_delay."""
    path = os.path.join(out, name + ".txt")
    if not os.path.exists(path):
        return None
    buckets = []
    pat = re.compile(r"^nereid_batcher_lateness_seconds_bucket\{(.*)\} (\S+)$")
    for line in open(path):
        m = pat.match(line.strip())
        if m and 'model="simple_delay"' in m.group(1):
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(m.group(2))))
    return sorted(buckets) or None


def lateness(buckets, before):
    """p50, p99 (µs) of the buckets minus `before` (an earlier scrape, or None), interpolated."""
    if not buckets:
        return None
    if before:
        was = dict(before)
        buckets = [(le, n - was.get(le, 0.0)) for le, n in buckets]
    if buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]

    def q(frac):
        want, lo, below = frac * total, 0.0, 0.0
        for le, n in buckets:
            if n >= want:
                if le == float("inf"):
                    return lo * 1e6
                span = n - below
                return (lo + (le - lo) * ((want - below) / span if span else 1)) * 1e6
            lo, below = le, n
        return lo * 1e6

    return q(0.5), q(0.99)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return b / a if a and b is not None else None


def fmt(x, unit="", digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}{unit}"


def verdict(value, limit, at_most):
    """'met' / 'NOT met' for a figure against its target; a missing figure is not met."""
    if value is None:
        return "NOT met (no figure)", False
    good = value <= limit if at_most else value >= limit
    return ("met" if good else "NOT met"), good


def report(out, repeats, clk_tck, delay_us, protocols):
    """Prints the tables; returns 1 when any target is missed (or a figure is missing), else 0."""
    reps = range(1, repeats + 1)
    previous = {r: None for r in reps}  # the previous protocol's scrape, per repeat
    missed = []
    for proto in protocols:
        fc = [cpu_us(out, f"floor-{proto}-cpu-r{r}", clk_tck) for r in reps]
        nc = [cpu_us(out, f"nereid-{proto}-cpu-r{r}", clk_tck) for r in reps]
        fp = [p50(out, f"floor-{proto}-c1-r{r}") for r in reps]
        np_ = [p50(out, f"nereid-{proto}-c1-r{r}") for r in reps]
        ft = [tput(out, f"floor-{proto}-c16-r{r}") for r in reps]
        nt = [tput(out, f"nereid-{proto}-c16-r{r}") for r in reps]
        dp = [p50(out, f"nereid-{proto}-delay-c1-r{r}") for r in reps]
        late = []
        for r in reps:
            scrape = lateness_buckets(out, f"nereid-{proto}-metrics-r{r}")
            late.append(lateness(scrape, previous[r]))
            previous[r] = scrape

        cpu_r = med([ratio(a, b) for a, b in zip(fc, nc)])
        p50_r = med([ratio(a, b) for a, b in zip(fp, np_)])
        c16_r = med([ratio(a, b) for a, b in zip(ft, nt)])
        extra = med([b - a if a is not None and b is not None else None for a, b in zip(np_, dp)])
        l50 = med([l[0] if l else None for l in late])
        l99 = med([l[1] if l else None for l in late])
        checks = {
            "cpu": verdict(cpu_r, 1.5, True),
            "p50": verdict(p50_r, 1.3, True),
            "c16": verdict(c16_r, 0.9, False),
            "delay": verdict(extra, 150, True),
            "late": (lambda a, b: (f"{a[0]} / {b[0]}", a[1] and b[1]))(
                verdict(l50, 50, True), verdict(l99, 200, True)
            ),
        }
        missed += [f"{proto} {name}" for name, (_, good) in checks.items() if not good]

        print()
        print(f"{proto}:")
        print(f"| {proto} (median of {repeats}) | floor | Nereid | ratio (median of same-repeat ratios) | target |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| server CPU per request (c1 + c16 runs) | {fmt(med(fc), ' µs')} | {fmt(med(nc), ' µs')} "
              f"| {fmt(cpu_r, '×', 2)} | ≤ 1.5×: {checks['cpu'][0]} |")
        print(f"| p50 at concurrency 1 | {fmt(med(fp), ' µs')} | {fmt(med(np_), ' µs')} "
              f"| {fmt(p50_r, '×', 2)} | ≤ 1.3×: {checks['p50'][0]} |")
        print(f"| throughput at concurrency 16 | {fmt(med(ft), '/s')} | {fmt(med(nt), '/s')} "
              f"| {fmt(c16_r, '×', 2)} | ≥ 0.9×: {checks['c16'][0]} |")
        print(f"| c1 p50 with max_queue_delay {delay_us} µs | | {fmt(med(dp), ' µs')} "
              f"| +{fmt(extra, ' µs')} over no delay | ≤ +150 µs: {checks['delay'][0]} |")
        print(f"| batcher lateness p50 / p99 (delay run) | | {fmt(l50, ' µs')} / {fmt(l99, ' µs')} | "
              f"| ≤ 50 / 200 µs: {checks['late'][0]} |")
        print()
        print(f"{proto} per repeat (floor cpu µs, nereid cpu µs, floor p50, nereid p50, floor c16/s, "
              "nereid c16/s, delay p50, lateness p50/p99):")
        for i, r in enumerate(reps):
            l = late[i]
            print(f"  {r}: {fmt(fc[i])} {fmt(nc[i])} {fmt(fp[i])} {fmt(np_[i])} {fmt(ft[i])} {fmt(nt[i])} "
                  f"{fmt(dp[i])} {fmt(l[0] if l else None)}/{fmt(l[1] if l else None)}")
    print()
    if missed:
        print(f"targets missed: {', '.join(missed)}")
        return 1
    print("every target met")
    return 0


def main(argv):
    what = argv[1] if len(argv) > 1 else ""
    if what in ("ready", "count") and len(argv) == 4:
        return (ready if what == "ready" else count)(argv[2], argv[3])
    if what == "report" and len(argv) >= 6:
        return report(argv[2], int(argv[3]), int(argv[4]), argv[5], argv[6:] or ["grpc"])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
