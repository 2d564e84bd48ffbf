"""CPU cost per tcp message of the wire's security (CURVE and/or the BLAKE2b MAC).

    python benchmarks/wire_cost.py [--n 20000] [--big-mb 8] [--big-n 40] [--rounds 3]

A sender and a receiver process (a DEALER and a ROUTER, as zray's `protocol.Conn` and
`protocol.Inbound`) on 127.0.0.1. Each configuration sends `n` small messages
shaped like a PUSH_TASK (a ~150-byte header and one 40-byte payload frame), then `big-n`
messages with one `big-mb` MiB payload frame. Reported: CPU time (user + system, every
thread, so libzmq's I/O threads count) of sender + receiver per small message, and per
MiB of large ones; wall-clock rates too. CPU time rather than wall time, because the
machine may be shared: it is what the wire costs whatever else runs.

Configurations: `plain` (no security at all), `mac` (the wire before CURVE: a keyed
BLAKE2b-128 over the header and payload frames, sent as a frame after the header and
checked by the receiver), `curve` (the wire now: zray/curve.py on both sockets),
`curve+mac` (both). Sockets and framing are zray's (`protocol.encode/decode`,
`send_frames/recv_frames`, `curve.make_server/make_client`); only the MAC lives here.
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
CONFIGS = {"plain": (False, False), "mac": (False, True), "curve": (True, False),
           "curve+mac": (True, True)}


def _mac(parts: list) -> bytes:
    import hashlib

    h = hashlib.blake2b(key=KEY, digest_size=16)
    for p in parts:
        h.update(p)
    return h.digest()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def receiver(cfg: str, n_small: int, n_big: int) -> None:
    import hmac

    import zmq

    from zray import curve, protocol

    use_curve, use_mac = CONFIGS[cfg]
    ctx = protocol.context()
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    if use_curve:
        curve.make_server(r, ctx, KEY)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    print(f"tcp://127.0.0.1:{port}", flush=True)
    for want in (n_small + 1, n_big + 1):  # +1: the warm-up message of each phase
        for i in range(want):
            if not r.poll(60_000):
                raise TimeoutError("no message")
            frames = protocol.recv_frames(r, False)[1:]
            if use_mac:
                h, mac, payload = frames[0].bytes, frames[1].bytes, frames[2:]
                if not hmac.compare_digest(mac, _mac([h, *(f.buffer for f in payload)])):
                    raise ValueError("bad MAC")
                frames = [frames[0], *payload]
            protocol.decode(frames)
            if i == 0:
                c0, t0 = _cpu(), time.perf_counter()
        print(json.dumps((_cpu() - c0, time.perf_counter() - t0)), flush=True)
    r.close()


def one(cfg: str, n: int, big_mb: int, big_n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    p = subprocess.Popen([sys.executable, __file__, "--receiver", cfg, str(n), str(big_n)],
                         env=env, stdout=subprocess.PIPE, text=True)
    addr = p.stdout.readline().strip()
    s = subprocess.Popen([sys.executable, __file__, "--sender", cfg, addr, str(n), str(big_mb),
                          str(big_n)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    sent, recv = [], []
    for _ in range(2):  # per phase: the receiver has everything, then the sender counts
        recv.append(json.loads(p.stdout.readline()))
        s.stdin.write("next\n")
        s.stdin.flush()
        sent.append(json.loads(s.stdout.readline()))
    p.wait(60)
    s.wait(60)
    (rs_cpu, rs_wall), (rb_cpu, rb_wall) = recv
    (ss_cpu, _), (sb_cpu, _) = sent
    mib = big_n * big_mb
    return {"small_cpu_us": (ss_cpu + rs_cpu) / n * 1e6, "small_msgs_s": n / rs_wall,
            "big_cpu_ms_per_MiB": (sb_cpu + rb_cpu) / mib * 1e3, "big_MiB_s": mib / rb_wall}


def sender(cfg: str, addr: str, n: int, big_mb: int, big_n: int) -> None:
    import zmq

    from zray import curve, protocol

    use_curve, use_mac = CONFIGS[cfg]
    d = protocol.context().socket(zmq.DEALER)
    d.setsockopt(zmq.LINGER, 0)
    d.setsockopt(zmq.SNDHWM, 0)
    if use_curve:
        curve.make_client(d, KEY)
    d.connect(addr)
    h = {"t": protocol.PUSH_TASK, "tid": os.urandom(16), "fn": os.urandom(20), "name": "f",
         "nret": 1, "args": [[0, 1]], "kw": [], "own": [os.urandom(16), None,
                                                      "tcp://127.0.0.1:40000"],
         "drv": "tcp://127.0.0.1:40001", "job": b"\0\0\0\1", "res": {"CPU": 1.0}, "att": 1}

    def send(payload):
        frames = protocol.encode(dict(h), payload)
        if use_mac:
            frames.insert(1, _mac(frames))
        protocol.send_frames(d, frames)

    small = [b"p" * 40]
    big = [os.urandom(big_mb << 20)]
    for count, payload in ((n, small), (big_n, big)):
        send(payload)  # warm-up (connection, handshake)
        time.sleep(0.3)
        c0, t0 = _cpu(), time.perf_counter()
        for _ in range(count):
            send(payload)
        wall = time.perf_counter() - t0
        sys.stdin.readline()  # the receiver has them all: the I/O thread's work is done
        print(json.dumps((_cpu() - c0, wall)), flush=True)
    d.close()


def main() -> None:
    if sys.argv[1:2] == ["--receiver"]:
        return receiver(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    if sys.argv[1:2] == ["--sender"]:
        return sender(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]),
                      int(sys.argv[6]))
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
