"""One driver, many tiny tasks: driver memory per pending task and throughput at scale.

    python benchmarks/scale.py [--sizes 10000 200000] [--num-cpus 2] [--repeat 1]

Issue 5 asks: one driver submits 200,000 tiny tasks and gets every result right, with the
driver's memory per pending task under 5 KB and throughput not falling by more than a
quarter between 10,000 and 200,000 tasks.

Each size runs in a fresh driver process (its own `zray.init(num_cpus=...)`), so one run's
heap growth does not flatter or burden the next. In that process, after a warm-up of 500
tasks (leases held, function exported) and a `gc.collect()`:

  1. RSS before (psutil);
  2. `refs = [f.remote(i) for i in range(n)]` as fast as possible, timed;
  3. RSS right after the last `.remote()` returns, and the number still pending then
     (`zray.wait(refs, num_returns=n, timeout=0)`, counted after the RSS sample);
  4. `zray.get(refs)`, every value checked (`f(i) == i`).

Memory per pending task = (RSS after submit - RSS before) / pending; also shown per
submitted task (a lower figure, since finished tasks count in the divisor; the per-pending
figure is the upper bound the goal is about). Throughput = n / (submit + get) seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

KB = 1024


def run_one(n: int, num_cpus: int) -> dict:
    import psutil

    import zray as ray

    ray.init(num_cpus=num_cpus)

    @ray.remote
    def f(i):
        return i

    assert ray.get([f.remote(i) for i in range(500)]) == list(range(500))  # warm-up
    gc.collect()
    me = psutil.Process()
    rss0 = me.memory_info().rss

    t0 = time.perf_counter()
    refs = [f.remote(i) for i in range(n)]
    t1 = time.perf_counter()
    rss1 = me.memory_info().rss
    ready, not_ready = ray.wait(refs, num_returns=n, timeout=0)
    pending = len(not_ready)
    del ready, not_ready

    t2 = time.perf_counter()
    values = ray.get(refs)
    t3 = time.perf_counter()
    rss2 = me.memory_info().rss
    bad = sum(1 for i, v in enumerate(values) if v != i)
    if len(values) != n:
        bad += abs(n - len(values))
    ray.shutdown()
    return {
        "n": n,
        "rss_before": rss0,
        "rss_after_submit": rss1,
        "rss_after_get": rss2,
        "pending": pending,
        "submit_s": t1 - t0,
        "get_s": t3 - t2,
        "total_s": (t1 - t0) + (t3 - t2),
        "wrong": bad,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs per size (fresh process each)")
    p.add_argument("--timeout", type=float, default=240, help="seconds per run before it counts as hung")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: run one size
    a = p.parse_args()

    if a.one is not None:
        print(json.dumps(run_one(a.one, a.num_cpus)), flush=True)
        return

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    results: dict[int, list[dict]] = {n: [] for n in a.sizes}
    for _ in range(a.repeat):
        for n in a.sizes:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n), "--num-cpus", str(a.num_cpus)]
            try:
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                print(f"n={n}: HUNG (no result within {a.timeout:.0f} s)", file=sys.stderr)
                sys.exit(2)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode != 0 or not lines:
                sys.stderr.write(out.stderr[-4000:])
                print(f"n={n}: driver failed (exit {out.returncode})", file=sys.stderr)
                sys.exit(1)
            results[n].append(json.loads(lines[-1]))

    print(f"{'tasks':>8} {'submit s':>9} {'get s':>7} {'tasks/s':>8} {'pending':>8} "
          f"{'dRSS MiB':>9} {'B/pending':>10} {'B/submitted':>12} {'wrong':>6}")
    best: dict[int, dict] = {}
    for n in a.sizes:
        for r in results[n]:
            d = r["rss_after_submit"] - r["rss_before"]
            r["rate"] = n / r["total_s"]
            r["per_pending"] = d / max(r["pending"], 1)
            r["per_task"] = d / n
            print(f"{n:>8} {r['submit_s']:9.2f} {r['get_s']:7.2f} {r['rate']:8.0f} {r['pending']:>8} "
                  f"{d / KB / KB:9.1f} {r['per_pending']:10.0f} {r['per_task']:12.0f} {r['wrong']:>6}")
        # median run by rate, for the summary
        runs = sorted(results[n], key=lambda r: r["rate"])
        best[n] = runs[len(runs) // 2]

    ok = all(r["wrong"] == 0 for rs in results.values() for r in rs)
    print(f"\nall results correct: {ok}")
    big = max(a.sizes)
    small = min(a.sizes)
    pp = best[big]["per_pending"]
    print(f"memory per pending task at {big}: {pp / KB:.2f} KB (goal < 5 KB)"
          f" -> {'ok' if pp < 5 * KB else 'MISSED'}")
    if big != small:
        ratio = best[big]["rate"] / best[small]["rate"]
        print(f"throughput {big} / {small}: {ratio:.2f} (goal >= 0.75)"
              f" -> {'ok' if ratio >= 0.75 else 'MISSED'}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
