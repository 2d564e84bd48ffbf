"""Cross-node transfer of 100 MB objects between two raylets, against raw ZeroMQ.

(a) loopback: two raylets of one test cluster on 127.0.0.1. Raw ZeroMQ (one
    DEALER/ROUTER pair between two processes, 4 MiB frames sent zero-copy) is
    measured in the same run, interleaved with zray's pulls.
(b) two network namespaces joined by a veth pair shaped to 1 Gbit/s with tc
    (root only): raw ZeroMQ over that link, then zray pulls of incompressible
    bytes and of a numpy arange (compressible).

In every zray case a task on the remote node makes the value, the driver waits
until it is ready and then times ``zray.get`` alone: the pull from the remote
raylet into the local store plus the zero-copy read. Each repetition makes a
new object. Numbers are medians (and bests) over the repetitions.

    python benchmarks/transfer.py                # both parts (b needs root + ip + tc)
    python benchmarks/transfer.py --part loopback --reps 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SIZE = 100_000_000
FRAME = 4 << 20


# ----------------------------------------------------------------- raw zmq
def raw_server(bind: str, size: int, reps: int) -> None:
    """Send ``size`` random bytes as 4 MiB frames each time a client asks."""
    import zmq

    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.bind(bind)
    data = os.urandom(size)
    mv = memoryview(data)
    print("ready", flush=True)
    for _ in range(reps):
        ident, _msg = r.recv_multipart()
        for off in range(0, size, FRAME):
            r.send_multipart([ident, mv[off: off + FRAME]], copy=False)
    r.close(linger=1000)
    ctx.term()


def raw_client(addr: str, size: int, reps: int, pause=None, to_shm: bool = False) -> list[float]:
    """Seconds per transfer of ``size`` bytes from a raw_server (first one warms up).

    ``to_shm``: also write what arrives into a new /dev/shm file, on a writer thread (what
    any design that lands the bytes in shared memory must do at least).
    """
    import queue
    import threading

    import zmq

    ctx = zmq.Context()
    d = ctx.socket(zmq.DEALER)
    d.connect(addr)
    out = []
    path = f"/dev/shm/zray-bench-{os.getpid()}"
    for i in range(reps):
        if pause is not None:
            pause(i)
        fd = q = th = None
        if to_shm:
            fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
            q = queue.SimpleQueue()

            def writer(fd=fd, q=q):
                while (item := q.get()) is not None:
                    os.pwrite(fd, item[0], item[1])

            th = threading.Thread(target=writer)
            th.start()
        t = time.perf_counter()
        d.send(b"go")
        got = 0
        while got < size:
            buf = d.recv(copy=False).buffer
            if q is not None:
                q.put((buf, got))
            got += len(buf)
        if th is not None:
            q.put(None)
            th.join()
        out.append(time.perf_counter() - t)
        if fd is not None:
            os.close(fd)
            os.unlink(path)
    d.close(linger=0)
    ctx.term()
    return out


def start_raw_server(bind: str, reps: int, prefix: list[str] | None = None) -> subprocess.Popen:
    p = subprocess.Popen([*(prefix or ()), sys.executable, os.path.abspath(__file__),
                          "--raw-server", bind, "--reps", str(reps)],
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if "ready" not in line:
        p.kill()
        raise RuntimeError("the raw ZeroMQ server did not start")
    return p


# --------------------------------------------------------------------- zray
def zray_pulls(cluster, kinds: list[str], reps: int, size: int, node_ip: str | None = None,
               netns: str | None = None, between=None) -> dict[str, list[float]]:
    """Seconds per zray.get of a ``size``-byte value made on another node, per kind."""
    import numpy as np

    import zray

    cluster.add_node(num_cpus=1, resources={"src": 1}, node_ip_address=node_ip, _netns=netns)
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)

    @zray.remote(resources={"src": 1}, num_cpus=0)
    def make(kind: str, n: int, seed: int):
        if kind == "random":
            return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
        return np.arange(n // 8, dtype=np.int64)

    times: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        zray.get(make.remote("random", 1 << 20, 0))  # warm up: worker, connections
        for i in range(reps):
            for kind in kinds:
                if between is not None:
                    between(i, kind)
                ref = make.remote(kind, size, i)
                zray.wait([ref], timeout=120)
                t = time.perf_counter()
                v = zray.get(ref, timeout=120)
                times[kind].append(time.perf_counter() - t)
                if kind == "arange":
                    assert int(v[-1]) == size // 8 - 1
                del v, ref
    finally:
        zray.shutdown()
    return times


def summary(size: int, secs: list[float]) -> dict:
    return {"median_s": statistics.median(secs), "best_s": min(secs),
            "median_MBps": size / statistics.median(secs) / 1e6,
            "best_MBps": size / min(secs) / 1e6, "n": len(secs)}


# ------------------------------------------------------------------ parts
def part_loopback(reps: int, size: int) -> dict:
    from zray.cluster_utils import Cluster

    port = 47000 + os.getpid() % 1000
    srv = start_raw_server(f"tcp://127.0.0.1:{port}", 2 * reps + 2)
    raw: list[float] = []
    raw_shm: list[float] = []
    import threading

    # Interleave: one raw transfer before each zray pull, so both see the same load.
    gate = threading.Semaphore(0)
    done = threading.Semaphore(0)

    def raw_thread():
        def pause(i):
            if i:
                gate.acquire()
        raw.extend(raw_client(f"tcp://127.0.0.1:{port}", size, reps + 1, pause))
        raw_shm.extend(raw_client(f"tcp://127.0.0.1:{port}", size, reps + 1, pause, True))
        done.release()

    th = threading.Thread(target=raw_thread, daemon=True)
    th.start()
    time.sleep(0.5)

    def between(i, kind):
        gate.release()  # a raw transfer before each zray pull: both see the same load
        time.sleep(0.3 + size / 1e9)  # let it run alone

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        z = zray_pulls(c, ["random", "arange"], reps, size, between=between)
    finally:
        c.shutdown()
    done.acquire(timeout=60)
    srv.wait(30)
    res = {"raw_zmq": summary(size, raw[1:]), "raw_zmq_to_shm": summary(size, raw_shm[1:]),
           "zray_random": summary(size, z["random"]),
           "zray_arange": summary(size, z["arange"])}
    res["random_vs_raw"] = res["zray_random"]["median_MBps"] / res["raw_zmq"]["median_MBps"]
    res["random_vs_raw_to_shm"] = (res["zray_random"]["median_MBps"]
                                   / res["raw_zmq_to_shm"]["median_MBps"])
    return res


def part_netns_inside(a: argparse.Namespace) -> None:
    """Runs inside namespace A: raw ZeroMQ from B, then a cluster with a node in B."""
    from zray.cluster_utils import Cluster

    port = 47000 + os.getpid() % 1000
    srv = start_raw_server(f"tcp://{a.ip_b}:{port}", a.reps + 1, ["ip", "netns", "exec", a.ns_b])
    raw = raw_client(f"tcp://{a.ip_b}:{port}", a.size, a.reps + 1)
    srv.wait(30)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": a.ip_a})
    try:
        z = zray_pulls(c, ["random", "arange"], a.reps, a.size, node_ip=a.ip_b, netns=a.ns_b)
    finally:
        c.shutdown()
    print(json.dumps({"raw": raw[1:], **z}))


def part_netns(reps: int, size: int, rate: str) -> dict:
    from zray.util.netns import NetnsPair, available

    why = available()
    if why is not None or subprocess.run(["which", "tc"], capture_output=True).returncode:
        return {"skipped": why or "needs tc"}
    with NetnsPair(rate=rate) as net:
        p = subprocess.run(net.exec_a([
            sys.executable, os.path.abspath(__file__), "--netns-inside", "--ip-a", net.ip_a,
            "--ip-b", net.ip_b, "--ns-b", net.ns_b, "--reps", str(reps), "--size", str(size)]),
            capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"the namespace run failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    link = _rate_bps(rate) / 8
    res = {"link_MBps": link / 1e6, "raw_zmq": summary(size, r["raw"]),
           "zray_random": summary(size, r["random"]), "zray_arange": summary(size, r["arange"])}
    res["random_vs_link"] = res["zray_random"]["median_MBps"] * 1e6 / link
    res["random_vs_raw"] = res["zray_random"]["median_MBps"] / res["raw_zmq"]["median_MBps"]
    res["arange_speedup_vs_link"] = (size / link) / res["zray_arange"]["median_s"]
    return res


def _rate_bps(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * f
    return float(rate)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["loopback", "netns", "all"], default="all")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--rate", default="1gbit")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--raw-server", help=argparse.SUPPRESS)
    p.add_argument("--netns-inside", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ip-a", help=argparse.SUPPRESS)
    p.add_argument("--ip-b", help=argparse.SUPPRESS)
    p.add_argument("--ns-b", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.raw_server:
        raw_server(a.raw_server, a.size, a.reps)
        return
    if a.netns_inside:
        part_netns_inside(a)
        return
    out = {}
    if a.part in ("loopback", "all"):
        out["loopback"] = part_loopback(a.reps, a.size)
    if a.part in ("netns", "all"):
        out["netns"] = part_netns(a.reps, a.size, a.rate)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    mb = a.size / 1e6
    for name, res in out.items():
        print(f"\n## {name}  ({mb:.0f} MB objects, {a.reps} reps; MB/s = 10^6 bytes/s)")
        if "skipped" in res:
            print(f"skipped: {res['skipped']}")
            continue
        if "link_MBps" in res:
            print(f"link: {a.rate} = {res['link_MBps']:.0f} MB/s")
        print(f"{'case':<16}{'median MB/s':>13}{'best MB/s':>11}{'median s':>10}")
        for case in ("raw_zmq", "raw_zmq_to_shm", "zray_random", "zray_arange"):
            if case not in res:
                continue
            s = res[case]
            print(f"{case:<16}{s['median_MBps']:>13.0f}{s['best_MBps']:>11.0f}"
                  f"{s['median_s']:>10.3f}")
        for k, v in res.items():
            if not isinstance(v, dict):
                print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
