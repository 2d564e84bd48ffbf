"""CPU cost per tcp message of the wire's security (CURVE and/or the BLAKE2b MAC).

    python benchmarks/wire_cost.py [--n 20000] [--big-mb 8] [--big-n 40] [--rounds 3]

A sender (this process, `protocol.Conn`) and a receiver (a subprocess, `protocol.Inbound`
draining its tcp ROUTER) on 127.0.0.1. Each configuration sends `n` small messages
shaped like a PUSH_TASK (a ~150-byte header and one 40-byte payload frame), then `big-n`
messages with one `big-mb` MiB payload frame. Reported: CPU time (user + system, every
thread, so libzmq's I/O threads count) of sender + receiver per small message, and per
MiB of large ones; wall-clock rates too. CPU time rather than wall time, because the
machine may be shared: it is what the wire costs whatever else runs.

Configurations (`ZRAY_WIRE_CURVE`, `ZRAY_WIRE_MAC` select them in zray/protocol.py):
plain (neither; the wire before any security), mac, curve, curve+mac.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

KEY = b"s" * 32
CONFIGS = {"plain": ("0", "0"), "mac": ("0", "1"), "curve": ("1", "0"), "curve+mac": ("1", "1")}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receiver(n_small: int, n_big: int) -> None:
    import zmq

    from zray import protocol

    ib = protocol.Inbound(None, "127.0.0.1", KEY, copy=False)
    poller = zmq.Poller()
    ib.register(poller)
    print(ib.tcp_addr, flush=True)
    got = [0]

    def h(header, payload):
        got[0] += 1

    out = []
    for want in (n_small + 1, n_big + 1):  # +1: the warm-up message of each phase
        got[0] = 0
        first = True
        while got[0] < want:
            ready = dict(poller.poll(1000))
            ib.drain(ready, h)
            if first and got[0]:
                c0, t0, first = _cpu(), time.perf_counter(), False
        out.append((_cpu() - c0, time.perf_counter() - t0))
    print(json.dumps(out), flush=True)
    ib.close()


def one(cfg: str, n: int, big_mb: int, big_n: int) -> dict:
    curve, mac = CONFIGS[cfg]
    env = dict(os.environ, ZRAY_WIRE_CURVE=curve, ZRAY_WIRE_MAC=mac, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, __file__, "--receiver", str(n), str(big_n)], env=env,
                         stdout=subprocess.PIPE, text=True)
    addr = p.stdout.readline().strip()
    # The sender runs in a fresh process too, so that both sides use the configuration.
    s = subprocess.run([sys.executable, __file__, "--sender", addr, str(n), str(big_mb),
                        str(big_n)], env=env, capture_output=True, text=True, timeout=600)
    sent = json.loads(s.stdout.strip().splitlines()[-1])
    recv = json.loads(p.stdout.readline())
    p.wait(60)
    (rs_cpu, rs_wall), (rb_cpu, rb_wall) = recv
    (ss_cpu, _), (sb_cpu, _) = sent
    mib = big_n * big_mb
    return {"small_cpu_us": (ss_cpu + rs_cpu) / n * 1e6, "small_msgs_s": n / rs_wall,
            "big_cpu_ms_per_MiB": (sb_cpu + rb_cpu) / mib * 1e3, "big_MiB_s": mib / rb_wall}


def sender(addr: str, n: int, big_mb: int, big_n: int) -> None:
    from zray import protocol

    c = protocol.Conn(addr, KEY)
    h = {"t": protocol.PUSH_TASK, "tid": os.urandom(16), "fn": os.urandom(20), "name": "f",
         "nret": 1, "args": [[0, 1]], "kw": [], "own": [os.urandom(16), None,
                                                      "tcp://127.0.0.1:40000"],
         "drv": "tcp://127.0.0.1:40001", "job": b"\0\0\0\1", "res": {"CPU": 1.0}}
    small = [b"p" * 40]
    big = [os.urandom(big_mb << 20)]
    out = []
    for count, payload in ((n, small), (big_n, big)):
        c.send(dict(h), payload)  # warm-up (connection, handshake)
        time.sleep(0.3)
        c0, t0 = _cpu(), time.perf_counter()
        for _ in range(count):
            c.send(dict(h), payload)
        out.append((_cpu() - c0, time.perf_counter() - t0))
        time.sleep(0.5 + count * 0.00001)  # let the I/O thread flush (its CPU counts)
        out[-1] = (_cpu() - c0, out[-1][1])
    c.close(linger_ms=5000)
    print(json.dumps(out), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--receiver"]:
        return receiver(int(sys.argv[2]), int(sys.argv[3]))
    if sys.argv[1:2] == ["--sender"]:
        return sender(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--big-mb", type=int, default=8)
    p.add_argument("--big-n", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    res: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for _ in range(a.rounds):  # interleaved, so that load changes hit every config
        for cfg in CONFIGS:
            res[cfg].append(one(cfg, a.n, a.big_mb, a.big_n))
    print(f"{'config':10} {'small CPU us/msg':>17} {'small msg/s':>12} "
          f"{'big CPU ms/MiB':>15} {'big MiB/s':>10}")
    for cfg, rows in res.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{cfg:10} {med['small_cpu_us']:17.1f} {med['small_msgs_s']:12.0f} "
              f"{med['big_cpu_ms_per_MiB']:15.2f} {med['big_MiB_s']:10.0f}")


if __name__ == "__main__":
    main()
