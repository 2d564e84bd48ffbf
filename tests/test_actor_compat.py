"""Ray's actor semantics that Ray's own test suite checks (issue 10): placement vs. held
resources of a default actor, the actor class showing the user class, graceful shutdown
hooks, why an actor died, and which handles keep an actor alive.

Runs against zray by default, against Ray with ZRAY_TEST_BACKEND=ray (backend.py).
"""

from __future__ import annotations

import pytest
from backend import IS_RAY, ray

pytestmark = pytest.mark.timeout(180)


@ray.remote
class Plain:
    def ping(self):
        return "pong"


@ray.remote(num_cpus=1)
class OneCpu:
    def ping(self):
        return "pong"


@ray.remote
def plain_task():
    return 7


# --- resources: 1 CPU to place a default actor, 0 to keep it ------------------------------
def test_default_actors_hold_no_cpu(ray_fresh):
    """Ray: an actor without num_cpus needs 1 CPU to be scheduled and holds 0 once created,
    so any number of them start on a 1-CPU node, created at once (not one after the other),
    and a task still finds the CPU free."""
    ray_fresh(num_cpus=1)
    actors = [Plain.remote() for _ in range(5)]
    assert ray.get([a.ping.remote() for a in actors], timeout=90) == ["pong"] * 5
    assert ray.available_resources().get("CPU") == 1.0
    assert ray.get(plain_task.remote(), timeout=60) == 7


def test_explicit_num_cpus_actor_holds_its_cpus(ray_fresh):
    """Ray: an explicit num_cpus is held for the actor's lifetime: a second 1-CPU actor
    on a 1-CPU node stays pending until the first is gone."""
    ray_fresh(num_cpus=1)
    a = OneCpu.remote()
    assert ray.get(a.ping.remote(), timeout=60) == "pong"
    assert ray.available_resources().get("CPU", 0.0) == 0.0
    b = OneCpu.remote()
    ready, _ = ray.wait([b.ping.remote()], timeout=3)
    assert not ready
    ray.kill(a)
    assert ray.get(b.ping.remote(), timeout=60) == "pong"


@pytest.mark.skipif(IS_RAY, reason="zray's raylet scheduler, driven directly")
def test_scheduler_grant_takes_only_the_hold():
    """Three actor leases queued while one worker starts: each grant takes only its hold,
    so the pass goes on to the next request (asks for its worker) instead of stalling."""
    from zray.raylet import scheduler as sch

    s = sch.NodeScheduler({"CPU": 1})
    s.node_id = b"n"
    s.handle(sch.WorkersStarting(1))
    for i in range(3):
        s.handle(sch.LeaseRequested(sch.LeaseRequest(i, "gcs", {"CPU": 1.0}, hold={})))
    acts = s.handle(sch.WorkerRegistered(b"w1"))
    assert [type(a) for a in acts] == [sch.Grant, sch.StartWorkers]
    acts = s.handle(sch.WorkerRegistered(b"w2"))
    assert [type(a) for a in acts] == [sch.Grant, sch.StartWorkers]
    acts = s.handle(sch.WorkerRegistered(b"w3"))
    assert [type(a) for a in acts] == [sch.Grant]
    assert s.available() == {"CPU": 1.0}
