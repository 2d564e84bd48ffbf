"""What securing the tcp wire costs: cross-node small messages and large pickled values.

    python benchmarks/wire_security.py [--tasks 10000] [--calls 2000] [--mb 64] [--reps 3]

A test cluster of two raylets on 127.0.0.1 (`zray.cluster_utils.Cluster`): a head with
no CPUs (where the driver runs) and a worker node with 2, so every task, actor call and
reply crosses tcp between the driver and a worker on the other raylet:

- `tasks`: 10,000 tiny tasks (`f(i) -> i`, SPREAD), submitted at once; tasks/s.
- `actor rtt`: one call at a time to an actor on the other node; microseconds per call
  (a PUSH_TASK and a TASK_REPLY over tcp each).
- `pickled`: `zray.get` of a 64 MB `bytes` made on the other node. Unlike a numpy
  array's buffer, `bytes` pickles in-band: the whole value is the pickle stream, which
  travels over ZeroMQ (the bulk plane only carries out-of-band buffers); MB/s.

Every figure is the median over `--reps` runs (each run in the same cluster, after a
warm-up). Run it before and after a change to the wire, with PYTHONPATH set to the tree.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--mb", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args()

    import zray
    from zray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    c.add_node(num_cpus=2, resources={"far": 2})
    c.connect()
    try:
        @zray.remote(scheduling_strategy="SPREAD")
        def f(i):
            return i

        @zray.remote(num_cpus=0, resources={"far": 1})
        class A:
            def ping(self, x):
                return x

        @zray.remote(num_cpus=0, resources={"far": 1})
        def blob(n, seed):
            return os.urandom(16) * (n // 16) + bytes([seed % 256])

        assert zray.get([f.remote(i) for i in range(200)]) == list(range(200))
        actor = A.remote()
        zray.get(actor.ping.remote(0))
        n = a.mb * 1_000_000
        zray.get(blob.remote(1 << 20, 0))
        out: dict[str, list[float]] = {"tasks_per_s": [], "actor_rtt_us": [], "pickled_MB_s": []}
        for r in range(a.reps):
            t0 = time.perf_counter()
            assert zray.get([f.remote(i) for i in range(a.tasks)]) == list(range(a.tasks))
            out["tasks_per_s"].append(a.tasks / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i in range(a.calls):
                zray.get(actor.ping.remote(i))
            out["actor_rtt_us"].append((time.perf_counter() - t0) / a.calls * 1e6)
            ref = blob.remote(n, r + 1)
            zray.wait([ref], fetch_local=False)
            t0 = time.perf_counter()
            v = zray.get(ref)
            out["pickled_MB_s"].append(len(v) / 1e6 / (time.perf_counter() - t0))
            del v, ref
        res = {k: round(statistics.median(v), 1) for k, v in out.items()}
        res["all"] = {k: [round(x, 1) for x in v] for k, v in out.items()}
        print(json.dumps(res))
    finally:
        zray.shutdown()
        c.shutdown()


if __name__ == "__main__":
    main()
