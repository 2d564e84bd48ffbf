"""Attacks on the tcp wire, on real processes: endless multipart messages from a peer
without the secret, recorded traffic replayed, duplicate tasks, log flooding."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import zmq
from wire_attack import LoopbackSniffer, flood_more_frames, replay

import zray
from zray import protocol
from zray.cluster_utils import Cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20


@pytest.fixture
def no_driver():
    if zray.is_initialized():
        zray.shutdown()
    yield
    if zray.is_initialized():
        zray.shutdown()


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def _hostport(addr: str) -> tuple[str, int]:
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def _listening_ports(pid: int) -> set[int]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    ports = set()
    for p in procs:
        try:
            for c in p.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    ports.add(c.laddr.port)
        except psutil.Error:
            pass
    return ports


def _lines(path: str) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------ memory bound
@pytest.mark.slow
def test_endless_multipart_message_from_a_peer_without_the_secret(no_driver):
    """A raw ZMTP peer (NULL mechanism, no keys) sends 1 MiB frames with MORE set and
    never a last frame, to the GCS and to a raylet: neither grows, both keep serving."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        gcs_proc, raylet_proc = c.head_node.procs.procs
        head = [n for n in c.nodes() if n["IsHead"]][0]
        targets = [(gcs_proc.pid, _hostport(c.address)),
                   (raylet_proc.pid, _hostport(head["raylet_addr"][2]))]
        for pid, (host, port) in targets:
            before = _rss(pid)
            sent, conns = flood_more_frames(host, port, 256 * MiB, seconds=6)
            time.sleep(0.5)
            grown = _rss(pid) - before
            assert grown < 48 * MiB, \
                f"pid {pid} grew by {grown / MiB:.0f} MiB after {sent / MiB:.0f} MiB sent"
        zray.init(address=c.address)

        @zray.remote
        def ok():
            return "ok"

        assert zray.get(ok.remote(), timeout=60) == "ok"
    finally:
        zray.shutdown()
        c.shutdown()


def test_a_zmq_peer_without_the_keys_never_gets_a_message_in(no_driver, tmp_path):
    """A ZeroMQ DEALER without CURVE keys, and a CURVE client that knows the server's
    public key but not the secret: nothing they send reaches the handler."""
    secret = os.urandom(32)
    ib = protocol.Inbound(None, "127.0.0.1", secret)
    poller = zmq.Poller()
    ib.register(poller)
    ctx = protocol.context()
    plain = ctx.socket(zmq.DEALER)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(ib.tcp_addr)
    from zray import curve
    pub, _ = curve.keypair(secret)
    impostor = ctx.socket(zmq.DEALER)
    impostor.setsockopt(zmq.LINGER, 0)
    ipub, isec = zmq.curve_keypair()
    impostor.setsockopt(zmq.CURVE_SERVERKEY, pub)
    impostor.setsockopt(zmq.CURVE_PUBLICKEY, ipub)
    impostor.setsockopt(zmq.CURVE_SECRETKEY, isec)
    impostor.connect(ib.tcp_addr)
    got = []
    try:
        for s in (plain, impostor):
            for _ in range(50):
                s.send(b"\0" * 4096, zmq.SNDMORE)
            s.send_multipart(protocol.encode({"t": protocol.PING}, [b"x"]))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            ib.drain(dict(poller.poll(100)), lambda h, p: got.append(h))
        assert got == []
        assert curve._zap.refused >= 1  # the impostor reached ZAP and was refused there
        member = protocol.Conn(ib.tcp_addr, secret)
        member.send({"t": protocol.PING, "n": 7})
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            ib.drain(dict(poller.poll(100)), lambda h, p: got.append(h))
        assert got == [{"t": protocol.PING, "n": 7}]
        member.close()
    finally:
        plain.close()
        impostor.close()
        ib.close()


