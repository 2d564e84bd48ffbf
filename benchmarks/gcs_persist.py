"""The cost of the GCS's durable copy (gcs.sqlite) on GCS-bound paths.

Runs in one process against a local cluster: KV puts (one synchronous round trip
each, as exporting a function does), KV puts pipelined (1000 sent, then their
replies awaited: the GCS batches their commits), and actor creation (create and
wait for a first call, in batches of 50).

    PYTHONPATH=$PWD python3 benchmarks/gcs_persist.py
    ZRAY_GCS_PERSIST=0 PYTHONPATH=$PWD python3 benchmarks/gcs_persist.py   # no sqlite

Prints one line per case: rate per second (best of 3 rounds) and the GCS process's CPU
time per operation (user + system, over the 3 rounds: robust to a loaded machine).
"""

from __future__ import annotations

import time

import zray
from zray import protocol, worker_state

N = {"kv_sync": 500, "kv_pipelined": 1000, "actors": 50}


def kv_sync(n: int = 500) -> float:
    cw = worker_state.current()
    t0 = time.perf_counter()
    for i in range(n):
        cw.request(cw.gcs, {"t": protocol.KV_PUT, "ns": "bench", "k": b"k%d" % i}, [b"x" * 200])
    return n / (time.perf_counter() - t0)


def kv_pipelined(n: int = 1000) -> float:
    import threading

    cw = worker_state.current()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda j=j: [
        cw.request(cw.gcs, {"t": protocol.KV_PUT, "ns": "bench", "k": b"p%d-%d" % (j, i)},
                   [b"x" * 200]) for i in range(n // 8)]) for j in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


@zray.remote(num_cpus=0)
class A:
    def ping(self):
        return 1


def actors(n: int = 50) -> float:
    t0 = time.perf_counter()
    hs = [A.remote() for _ in range(n)]
    zray.get([h.ping.remote() for h in hs], timeout=300)
    dt = time.perf_counter() - t0
    for h in hs:
        zray.kill(h)
    return n / dt


def gcs_cpu() -> float:
    import psutil

    from zray import api

    t = psutil.Process(api._head.procs[0].pid).cpu_times()
    return t.user + t.system


def main() -> None:
    zray.init(num_cpus=2)
    try:
        for name, fn in (("kv_put sync", kv_sync), ("kv_put 8 threads", kv_pipelined),
                         ("actor create+call", actors)):
            fn()  # warm up
            c0 = gcs_cpu()
            best = max(fn() for _ in range(3))
            per_op = (gcs_cpu() - c0) / (3 * N[fn.__name__]) * 1e6
            print(f"{name:20s} {best:10.0f} /s   GCS CPU {per_op:7.0f} us/op")
    finally:
        zray.shutdown()


if __name__ == "__main__":
    main()
