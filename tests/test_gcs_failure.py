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
from backend import wait_until
from test_cli import session_root, wait_gone  # noqa: F401  (a fixture)
from test_cli import zray as zray_cli

import zray
from zray import api
from zray.exceptions import RpcError

RECONNECT_S = 4.0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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
    assert wait_until(lambda: not any(_alive(p) for p in workers), 15)
    me = zray.get_runtime_context().get_worker_id()  # the driver's own socket stays
    assert wait_until(lambda: not _node_leftovers(head.session_dir, me), 10), \
        _node_leftovers(head.session_dir, me)
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
    assert wait_until(lambda: not _alive(pids["raylet"]), RECONNECT_S + 30)
    assert wait_until(lambda: not any(_alive(p) for p in workers), 15)
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