# ------------------------------------------------------------------ replay
@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="the sniffer needs root (AF_PACKET)")
def test_recorded_tcp_traffic_replayed_runs_nothing_extra(no_driver, tmp_path):
    """Record every byte the driver sends over tcp to another node's processes while a
    task and an actor call run there, then replay each recorded stream 3 times on new
    connections, as a peer without the secret could: nothing runs again."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        far = c.add_node(num_cpus=2, resources={"far": 2})
        raylet_pid = far.procs.procs[0].pid
        deadline = time.monotonic() + 60
        while len(ports := _listening_ports(raylet_pid)) < 3:  # raylet, bulk, a worker
            assert time.monotonic() < deadline, "the node's workers did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        ports = _listening_ports(raylet_pid)
        task_file, call_file = str(tmp_path / "task"), str(tmp_path / "call")

        @zray.remote(resources={"far": 1})
        def touch(path):
            with open(path, "a") as f:
                f.write("ran\n")
            return os.getpid()

        @zray.remote(resources={"far": 1}, num_cpus=0)
        class Toucher:
            def touch(self, path):
                with open(path, "a") as f:
                    f.write("ran\n")
                return os.getpid()

        sniffer = LoopbackSniffer(ports)
        try:
            zray.init(address=c.address)  # every connection is made while recording
            task_pid = zray.get(touch.remote(task_file), timeout=60)
            a = Toucher.remote()
            call_pid = zray.get(a.touch.remote(call_file), timeout=60)
            time.sleep(1.0)
        finally:
            sniffer.stop()
        streams = sniffer.streams()
        for pid in (task_pid, call_pid):  # the recording holds what went to both workers
            wport = _listening_ports(pid)
            assert wport & ports, f"worker {pid} listens on {wport}, not in {ports}"
            assert any(port in wport and len(b) > 200 for (_, port), b in streams.items()), \
                f"nothing recorded to {wport}: {[(k, len(b)) for k, b in streams.items()]}"
        assert _lines(task_file) == 1 and _lines(call_file) == 1
        for _ in range(3):
            for (_, port), data in streams.items():
                replay(port, data, hold=0.5)
        time.sleep(2.0)
        assert _lines(task_file) == 1, "a replayed PUSH_TASK ran the task again"
        assert _lines(call_file) == 1, "a replayed actor call ran again"
        # Still serving.
        assert zray.get(touch.remote(task_file), timeout=60)
        assert _lines(task_file) == 2
    finally:
        zray.shutdown()
        c.shutdown()


# -------------------------------------------------------- duplicate tasks
def test_duplicate_push_task_from_a_member_is_refused(no_driver, tmp_path, monkeypatch):
    """An authenticated peer (the secret's holder) sends a PUSH_TASK again, as it was
    sent the first time (and an actor call again, under its task id): nothing runs twice."""
    sent: list[tuple] = []
    real_send = protocol.Conn.send

    def spy(self, header, payload=(), bulk=0):
        if header.get("t") == protocol.PUSH_TASK:
            sent.append((self.addr, self.key, dict(header), [bytes(p) for p in payload]))
        return real_send(self, header, payload, bulk)

    monkeypatch.setattr(protocol.Conn, "send", spy)
    zray.init(num_cpus=2)
    task_file, call_file = str(tmp_path / "task"), str(tmp_path / "call")

    @zray.remote
    def touch(path):
        with open(path, "a") as f:
            f.write("ran\n")
        return os.getpid()

    @zray.remote
    class Toucher:
        def touch(self, path):
            with open(path, "a") as f:
                f.write("ran\n")
            return os.getpid()

    assert zray.get(touch.remote(task_file), timeout=60)
    a = Toucher.remote()
    zray.get(a.touch.remote(call_file), timeout=60)
    assert _lines(task_file) == 1 and _lines(call_file) == 1
    task = [m for m in sent if "fn" in m[2]]
    call = [m for m in sent if "aid" in m[2]]
    assert len(task) == 1 and len(call) == 1
    for addr, key, h, payload in task + call:
        conn = protocol.Conn(addr, key)
        for i in range(3):
            hh = dict(h)
            if "aid" in hh and i:
                hh.pop("seq", None)  # not even a new sequence number makes it a new call
            real_send(conn, hh, payload)
        conn.close(linger_ms=2000)
    time.sleep(2.0)
    assert _lines(task_file) == 1, "the worker ran a duplicate PUSH_TASK"
    assert _lines(call_file) == 1, "the actor ran a duplicate call"
    # Both still serve new work.
    zray.get([touch.remote(task_file), a.touch.remote(call_file)], timeout=60)
    assert _lines(task_file) == 2 and _lines(call_file) == 2


# ------------------------------------------------------------- log flood
def test_refused_input_logging_is_rate_limited_and_logs_rotate(no_driver, tmp_path):
    """100,000 malformed messages to the GCS leave a few lines and a "suppressed" count;
    a process that logs without limit keeps its log files under the rotation bound."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        logs = os.path.join(c.session_dir, "logs")
        c.address  # noqa: B018  (the GCS is up)
        ctx = protocol.context()
        d = ctx.socket(zmq.DEALER)
        d.setsockopt(zmq.LINGER, 0)
        d.setsockopt(zmq.SNDHWM, 0)
        d.connect("ipc://" + os.path.join(c.session_dir, "sockets", "gcs"))
        for _ in range(100_000):
            d.send(b"\xc1 not msgpack")
        deadline = time.monotonic() + 40

        def gcs_log():
            with open(os.path.join(logs, "gcs.log")) as f:
                return f.read()

        while "suppressed" not in gcs_log():
            assert time.monotonic() < deadline, "no 'suppressed' line in the GCS log"
            time.sleep(0.5)
        text = gcs_log()
        assert text.count("dropped a malformed message") <= 40
        assert os.path.getsize(os.path.join(logs, "gcs.log")) < 64 * 1024
        d.close()
    finally:
        c.shutdown()
    # Rotation: a process whose stderr is a log file, logging 4 MB.
    script = textwrap.dedent("""
        import logging
        from zray.util.logs import setup_process_logging
        setup_process_logging(logging.INFO, "%(message)s")
        for i in range(40000):
            logging.getLogger("x").warning("line %06d %s", i, "x" * 80)
    """)
    path = str(tmp_path / "p.log")
    env = dict(os.environ, PYTHONPATH=REPO, ZRAY_ROTATION_MAX_BYTES="200000",
               ZRAY_ROTATION_BACKUP_COUNT="2")
    with open(path, "ab") as f:
        subprocess.run([sys.executable, "-c", script], stdout=f, stderr=f, env=env,
                       timeout=120, check=True)
    files = sorted(glob.glob(path + "*"))
    assert files == [path, path + ".1", path + ".2"]
    total = sum(os.path.getsize(p) for p in files)
    assert total <= 3 * 200_000 + 200
    with open(path) as f:
        assert f.read().splitlines()[-1].startswith("line 039999")
