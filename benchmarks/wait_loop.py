"""Cost of `ready, not_ready = wait(not_ready)` in a loop, apart from the tasks.

    python benchmarks/wait_loop.py [--refs 1000] [--repeat 5]

Submits --refs tiny tasks, gets them all (so every ref is ready), then times
--refs calls of `wait` over the shrinking list, and prints the median seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--refs", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()

    import zray

    zray.init(num_cpus=2)

    @zray.remote
    def small_value():
        return b"ok"

    times = []
    for _ in range(a.repeat):
        refs = [small_value.remote() for _ in range(a.refs)]
        zray.get(refs)
        t0 = time.perf_counter()
        not_ready = refs
        while not_ready:
            _, not_ready = zray.wait(not_ready)
        times.append(time.perf_counter() - t0)
    print(f"{a.refs} waits over {a.refs} ready refs: median {statistics.median(times) * 1e3:.1f} ms")
    zray.shutdown()


if __name__ == "__main__":
    main()
