"""Actors across nodes (zray.cluster_utils.Cluster): placement by custom resource, calls
from a task on a third node, restarts after node death, fate sharing across nodes.

Every node is a real raylet with its own workers; node death is a SIGKILL.
"""

from __future__ import annotations

import os
import time

import pytest
from backend import wait_until

import zray
from zray import exceptions as zexc
from zray.cluster_utils import Cluster

pytestmark = pytest.mark.timeout(180)


@zray.remote
class Where:
    def __init__(self):
        self.n = 0

    def node(self):
        return zray.get_runtime_context().get_node_id()

    def inc(self):
        self.n += 1
        return self.n

    def restarted(self):
        return zray.get_runtime_context().was_current_actor_reconstructed


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setenv("ZRAY_NODE_DEATH_S", "2")  # the GCS reads it when it starts
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        yield c
    finally:
        if zray.is_initialized():
            zray.shutdown()
        c.shutdown()


def test_actor_on_peer_called_from_task_on_third_node(cluster):
    b = cluster.add_node(num_cpus=1, resources={"b": 2})
    c = cluster.add_node(num_cpus=1, resources={"c": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    a = Where.options(resources={"b": 1}).remote()
    assert zray.get(a.node.remote()) == b.node_id

    @zray.remote(resources={"c": 1})
    def call_it(actor, n):
        results = zray.get([actor.inc.remote() for _ in range(n)])
        return zray.get_runtime_context().get_node_id(), results

    where, results = zray.get(call_it.remote(a, 5))
    assert where == c.node_id
    assert results == [1, 2, 3, 4, 5]
    assert zray.get(a.inc.remote()) == 6

    # An actor on the third node calls the one on the second.
    @zray.remote(resources={"c": 0.5})
    class Caller:
        def __init__(self, target):
            self.target = target

        def go(self):
            return zray.get(self.target.inc.remote())

    caller = Caller.remote(a)
    assert zray.get(caller.go.remote()) == 7
    # Named actor found from the other node.
    named = Where.options(name="on-b", resources={"b": 0.5}).remote()
    zray.get(named.inc.remote())

    @zray.remote(resources={"c": 0.1})
    def by_name():
        return zray.get(zray.get_actor("on-b").inc.remote())

    assert zray.get(by_name.remote()) == 2


def test_actor_restarted_after_its_node_dies(cluster):
    n1 = cluster.add_node(num_cpus=1, resources={"r": 1})
    n2 = cluster.add_node(num_cpus=1, resources={"r": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    a = Where.options(resources={"r": 1}, max_restarts=1, max_task_retries=1).remote()
    first = zray.get(a.node.remote())
    assert zray.get(a.inc.remote()) == 1
    doomed, survivor = (n1, n2) if first == n1.node_id else (n2, n1)
    cluster.remove_node(doomed, allow_graceful=False)
    # Calls made while the node is dying wait for the restart (or are retried).
    assert zray.get(a.inc.remote(), timeout=60) == 1  # a fresh instance
    assert zray.get(a.node.remote()) == survivor.node_id
    assert zray.get(a.restarted.remote()) is True


def test_actor_without_restarts_dies_with_its_node(cluster):
    n = cluster.add_node(num_cpus=1, resources={"x": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    a = Where.options(resources={"x": 1}).remote()
    assert zray.get(a.node.remote()) == n.node_id
    cluster.remove_node(n, allow_graceful=False)
    with pytest.raises(zexc.RayActorError):
        for _ in range(100):
            zray.get(a.inc.remote(), timeout=30)
            time.sleep(0.1)


def test_child_actor_dies_when_owner_node_dies(cluster):
    parent_node = cluster.add_node(num_cpus=1, resources={"p": 1})
    cluster.add_node(num_cpus=1, resources={"k": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)

    @zray.remote(resources={"p": 1})
    class Parent:
        def __init__(self):
            self.child = Where.options(resources={"k": 1}).remote()

        def child_(self):
            return [self.child]

    p = Parent.remote()
    [child] = zray.get(p.child_.remote())
    assert zray.get(child.inc.remote()) == 1
    cluster.remove_node(parent_node, allow_graceful=False)
    with pytest.raises(zexc.RayActorError):
        for _ in range(200):
            zray.get(child.inc.remote(), timeout=30)
            time.sleep(0.1)


def test_detached_actor_on_peer_outlives_driver(cluster, tmp_path):
    import subprocess
    import sys

    cluster.add_node(num_cpus=1, resources={"d": 1})
    cluster.wait_for_nodes()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = f"""
import zray
zray.init(address={cluster.address!r}, namespace="ns1")
@zray.remote(resources={{"d": 1}})
class Keeper:
    def __init__(self):
        self.v = 0
    def add(self, k):
        self.v += k
        return self.v
k = Keeper.options(name="keeper", lifetime="detached").remote()
print("V", zray.get(k.add.remote(5)))
"""
    path = tmp_path / "d1.py"
    path.write_text(src)
    env = dict(os.environ, PYTHONPATH=repo)
    env.pop("ZRAY_ADDRESS", None)
    p = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and "V 5" in p.stdout, p.stdout + p.stderr
    zray.init(address=cluster.address, namespace="ns1")
    k = zray.get_actor("keeper")
    assert zray.get(k.add.remote(1)) == 6
    zray.kill(k)


def test_actor_scheduling_strategies(cluster):
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    n1 = cluster.add_node(num_cpus=1)
    n2 = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    for n in (n1, n2, cluster.head_node):
        a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n.node_id, soft=False)).remote()
        assert zray.get(a.node.remote()) == n.node_id
    spread = [Where.options(scheduling_strategy="SPREAD", num_cpus=1).remote()
              for _ in range(3)]
    assert len(set(zray.get([a.node.remote() for a in spread]))) == 3
    for a in spread:  # they hold every CPU: a default actor needs one free to be placed
        zray.kill(a)
    # Hard affinity to a node that is not there: the actor cannot be scheduled.
    ghost = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        "ab" * 16, soft=False)).remote()
    with pytest.raises((zexc.ActorUnschedulableError, zexc.RayActorError)):
        zray.get(ghost.node.remote(), timeout=60)
    soft = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        "ab" * 16, soft=True)).remote()
    assert zray.get(soft.node.remote(), timeout=60)


def test_large_values_to_and_from_an_actor_on_a_peer(cluster):
    np = pytest.importorskip("numpy")
    cluster.add_node(num_cpus=1, resources={"far": 1})
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)

    @zray.remote(resources={"far": 1})
    class Big:
        def __init__(self, arr):
            self.arr = arr

        def total(self, other):
            return float(self.arr.sum() + other.sum())

        def make(self, n):
            return np.arange(n, dtype=np.int64)

    a = np.ones(2_000_000, dtype=np.float64)
    big = Big.remote(a)
    ref = zray.put(np.full(1_000_000, 2.0))
    assert zray.get(big.total.remote(ref)) == 2_000_000 + 2_000_000
    out = zray.get(big.make.remote(3_000_000))
    assert out.shape == (3_000_000,) and int(out[-1]) == 2_999_999


def test_actor_soft_affinity_spills_off_a_busy_node(cluster, tmp_path):
    """``_spill_on_unavailable`` reaches the raylet for actors as for tasks (one
    protocol.strategy_wire; the actor path's copy once dropped it, and the actor
    waited for the busy node instead)."""
    from zray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    n1 = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    zray.init(address=cluster.address)
    started, gate = tmp_path / "started", tmp_path / "gate"

    @zray.remote(num_cpus=1)
    def hold(started: str, gate: str) -> bool:
        open(started, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    busy = hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n1.node_id, soft=False)).remote(str(started), str(gate))
    try:
        assert wait_until(started.exists, 60), "the holding task never started"
        a = Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n1.node_id, soft=True, _spill_on_unavailable=True)).remote()
        node = zray.get(a.node.remote(), timeout=60)
    finally:
        gate.touch()
    assert node != n1.node_id
    assert zray.get(busy, timeout=60)
