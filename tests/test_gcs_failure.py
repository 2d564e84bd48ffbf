"""GCS death on real processes: noticed within seconds, no leak, then restored.

What we decided (Ray's behaviour as the contract): while the GCS is unreachable a
GCS-bound call (``get_actor``, ``nodes()``, creating an actor, KV) raises
``zray.exceptions.RpcError`` (Ray's name for a failed call to a cluster service;
``rpc_code`` 14 = gRPC UNAVAILABLE) naming the GCS address, as soon as the raylet
notices (at once for a GCS on its machine: it holds a pidfd on it; else after
ZRAY_GCS_PING_TIMEOUT_S of unanswered pings), instead of waiting the 30 s RPC
timeout. A raylet whose GCS stays away longer than ZRAY_GCS_RECONNECT_TIMEOUT_S
(Ray: gcs_rpc_server_reconnect_timeout_s) stops itself and its workers.

Time bounds below only catch hangs (the machine is shared and loaded).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import time

import psutil
import pytest
from backend import pid_alive, wait_until
from test_cli import session_root, wait_gone  # noqa: F401  (a fixture)
from test_cli import zray as zray_cli

import zray
from zray import api
from zray.exceptions import RpcError

RECONNECT_S = 4.0


def _node_leftovers(session: str, keep: str = "") -> list[str]:
    token = os.path.basename(session)[-8:]
    left = [f"segment {f}" for f in glob.glob(f"/dev/shm/zray-{token}-*")]
    left += [f"socket {f}" for f in glob.glob(os.path.join(session, "sockets", "raylet-*"))]
    left += [f"socket {f}" for f in glob.glob(os.path.join(session, "sockets", "w-*"))
             if not keep or not f.endswith("w-" + keep[:12])]
    return left


@pytest.fixture
def short_reconnect(monkeypatch):
    # Read by the GCS and raylet processes we start (config is read at import there).
    monkeypatch.setenv("ZRAY_GCS_RECONNECT_TIMEOUT_S", str(RECONNECT_S))
    yield
    if zray.is_initialized():
        zray.shutdown()


def test_embedded_gcs_sigkill_fails_fast_then_node_stops(short_reconnect):
    zray.init(num_cpus=1)

    @zray.remote
    def one():
        return 1

    assert zray.get(one.remote(), timeout=60) == 1
    head = api._head
    gcs, raylet = head.procs
    gcs_address = zray.get_runtime_context().gcs_address
    workers = [p.pid for p in psutil.Process(raylet.pid).children(recursive=True)]
    assert workers
    gcs.send_signal(signal.SIGKILL)
    gcs.wait(10)

    t0 = time.monotonic()
    with pytest.raises(RpcError) as ei:
        zray.get_actor("nobody-has-this-name")
    assert time.monotonic() - t0 < 20  # not the 30 s RPC timeout (only a hang guard)
    assert gcs_address in str(ei.value) and ei.value.rpc_code == 14
    with pytest.raises(RpcError):
        zray.nodes()

    @zray.remote
    class A:
        def f(self):
            return 1

    with pytest.raises(RpcError):
        A.remote()

    # The raylet gives up after the reconnect timeout and takes its workers along.
    assert wait_until(lambda: raylet.poll() is not None, RECONNECT_S + 30)
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), 15)
    me = zray.get_runtime_context().get_worker_id()  # the driver's own socket stays
    assert wait_until(lambda: not _node_leftovers(head.session_dir, me), 10), \
        _node_leftovers(head.session_dir, me)
    zray.shutdown()


def test_stale_down_news_does_not_fail_calls_to_a_live_gcs(short_reconnect):
    """A process told "the GCS is down" whose news of its return is late (a worker forked
    while it was away) still reaches a live GCS: the call asks anyway for
    ZRAY_GCS_DOWN_PROBE_S, gets its answer, and forgets the stale news."""
    zray.init(num_cpus=1)
    cw = api._ensure_initialized()
    cw.gcs_down = "stale: the GCS was said to be down"
    assert any(n["Alive"] for n in zray.nodes())  # answered, not RpcError
    assert cw.gcs_down == ""
    zray.shutdown()


def test_unanswered_pings_mean_down_and_an_answer_means_up(monkeypatch):
    """A GCS that stops answering without exiting (SIGSTOP here; a remote host gone in
    life) is down after ZRAY_GCS_PING_TIMEOUT_S: calls fail fast; when it answers again
    the raylet registers again and calls work."""
    monkeypatch.setenv("ZRAY_GCS_PING_TIMEOUT_S", "2")
    zray.init(num_cpus=1)
    try:
        @zray.remote
        class A:
            def f(self):
                return 1

        a = A.options(name="a").remote()
        assert zray.get(a.f.remote(), timeout=60) == 1
        gcs = api._head.procs[0]
        gcs.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(RpcError, match="did not answer"):
                zray.get_actor("a")
            assert time.monotonic() - t0 < 20  # hang guard
            assert zray.get(a.f.remote(), timeout=60) == 1  # actor calls need no GCS
        finally:
            gcs.send_signal(signal.SIGCONT)
        assert wait_until(lambda: _try(lambda: zray.get_actor("a")) is not None, 30)
        assert zray.get(zray.get_actor("a").f.remote(), timeout=60) == 1
    finally:
        zray.shutdown()


def test_cli_head_gcs_sigkill_headless_node_exits(session_root):  # noqa: F811
    root = session_root
    env = {"ZRAY_GCS_RECONNECT_TIMEOUT_S": str(RECONNECT_S)}
    zray_cli(root, "start", "--head", "--num-cpus", "1", env_extra=env)
    pids = _pids(root)
    raylet = psutil.Process(pids["raylet"])
    assert wait_until(lambda: raylet.children(recursive=True), 30)
    workers = [p.pid for p in raylet.children(recursive=True)]
    os.kill(pids["gcs"], signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pids["raylet"]), RECONNECT_S + 30)
    assert wait_until(lambda: not any(pid_alive(p) for p in workers), 15)
    # The SIGKILLed GCS's own socket file stays (`zray stop` removes it); nothing else.
    left = [x for x in wait_gone(root, timeout=15) if not x.endswith("/sockets/gcs")]
    assert not left, left


def _pids(root: str) -> dict:
    session = os.path.realpath(os.path.join(root, "session_latest"))
    pids = {}
    for f in glob.glob(os.path.join(session, "pids", "*.json")):
        with open(f) as fh:
            rec = json.load(fh)
        pids[rec["role"]] = rec["pid"]
    return pids


@pytest.mark.slow
def test_cli_gcs_restart_restores_actors_kv_and_nodes(session_root, monkeypatch):  # noqa: F811
    """SIGKILL the GCS of `zray start --head`, run `zray start --head` again on the same
    port: it restores the session's GCS from gcs.sqlite; the raylet registers again, the
    detached named actor answers, functions exported before the crash are still in the KV
    (a restart of that actor on a new worker loads its class from there), new work runs."""
    from test_cli import free_port

    root = session_root
    port = free_port()
    monkeypatch.setenv("ZRAY_SESSION_ROOT", root)
    zray_cli(root, "start", "--head", "--port", str(port), "--num-cpus", "2")
    pids = _pids(root)
    zray.init(address="auto")
    try:
        @zray.remote(max_restarts=1)
        class Keeper:
            def __init__(self):
                self.n = 0

            def incr(self):
                self.n += 1
                return self.n

            def pid(self):
                return os.getpid()

        @zray.remote
        def square(x):
            return x * x

        k = Keeper.options(name="keeper", lifetime="detached").remote()
        assert zray.get(k.incr.remote(), timeout=60) == 1
        assert zray.get(square.remote(3), timeout=60) == 9
        node_id = zray.get_runtime_context().get_node_id()

        os.kill(pids["gcs"], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(RpcError, match=f"127.0.0.1:{port}"):
            zray.get_actor("keeper")
        assert time.monotonic() - t0 < 20  # hang guard: not the 30 s RPC timeout
        # Calls to a live actor do not go through the GCS.
        assert zray.get(k.incr.remote(), timeout=60) == 2

        out = zray_cli(root, "start", "--head", "--port", str(port), "--num-cpus", "2").stdout
        assert "Restored" in out, out
        assert _pids(root)["raylet"] == pids["raylet"]  # the old head raylet was kept

        def gcs_back():
            try:
                return any(n["NodeID"] == node_id and n["Alive"] for n in zray.nodes())
            except RpcError:
                return False

        assert wait_until(gcs_back, 30)
        k2 = zray.get_actor("keeper")
        assert zray.get(k2.incr.remote(), timeout=60) == 3
        assert zray.get(square.remote(4), timeout=60) == 16
        fresh = Keeper.remote()
        assert zray.get(fresh.incr.remote(), timeout=60) == 1

        # The restored record restarts the actor; its new worker loads the class exported
        # before the crash from the restored KV.
        os.kill(zray.get(k2.pid.remote(), timeout=60), signal.SIGKILL)
        assert wait_until(lambda: _try(lambda: zray.get(k2.incr.remote(), timeout=10)) == 1, 60)
        zray.kill(k2)
    finally:
        zray.shutdown()
    zray_cli(root, "stop")
    assert not wait_gone(root, timeout=15)


def _try(fn):
    try:
        return fn()
    except Exception:
        return None


@pytest.mark.slow
def test_cluster_gcs_restart_two_nodes(short_reconnect):
    """Cluster.head_node.kill_gcs_server()/start_gcs_server() (Ray's names): a worker node
    (tcp to the GCS) registers again; its detached named actor survives; new work runs."""
    from zray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        worker = cluster.add_node(num_cpus=1, resources={"w": 1})
        cluster.connect()

        @zray.remote(resources={"w": 0.5})
        class Where:
            def node(self):
                return zray.get_runtime_context().get_node_id()

        @zray.remote(resources={"w": 0.5})
        def on_worker():
            return zray.get_runtime_context().get_node_id()

        w = Where.options(name="where", lifetime="detached").remote()
        assert zray.get(w.node.remote(), timeout=60) == worker.node_id

        cluster.head_node.kill_gcs_server()
        with pytest.raises(RpcError):
            zray.get_actor("where")
        cluster.head_node.start_gcs_server()
        # Within the reconnect timeout (4 s here): both raylets are back.
        cluster.wait_for_nodes(30)
        assert wait_until(lambda: _try(lambda: zray.get_actor("where")) is not None, 30)
        assert zray.get(zray.get_actor("where").node.remote(), timeout=60) == worker.node_id
        assert zray.get(on_worker.remote(), timeout=60) == worker.node_id
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_cli_restore_after_the_head_raylet_gave_up(session_root, monkeypatch):  # noqa: F811
    """The GCS stays away beyond the reconnect timeout: the head raylet stops with its
    workers. `zray start --head` on that port still restores the session (with a new head
    raylet); the old node is dead after NODE_DEATH_S, and the detached actor that ran there
    is restarted on the new node from its restored record and class."""
    from test_cli import free_port

    root = session_root
    port = free_port()
    monkeypatch.setenv("ZRAY_SESSION_ROOT", root)
    env = {"ZRAY_GCS_RECONNECT_TIMEOUT_S": "2"}
    zray_cli(root, "start", "--head", "--port", str(port), "--num-cpus", "1", env_extra=env)
    pids = _pids(root)
    zray.init(address="auto", namespace="keep")

    @zray.remote(max_restarts=1)
    class Keeper:
        def node(self):
            return zray.get_runtime_context().get_node_id()

    k = Keeper.options(name="keeper", lifetime="detached").remote()
    old_node = zray.get(k.node.remote(), timeout=60)
    zray.shutdown()
    os.kill(pids["gcs"], signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pids["raylet"]), 30)

    out = zray_cli(root, "start", "--head", "--port", str(port), "--num-cpus", "1").stdout
    assert "Restored" in out, out
    session = os.path.realpath(os.path.join(root, "session_latest"))
    raylets = [json.load(open(f))["pid"] for f in glob.glob(os.path.join(session, "pids",
                                                                         "raylet-*.json"))]
    assert any(p != pids["raylet"] and pid_alive(p) for p in raylets)  # a new head raylet
    zray.init(address="auto", namespace="keep")
    try:
        def restarted_elsewhere():
            h = _try(lambda: zray.get_actor("keeper"))
            return h is not None and _try(lambda: zray.get(h.node.remote(), timeout=10))

        assert wait_until(lambda: restarted_elsewhere() not in (None, False, old_node), 60)
        dead = [n for n in zray.nodes() if n["NodeID"] == old_node]
        assert dead and not dead[0]["Alive"]
    finally:
        zray.shutdown()
    zray_cli(root, "stop")
    assert not wait_gone(root, timeout=15)
