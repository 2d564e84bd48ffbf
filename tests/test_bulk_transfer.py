"""The bulk data plane (zray/raylet/bulk.py): raw object bytes between raylets over plain TCP.

Units run a real BulkServer and BulkClients on loopback sockets and real files; the
cluster tests pull numpy arrays between real raylets, present unknown tokens to a
holder, break a puller's pooled connections under it and kill a holder mid-transfer.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re
import signal
import socket
import threading
import time

import numpy as np
import psutil
import pytest

import zray
from zray.cluster_utils import Cluster
from zray.objstore import shm
from zray.raylet import bulk
from zray.raylet import pulls as om
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

A, B = b"a" * 16, b"b" * 16


# ---------------------------------------------------------------- units
class Done:
    """Collects BulkClients completions."""

    def __init__(self):
        self.got: list = []
        self.cv = threading.Condition()

    def __call__(self, tag, err):
        with self.cv:
            self.got.append((tag, err))
            self.cv.notify_all()

    def wait(self, n: int, timeout: float = 20.0) -> list:
        with self.cv:
            assert self.cv.wait_for(lambda: len(self.got) >= n, timeout), self.got
            return list(self.got)


def _chunk(p, *args):
    """ChunkArrived through Pulls.handle: (accepted?, the other actions)."""
    acts = p.handle(om.ChunkArrived(*args))
    accepted = bool(acts) and isinstance(acts[0], om.Accept)
    return accepted, acts[1:] if accepted else acts


def _closed_on_us(s: socket.socket) -> bool:
    """The peer closed the connection without sending a byte (or reset it)."""
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _file(path, data: bytes | None = None, size: int = 0) -> int:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    if data is not None:
        os.write(fd, data)
    else:
        os.ftruncate(fd, size)
    return fd


def test_bulk_plane_moves_offered_bytes_and_refuses_anything_else(tmp_path):
    data = os.urandom(9 << 20)
    src = _file(tmp_path / "src", data)
    dst = _file(tmp_path / "dst", size=len(data))
    import mmap

    mm = mmap.mmap(dst, len(data))
    srv = bulk.BulkServer("127.0.0.1")
    done = Done()
    cl = bulk.BulkClients(done, conns=2)
    try:
        # Byte ranges of odd sizes and offsets, through splice and through the mapping.
        ranges = [(0, 1), (1, 4 << 20), ((4 << 20) + 1, (3 << 20) - 7), ((7 << 20) - 6, (2 << 20) + 6)]
        for i, (off, n) in enumerate(ranges):
            tok = os.urandom(16)
            srv.offer(tok, os.dup(src), off, n)
            cl.fetch("127.0.0.1", srv.port, tok, dst, off, n, i, mm if i % 2 else None)
        got = done.wait(len(ranges))
        assert sorted(t for t, _ in got) == list(range(len(ranges)))
        assert all(err is None for _, err in got), got
        assert mm[:] == data
        # A token nobody offered, a reused one, a bad magic: the connection is closed, logged.
        for hello in (bulk.MAGIC + os.urandom(16), b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
                s.sendall(hello)
                assert _closed_on_us(s)
        assert srv.refused == 2
        # Offers nobody takes expire (and give their fd back).
        tok = os.urandom(16)
        srv.offer(tok, os.dup(src), 0, 10)
        srv.purge(time.monotonic() + bulk.TOKEN_TTL_S + 1)
        cl.fetch("127.0.0.1", srv.port, tok, dst, 0, 10, "late")
        assert done.wait(len(ranges) + 1)[-1][1] is not None
        assert srv.refused == 3
        # The plane still works afterwards.
        tok = os.urandom(16)
        srv.offer(tok, os.dup(src), 100, 1000)
        cl.fetch("127.0.0.1", srv.port, tok, dst, 100, 1000, "again")
        assert done.wait(len(ranges) + 2)[-1] == ("again", None)
    finally:
        cl.close()
        srv.close()
        mm.close()
        os.close(src)
        os.close(dst)


def test_bulk_fetch_fails_cleanly_when_the_holder_breaks(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "IO_TIMEOUT_S", 0.5)
    dst = _file(tmp_path / "dst", size=1 << 20)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    port = ls.getsockname()[1]
    conns = []

    def holder():  # sends half of what was asked, then closes; then one that never sends
        c, _ = ls.accept()
        c.recv(20)
        c.sendall(b"x" * 1000)
        c.close()
        c, _ = ls.accept()
        c.recv(20)
        conns.append(c)  # silent, left open

    th = threading.Thread(target=holder, daemon=True)
    th.start()
    done = Done()
    cl = bulk.BulkClients(done, conns=1)
    try:
        cl.fetch("127.0.0.1", port, os.urandom(16), dst, 0, 4000, "cut")
        assert "closed" in done.wait(1)[0][1]
        cl.fetch("127.0.0.1", port, os.urandom(16), dst, 0, 4000, "stalled")
        tag, err = done.wait(2)[1]
        assert tag == "stalled" and err is not None
        ls.close()  # nobody listens: refused at once
        cl.fetch("127.0.0.1", port, os.urandom(16), dst, 0, 4000, "refused")
        assert done.wait(3)[2][1] is not None
    finally:
        cl.close()
        th.join(5)
        for c in conns:
            c.close()
        os.close(dst)


def test_a_failed_bulk_fetch_asks_for_the_chunk_again_plainly():
    p = om.Pulls(A, chunk=100, window=2)
    p.handle(om.Start(b"o", [B], None, 0.0))
    accept, _ = _chunk(p, b"o", B, 0, 100, 250, 10, 0.1)
    assert accept
    assert p.handle(om.ChunkFailed(b"o", 0, 0.2)) == [om.Request(B, b"o", 0, 100, plain=True)]
    assert p.handle(om.ChunkFailed(b"o", 0, 0.2)) == []  # not accepted any more: nothing to redo
    accept, _ = _chunk(p, b"o", B, 0, 100, 250, 10, 0.3)  # the plain answer is taken
    assert accept
    p.handle(om.ChunkWritten(b"o", 0))
    assert p.handle(om.ChunkFailed(b"o", 0, 0.4)) == []  # written already


def test_a_pull_keeps_its_own_chunk_size_and_window():
    p = om.Pulls(A, chunk=100, window=4, max_inflight=10)  # 1000 bytes in flight in all
    big = p.handle(om.Start(b"big", [B], None, 0.0, chunk=400, window=2))
    assert big == [om.Request(B, b"big", 0, 400), om.Request(B, b"big", 400, 400)]
    small = p.handle(om.Start(b"small", [B], None, 0.0))
    assert small == [om.Request(B, b"small", 0, 100), om.Request(B, b"small", 100, 100)]
    accept, acts = _chunk(p, b"big", B, 0, 400, 1000, 10, 0.1)
    assert accept and om.Request(B, b"big", 800, 200) not in acts  # n is the chunk size
    assert om.Request(B, b"big", 800, 400) in acts
    accept, _ = _chunk(p, b"big", B, 800, 200, 1000, 10, 0.2)  # the last one is shorter
    assert accept


# ---------------------------------------------------------------- cluster helpers
def _listening_ports(pid: int) -> set[int]:
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def _bulk_port(cluster: Cluster, node) -> int:
    zmq_port = int([n for n in cluster.nodes() if n["NodeID"] == node.node_id][0]
                   ["raylet_addr"][2].rsplit(":", 1)[1])
    ports = _listening_ports(node.raylet.pid) - {zmq_port}
    assert len(ports) == 1, ports
    return ports.pop()


def _bulk_conns(puller_pid: int, port: int) -> list:
    return [c for c in psutil.Process(puller_pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]


def _log(cluster: Cluster, node) -> str:
    with open(os.path.join(cluster.session_dir, "logs", f"raylet-{node.node_id[:12]}.log")) as f:
        return f.read()


def _wait_log(cluster: Cluster, node, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while text not in _log(cluster, node):
        assert time.monotonic() < deadline, f"not logged: {text!r}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster():
    if zray.is_initialized():
        zray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.src = c.add_node(num_cpus=1, resources={"src": 1})
    c.wait_for_nodes()
    zray.init(address=c.address)
    yield c
    zray.shutdown()
    c.shutdown()
    assert not shm.list_segments("zray-" + os.path.basename(c.session_dir.rstrip("/"))[-8:])


@zray.remote(resources={"src": 1})
def make(kind: str, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, n, dtype=np.uint8)
    if kind == "floats":
        return rng.standard_normal(n // 8)
    if kind == "mixed":  # a big pickle stream (bytes are in-band) and a big buffer
        return rng.bytes(n // 2), rng.integers(0, 2**62, n // 16, dtype=np.int64)
    if kind == "many":  # many arrays: many out-of-band buffers, several under 4 KiB
        return [rng.integers(0, 100, k, dtype=np.int32) for k in range(1, n, n // 40 + 1)]
    if kind == "arange":  # compressible
        return np.arange(n // 8, dtype=np.int64)
    raise ValueError(kind)


def _check(kind: str, n: int, seed: int, v) -> None:
    rng = np.random.default_rng(seed)
    if kind == "random":
        np.testing.assert_array_equal(v, rng.integers(0, 256, n, dtype=np.uint8))
    elif kind == "floats":
        np.testing.assert_array_equal(v, rng.standard_normal(n // 8))
    elif kind == "mixed":
        assert v[0] == rng.bytes(n // 2)
        np.testing.assert_array_equal(v[1], rng.integers(0, 2**62, n // 16, dtype=np.int64))
    else:
        want = [rng.integers(0, 100, k, dtype=np.int32) for k in range(1, n, n // 40 + 1)]
        assert len(v) == len(want)
        for a, b in zip(v, want):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- cluster tests
CHUNK = om.CHUNK_BYTES
SIZES = [("random", 200_000), ("random", CHUNK - 100), ("random", CHUNK + 1),
         ("floats", 3 * CHUNK + 8 * 1001), ("random", 50_000_000), ("mixed", 20_000_000),
         ("many", 2_000_000)]


def test_pulls_of_many_sizes_go_over_the_bulk_plane(cluster):
    port = _bulk_port(cluster, cluster.src)
    refs = [make.remote(k, n, i) for i, (k, n) in enumerate(SIZES)]
    zray.wait(refs, num_returns=len(refs), timeout=120)
    for i, ((kind, n), ref) in enumerate(zip(SIZES, refs)):
        _check(kind, n, i, zray.get(ref, timeout=120))
    # The puller's raylet keeps its connections to the holder's bulk port for reuse.
    assert _bulk_conns(cluster.head_node.raylet.pid, port)

    # A task on the head node reads them too (its raylet has the copies now) ...
    @zray.remote(num_cpus=1, resources={})
    def total(*arrays):
        return [int(np.asarray(a).astype(np.int64).sum()) for a in arrays]

    assert zray.get(total.remote(refs[0], refs[4]), timeout=60) == [
        int(zray.get(refs[0]).astype(np.int64).sum()), int(zray.get(refs[4]).astype(np.int64).sum())]
    # ... and the holder never refused anything.
    assert "refused a bulk connection" not in _log(cluster, cluster.src)
    assert "bulk fetch" not in _log(cluster, cluster.head_node)


def test_unknown_tokens_are_refused_and_logged_and_pulls_go_on(cluster):
    port = _bulk_port(cluster, cluster.src)
    host = cluster.src.node_ip_address
    for hello in (bulk.MAGIC + os.urandom(bulk.TOKEN_BYTES), b"\x00" * 20, b"hello?"):
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(hello)
            s.settimeout(5 if len(hello) == 20 else 0.5)
            try:
                assert _closed_on_us(s)  # refused: closed without a byte
            except TimeoutError:
                assert len(hello) < 20  # still waiting for a whole hello; we hang up
    idle = socket.create_connection((host, port), timeout=5)  # says nothing at all
    try:
        _wait_log(cluster, cluster.src, "refused a bulk connection")
        assert "unknown token" in _log(cluster, cluster.src)
        assert "bad magic" in _log(cluster, cluster.src)
        ref = make.remote("random", 30_000_000, 11)
        _check("random", 30_000_000, 11, zray.get(ref, timeout=120))
        assert cluster.src.raylet.poll() is None
    finally:
        idle.close()


def _pidfd_getfd(pid: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        r = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r
    finally:
        os.close(pidfd)


def test_broken_bulk_connections_fall_back_to_zeromq(cluster):
    port = _bulk_port(cluster, cluster.src)
    puller = cluster.head_node.raylet.pid
    _check("random", 12_000_000, 21, zray.get(make.remote("random", 12_000_000, 21), timeout=60))
    conns = _bulk_conns(puller, port)
    assert conns
    # Break the puller's pooled connections under it (as a holder restart or a network
    # fault would): its next fetches fail, and those chunks come over ZeroMQ instead.
    for c in conns:
        try:
            fd = _pidfd_getfd(puller, c.fd)
        except OSError as e:
            pytest.skip(f"pidfd_getfd: {e}")
        s = socket.socket(fileno=fd)
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    for seed in (22, 23):
        ref = make.remote("random", 40_000_000, seed)
        _check("random", 40_000_000, seed, zray.get(ref, timeout=120))
    _wait_log(cluster, cluster.head_node, "asked again over ZeroMQ")


def test_holder_killed_mid_transfer(monkeypatch):
    if zray.is_initialized():
        zray.shutdown()
    monkeypatch.setenv("ZRAY_NODE_DEATH_S", "2")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        doomed = c.add_node(num_cpus=1, resources={"r": 1})
        c.add_node(num_cpus=1, resources={"r": 1})
        c.wait_for_nodes()
        zray.init(address=c.address)
        n = 300_000_000

        @zray.remote(resources={"r": 1}, max_retries=1)
        def big(seed):
            return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)

        ref = big.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            doomed.node_id, soft=True)).remote(5)
        zray.wait([ref], timeout=120)
        out: list = []
        th = threading.Thread(target=lambda: out.append(zray.get(ref, timeout=120)))
        th.start()
        # Freeze the holder as soon as the copy has started on the head node, then kill it.
        prefix = "/dev/shm/zray-" + os.path.basename(c.session_dir.rstrip("/"))[-8:] + "-"
        deadline = time.monotonic() + 60
        while not glob.glob(prefix + "*/*.part"):
            assert time.monotonic() < deadline and th.is_alive(), "no transfer started"
            time.sleep(0.0005)
        os.kill(doomed.raylet.pid, signal.SIGSTOP)
        c.remove_node(doomed, allow_graceful=False)
        th.join(120)
        assert not th.is_alive() and len(out) == 1
        np.testing.assert_array_equal(out[0], np.random.default_rng(5).integers(0, 256, n,
                                                                              dtype=np.uint8))
        del out[:]
        zray.shutdown()
    finally:
        if zray.is_initialized():
            zray.shutdown()
        c.shutdown()
    assert not glob.glob("/dev/shm/zray-" + os.path.basename(c.session_dir.rstrip("/"))[-8:] + "-*")


def test_holders_without_the_plane_and_compressed_chunks_mix(monkeypatch):
    """A puller that allows compression (as off loopback) pulls from a holder with the
    bulk plane (raw chunks over it, compressed ones as frames) and from one without it
    (everything as frames: a token it does not know about is simply not used)."""
    if zray.is_initialized():
        zray.shutdown()
    monkeypatch.setenv("ZRAY_TRANSFER_COMPRESSION", "always")  # read by the head's raylet
    monkeypatch.setenv("ZRAY_DEBUG", "1")  # it logs each pull
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        monkeypatch.delenv("ZRAY_TRANSFER_COMPRESSION")
        monkeypatch.delenv("ZRAY_DEBUG")
        monkeypatch.setenv("ZRAY_TRANSFER_BULK", "0")
        plain = c.add_node(num_cpus=1, resources={"plain": 1})
        monkeypatch.delenv("ZRAY_TRANSFER_BULK")
        withbulk = c.add_node(num_cpus=1, resources={"bulk": 1})
        c.wait_for_nodes()
        zray.init(address=c.address)
        assert len(_listening_ports(plain.raylet.pid)) == 1  # ZeroMQ's only

        cases = [("random", 9_000_000), ("floats", 10_000_000), ("mixed", 12_000_000)]
        made = {}
        for res in ("plain", "bulk"):
            on = make.options(resources={res: 1})
            refs = made[res] = [on.remote(k, n, i) for i, (k, n) in enumerate(cases)]
            for i, ((kind, n), ref) in enumerate(zip(cases, refs)):
                _check(kind, n, i, zray.get(ref, timeout=120))
            arange = on.remote("arange", 16_000_000)
            np.testing.assert_array_equal(zray.get(arange, timeout=120), np.arange(2_000_000))

        # The "bulk" node's raylet (same machine, no compression: big chunks, tokens) pulls
        # from the one without the plane: whole chunks come back as frames.
        @zray.remote(resources={"bulk": 1})
        def sums(a, b):
            return int(a.astype(np.int64).sum()), float(b.sum())

        a, b = made["plain"][0], made["plain"][1]
        assert zray.get(sums.remote(a, b), timeout=120) == (
            int(zray.get(a).astype(np.int64).sum()), float(zray.get(b).sum()))
        assert _bulk_conns(c.head_node.raylet.pid, _bulk_port(c, withbulk))
        # Pulled: compressed (fewer bytes on the wire), and raw over the bulk plane.
        pulls = [[int(w) for w in re.findall(r"(\d+) bytes \((\d+) on the wire, (\d+) on the "
                                             r"bulk plane\)", line)[0]]
                 for line in _log(c, c.head_node).splitlines() if "pulled" in line]
        assert any(wire < total for total, wire, _ in pulls), pulls
        assert any(b > 0 for _, _, b in pulls), pulls
        zray.shutdown()
    finally:
        if zray.is_initialized():
            zray.shutdown()
        c.shutdown()
