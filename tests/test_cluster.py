"""Many nodes on one machine (zray.cluster_utils.Cluster): scheduling across raylets,
objects pulled between nodes, node death, authentication, and nodes in separate
network namespaces. Every node is a real raylet process with its own store and workers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import psutil
import pytest

import zray
from zray import exceptions as zexc
from zray import node as znode
from zray import protocol
from zray.cluster_utils import Cluster
from zray.objstore import shm
from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOWHERE = "ab" * 16  # a valid node id no cluster has


def node_id() -> str:
    return zray.get_runtime_context().get_node_id()


def wait_idle(cpus: float) -> None:
    """Until leases of earlier tests went back (an idle owner returns them after 0.2 s)."""
    deadline = time.monotonic() + 20
    while zray.available_resources().get("CPU", 0) < cpus:
        assert time.monotonic() < deadline, zray.available_resources()
        time.sleep(0.05)


def session_prefix(cluster: Cluster) -> str:
    return "zray-" + os.path.basename(cluster.session_dir.rstrip("/"))[-8:] + "-"


def cluster_pids(cluster: Cluster) -> set[int]:
    pids = set()
    for n in cluster.list_all_nodes():
        for p in n.procs.procs:
            pids.add(p.pid)
            try:
                pids |= {c.pid for c in psutil.Process(p.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
    return pids


def assert_nothing_left(cluster: Cluster, pids: set[int]) -> None:
    deadline = time.monotonic() + 10
    while True:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        segs = shm.list_segments(session_prefix(cluster))
        socks = os.path.exists(os.path.join(cluster.session_dir, "sockets"))
        if not alive and not segs and not socks:
            return
        assert time.monotonic() < deadline, f"left behind: pids {alive}, segments {segs}, " \
                                            f"sockets dir: {socks}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster():
    if zray.is_initialized():
        zray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.n1 = c.add_node(num_cpus=1, resources={"r1": 1})
    c.n2 = c.add_node(num_cpus=1, resources={"r2": 1})
    c.wait_for_nodes()
    zray.init(address=c.address)
    pids = cluster_pids(c)
    yield c
    zray.shutdown()
    c.shutdown()
    assert_nothing_left(c, pids)


# ---------------------------------------------------------------- membership
def test_nodes_and_driver_attaches_to_the_head(cluster):
    nodes = zray.nodes()
    assert len(nodes) == 3 and all(n["Alive"] for n in nodes)
    head = [n for n in nodes if n["IsHead"]]
    assert len(head) == 1 and head[0]["NodeID"] == cluster.head_node.node_id
    assert zray.get_runtime_context().get_node_id() == cluster.head_node.node_id
    assert zray.cluster_resources()["CPU"] == 3
    assert {n.node_id for n in cluster.list_all_nodes()} == {n["NodeID"] for n in nodes}


# ---------------------------------------------------------------- scheduling
def test_routing_by_custom_resource(cluster):
    @zray.remote(resources={"r1": 1})
    def on_r1():
        return node_id()

    @zray.remote(resources={"r2": 0.5}, num_cpus=0)
    def on_r2():
        return node_id()

    assert zray.get([on_r1.remote() for _ in range(3)], timeout=60) == [cluster.n1.node_id] * 3
    assert zray.get(on_r2.remote(), timeout=60) == cluster.n2.node_id


def test_three_tasks_on_three_one_cpu_nodes_run_at_once(cluster, tmp_path):
    # Each task waits until all three have started: they finish only if they ran at once
    # (one per node, each node having one CPU), however slow the machine is.
    @zray.remote
    def together(d):
        open(os.path.join(d, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 60
        while len(os.listdir(d)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        return node_id(), len(os.listdir(d))

    wait_idle(3)
    out = zray.get([together.remote(str(tmp_path)) for _ in range(3)], timeout=120)
    assert [n for _, n in out] == [3, 3, 3], "the three tasks did not run at once"
    assert len({w for w, _ in out}) == 3, out


def test_spread(cluster, tmp_path):
    # Small tasks that the default policy would pack onto one node; each waits until all
    # three run (so that none can reuse another's worker), then says where it ran.
    @zray.remote(num_cpus=0.25, scheduling_strategy="SPREAD")
    def spread(d):
        open(os.path.join(d, str(os.getpid())), "w").close()
        deadline = time.monotonic() + 20
        while len(os.listdir(d)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        return node_id()

    wait_idle(3)
    where = zray.get([spread.remote(str(tmp_path)) for _ in range(3)], timeout=60)
    assert len(set(where)) == 3, where


def test_node_affinity(cluster):
    @zray.remote(num_cpus=0.5)
    def f():
        return node_id()

    for n in cluster.list_all_nodes():
        s = NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        assert zray.get(f.options(scheduling_strategy=s).remote(), timeout=60) == n.node_id
    soft = NodeAffinitySchedulingStrategy(NOWHERE, soft=True)
    assert zray.get(f.options(scheduling_strategy=soft).remote(), timeout=60) in {
        n.node_id for n in cluster.list_all_nodes()}
    hard = NodeAffinitySchedulingStrategy(NOWHERE, soft=False)
    with pytest.raises(zexc.TaskUnschedulableError):
        zray.get(f.options(scheduling_strategy=hard).remote(), timeout=60)
    with pytest.raises(ValueError):
        NodeAffinitySchedulingStrategy("not hex", soft=False)


# ---------------------------------------------------------------- objects
def test_cross_node_pulls_of_numpy_arrays(cluster):
    @zray.remote(resources={"r1": 1})
    def make(kind, n):
        if kind == "random":
            return np.random.default_rng(7).integers(0, 2**31, n, dtype=np.int64)
        return np.arange(n, dtype=np.float64) * 0.5

    @zray.remote(resources={"r2": 1})
    def consume(a, b):
        return node_id(), float(a.sum()), float(b[-1]), a.dtype.str, len(b)

    n = 3_000_000  # 24 MB each: several chunks, several in flight
    ra, rb = make.remote("random", n), make.remote("arange", n)
    # A driver on another node pulls them ...
    a, b = zray.get([ra, rb], timeout=60)
    np.testing.assert_array_equal(a, np.random.default_rng(7).integers(0, 2**31, n, dtype=np.int64))
    np.testing.assert_array_equal(b, np.arange(n, dtype=np.float64) * 0.5)
    # ... and so does a task on a third node.
    where, s, last, dt, ln = zray.get(consume.remote(ra, rb), timeout=60)
    assert where == cluster.n2.node_id
    assert s == float(a.sum()) and last == b[-1] and dt == a.dtype.str and ln == n
    # The owner recorded the pulled copies as second (and third) locations.
    cw = zray.api.worker_state.current()
    locs = cw.objects[ra._id].locs
    assert bytes.fromhex(cluster.head_node.node_id) in locs
    assert bytes.fromhex(cluster.n2.node_id) in locs


def test_nested_tasks_across_nodes(cluster):
    # A task on n1 submits one that needs n2's resource; the large value it gets back is
    # owned by the worker on n1, borrowed by the driver on the head and pulled from n2.
    @zray.remote(resources={"r2": 1})
    def inner():
        return np.full(500_000, 7, dtype=np.int64), node_id()

    @zray.remote(resources={"r1": 1})
    def outer():
        ref = inner.remote()
        arr, where = zray.get(ref)
        return [ref], int(arr.sum()), where, node_id()

    refs, total, inner_node, outer_node = zray.get(outer.remote(), timeout=60)
    assert (outer_node, inner_node) == (cluster.n1.node_id, cluster.n2.node_id)
    assert total == 3_500_000
    arr, _ = zray.get(refs[0], timeout=60)
    assert int(arr.sum()) == total


def test_driver_put_is_pulled_by_a_remote_task(cluster):
    @zray.remote(resources={"r2": 1})
    def total(x):
        return int(x.sum()), node_id()

    arr = np.arange(2_000_000, dtype=np.int32)
    ref = zray.put(arr)
    assert zray.get(total.remote(ref), timeout=60) == (int(arr.sum()), cluster.n2.node_id)


def test_freed_objects_leave_every_node(cluster):
    @zray.remote(resources={"r1": 1})
    def make():
        return np.ones(1_000_000)

    ref = make.remote()
    assert zray.get(ref, timeout=60).sum() == 1_000_000  # now on n1 and on the head
    name = ref.hex()
    segs = [s for s in shm.list_segments(session_prefix(cluster)) if name in s]
    assert len(segs) == 2, segs
    del ref
    deadline = time.monotonic() + 10
    while [s for s in shm.list_segments(session_prefix(cluster)) if name in s]:
        assert time.monotonic() < deadline, "copies of a freed object are still there"
        time.sleep(0.05)


# ---------------------------------------------------------------- node death
@pytest.mark.slow
def test_node_death_retries_rebuilds_and_fails_cleanly(monkeypatch, tmp_path):
    if zray.is_initialized():
        zray.shutdown()
    monkeypatch.setenv("ZRAY_NODE_DEATH_S", "2")  # the GCS reads it at start
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        doomed = c.add_node(num_cpus=1, resources={"r": 1, "d": 1})
        spare = c.add_node(num_cpus=1, resources={"r": 1})
        zray.init(address=c.address)
        pids = cluster_pids(c)
        on_doomed = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)

        @zray.remote(resources={"r": 1}, max_retries=2)
        def slow(marker):
            open(f"{marker}.{os.getpid()}", "w").close()
            time.sleep(3)
            return node_id()

        @zray.remote(resources={"r": 1})
        def big(seed):
            return np.random.default_rng(seed).integers(0, 1000, 500_000)

        @zray.remote(resources={"d": 1}, num_cpus=0, max_retries=0)
        def fragile(marker):
            open(marker, "w").close()
            time.sleep(30)

        @zray.remote(resources={"r": 1})
        def first(a):
            return int(a[0])

        rebuildable = big.options(scheduling_strategy=on_doomed).remote(1)
        lost = big.options(scheduling_strategy=on_doomed, max_retries=0).remote(2)
        copied = big.options(scheduling_strategy=on_doomed, max_retries=0).remote(3)
        # A task on the spare node reads it: a second copy there survives the node.
        on_spare = NodeAffinitySchedulingStrategy(spare.node_id, soft=False)
        zray.get(first.options(scheduling_strategy=on_spare).remote(copied), timeout=60)
        zray.wait([rebuildable, lost], num_returns=2, timeout=60)
        running = slow.options(scheduling_strategy=on_doomed).remote(str(tmp_path / "run"))
        doomed_only = fragile.remote(str(tmp_path / "fragile"))
        deadline = time.monotonic() + 30
        while len(list(tmp_path.iterdir())) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        c.remove_node(doomed, allow_graceful=False)
        # Death is noticed through missed heartbeats.
        deadline = time.monotonic() + 20
        while not [n for n in zray.nodes() if n["NodeID"] == doomed.node_id and not n["Alive"]]:
            assert time.monotonic() < deadline, "the killed node is still alive in zray.nodes()"
            time.sleep(0.1)
        # A task running there is retried elsewhere.
        assert zray.get(running, timeout=60) == spare.node_id
        assert len(list(tmp_path.glob("run.*"))) == 2  # it ran twice
        # One without retries fails instead of hanging.
        with pytest.raises(zexc.WorkerCrashedError):
            zray.get(doomed_only, timeout=60)
        # A value stored only there is made again by its task; one that cannot be, raises.
        np.testing.assert_array_equal(zray.get(rebuildable, timeout=60),
                                      np.random.default_rng(1).integers(0, 1000, 500_000))
        with pytest.raises(zexc.ObjectLostError):
            zray.get(lost, timeout=60)
        # The copy on the spare node is pulled from there (no retries needed).
        np.testing.assert_array_equal(zray.get(copied, timeout=60),
                                      np.random.default_rng(3).integers(0, 1000, 500_000))
        # Hard affinity to the dead node cannot be satisfied.
        hard = NodeAffinitySchedulingStrategy(doomed.node_id, soft=False)
        with pytest.raises(zexc.TaskUnschedulableError):
            zray.get(slow.options(scheduling_strategy=hard).remote("x"), timeout=60)
        zray.shutdown()
    finally:
        if zray.is_initialized():
            zray.shutdown()
        c.shutdown()
    assert_nothing_left(c, pids)


def test_remove_node_graceful_and_wait_for_nodes():
    if zray.is_initialized():
        zray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        n = c.add_node(num_cpus=1)
        c.wait_for_nodes()
        pids = cluster_pids(c)
        c.remove_node(n)  # graceful: the GCS hears of it at once
        c.wait_for_nodes(timeout=10)
        alive = {x["NodeID"]: x["Alive"] for x in c.nodes()}
        assert alive[n.node_id] is False and alive[c.head_node.node_id] is True
        assert not shm.list_segments(n.procs.shm_prefix)
    finally:
        c.shutdown()
    assert_nothing_left(c, pids)


# ---------------------------------------------------------------- auth
def test_peers_without_the_secret_are_refused(tmp_path):
    if zray.is_initialized():
        zray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    bad = None
    try:
        logs = os.path.join(c.session_dir, "logs")
        head_raylet = [n for n in c.nodes() if n["IsHead"]][0]["raylet_addr"][2]
        # 1. Peers without the secret (a wrong one, none): refused in the CURVE handshake,
        #    before any message is read, and logged.
        intruder = protocol.Conn(head_raylet, os.urandom(32))
        intruder.send({"t": protocol.REQUEST_LEASE, "lrid": 1, "res": {"CPU": 1},
                       "ra": "tcp://127.0.0.1:1"}, [b"payload"])
        raw = protocol.Conn(head_raylet, None)  # no keys at all
        raw.send({"t": protocol.SHUTDOWN})
        # 2. A raylet whose secret is not the cluster's cannot join.
        other = znode.new_session_dir(tempfile.mkdtemp(prefix="zr", dir="/tmp"))  # short paths
        znode.write_secret(other, os.urandom(32))
        bad = znode.start_worker_node(session_dir=other, gcs_address=c.address, num_cpus=1)
        deadline = time.monotonic() + 20

        def grep(name, text):
            with open(os.path.join(logs, name)) as f:
                return text in f.read()

        raylet_log = f"raylet-{c.head_node.node_id[:12]}.log"
        while not (grep(raylet_log, "refused a tcp peer") and grep("gcs.log", "refused a tcp peer")):
            assert time.monotonic() < deadline, "refused messages were not logged"
            time.sleep(0.1)
        time.sleep(1.0)
        assert bad.alive()  # it runs, but nobody listens to it
        assert [n["NodeID"] for n in c.nodes()] == [c.head_node.node_id]
        intruder.close()
        raw.close()
        # The head is unharmed: it still runs tasks.
        zray.init(address=c.address)

        @zray.remote
        def ok():
            return "ok"

        assert zray.get(ok.remote(), timeout=60) == "ok"
        zray.shutdown()
    finally:
        if bad is not None:
            for p in bad.procs:
                znode._terminate(p, 10)
            shm.remove_all(bad.shm_prefix)
            shutil.rmtree(os.path.dirname(bad.session_dir), ignore_errors=True)
        c.shutdown()


# ---------------------------------------------------------------- namespaces
NETNS_DRIVER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import zray
    from zray.cluster_utils import Cluster
    ip_a, ip_b, ns_b = sys.argv[1:4]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": ip_a})
    try:
        b = c.add_node(num_cpus=1, resources={"b": 1}, node_ip_address=ip_b, _netns=ns_b)
        zray.init(address=c.address)
        ips = sorted(n["NodeManagerAddress"] for n in zray.nodes())
        assert ips == sorted([ip_a, ip_b]), ips

        @zray.remote(resources={"b": 1})
        def make(n):
            import socket
            return np.arange(n, dtype=np.int64) * 3, zray.get_runtime_context().get_node_id()

        @zray.remote(resources={"b": 1})
        def total(a):
            return int(a.sum())

        ref = make.remote(2_000_000)
        arr, where = zray.get(ref, timeout=60)
        assert where == b.node_id
        np.testing.assert_array_equal(arr, np.arange(2_000_000, dtype=np.int64) * 3)
        mine = zray.put(np.ones(3_000_000))
        assert zray.get(total.remote(mine), timeout=60) == 3_000_000
        zray.shutdown()
        print("NETNS-OK", flush=True)
    finally:
        c.shutdown()
""")


