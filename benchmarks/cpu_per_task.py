"""CPU time per tiny task, per process of the runtime (driver, GCS, raylet, workers).

    python benchmarks/cpu_per_task.py [--tasks 10000] [--num-cpus 2]

CPU seconds (user + system, from psutil) of the driver and of every process it started,
before and after a batch of `f.remote()` calls, divided by the number of tasks. Less noisy
than throughput on a shared machine: other jobs slow a run but do not add to its CPU time.
"""

from __future__ import annotations

import argparse
import time

import psutil


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--num-cpus", type=int, default=2)
    a = p.parse_args()

    import zray

    zray.init(num_cpus=a.num_cpus)

    @zray.remote
    def f():
        return 1

    zray.get([f.remote() for _ in range(500)])  # warm: leases held, functions exported
    me = psutil.Process()

    def cpu() -> dict:
        out = {}
        for proc in [me, *me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = (" ".join(proc.cmdline())[:60], t.user + t.system)
            except psutil.Error:
                pass
        return out

    before = cpu()
    t0 = time.perf_counter()
    zray.get([f.remote() for _ in range(a.tasks)])
    elapsed = time.perf_counter() - t0
    after = cpu()
    print(f"{a.tasks} tasks in {elapsed:.2f} s: {a.tasks / elapsed:.0f} tasks/s")
    for pid, (name, t) in after.items():
        if pid in before:
            d = t - before[pid][1]
            if d > 0.005:
                print(f"{pid:>8} {d / a.tasks * 1e6:8.1f} us/task  {name}")
    zray.shutdown()


if __name__ == "__main__":
    main()