@pytest.mark.netns
def test_nodes_in_separate_network_namespaces(tmp_path):
    from zray.util.netns import NetnsPair, available

    why = available()
    if why:
        pytest.skip(why)
    if zray.is_initialized():
        zray.shutdown()
    script = tmp_path / "netns_driver.py"
    script.write_text(NETNS_DRIVER)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with NetnsPair() as net:
        p = subprocess.run(net.exec_a([sys.executable, str(script), net.ip_a, net.ip_b,
                                       net.ns_b]),
                           capture_output=True, text=True, timeout=120, env=env,
                           stdin=subprocess.DEVNULL)
    assert "NETNS-OK" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0, p.stderr


def test_cluster_shutdown_after_sigkill_leaves_nothing():
    if zray.is_initialized():
        zray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    n = c.add_node(num_cpus=1, resources={"k": 1})
    zray.init(address=c.address)

    @zray.remote(resources={"k": 1})
    def make():
        return np.zeros(1_000_000)

    ref = make.remote()
    zray.wait([ref], timeout=60)
    assert shm.list_segments(n.procs.shm_prefix)
    pids = cluster_pids(c)
    c.remove_node(n, allow_graceful=False)
    assert not shm.list_segments(n.procs.shm_prefix)  # the cluster cleaned up for it
    assert not os.path.exists(n.raylet_socket_name)
    zray.shutdown()
    c.shutdown()
    assert_nothing_left(c, pids)
    shutil.rmtree(c.session_dir, ignore_errors=True)
