"""Unit tests of the raylet's NodeScheduler state machine: events in, actions out."""

import pytest

from zray.raylet import scheduler as sch


def req(lrid, res, ra="ipc://owner", t=0.0):
    return sch.LeaseRequest(lrid, ra, res, None, t)


def kinds(acts):
    return [type(a).__name__ for a in acts]


def test_grant_needs_a_worker_then_grants():
    s = sch.NodeScheduler({"CPU": 2})
    acts = s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))
    assert kinds(acts) == ["StartWorkers"] and acts[0].n == 1
    acts = s.handle(sch.WorkerRegistered(b"w1"))
    assert kinds(acts) == ["Grant"]
    assert acts[0].wid == b"w1" and acts[0].res == {"CPU": 1}
    assert s.available()["CPU"] == 1


def test_queued_until_resources_return():
    s = sch.NodeScheduler({"CPU": 1})
    s.handle(sch.WorkerRegistered(b"w1"))
    s.handle(sch.WorkerRegistered(b"w2"))
    g = s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))
    assert kinds(g) == ["Grant"]
    assert s.handle(sch.LeaseRequested(req(2, {"CPU": 1}))) == []  # no CPU left: waits, starts nothing
    acts = s.handle(sch.LeaseReturned(g[0].lease_id, exiting=False))
    assert kinds(acts) == ["Grant"] and acts[0].req.lrid == 2


def test_infeasible_request_stays_and_warns_once():
    s = sch.NodeScheduler({"CPU": 4})
    assert s.handle(sch.LeaseRequested(req(1, {"CPU": 1, "nonexistent": 1}, t=0.0))) == []
    assert s.handle(sch.Tick(0.5, warn_after=1.0)) == []
    w = s.handle(sch.Tick(2.0, warn_after=1.0))
    assert kinds(w) == ["Warn"] and "nonexistent" in w[0].msg
    assert s.handle(sch.Tick(3.0, warn_after=1.0)) == []
    assert len(s.queue) == 1  # still pending, not failed


def test_worker_death_notifies_lease_holder_and_frees_resources():
    s = sch.NodeScheduler({"CPU": 1})
    s.handle(sch.WorkerRegistered(b"w1"))
    g = s.handle(sch.LeaseRequested(req(1, {"CPU": 1}, ra="ipc://a")))
    acts = s.handle(sch.WorkerExited(b"w1"))
    died = [a for a in acts if isinstance(a, sch.NotifyWorkerDied)]
    assert died and died[0].ra == "ipc://a" and died[0].lease_id == g[0].lease_id
    assert s.available()["CPU"] == 1


def test_blocked_worker_lends_its_cpu():
    s = sch.NodeScheduler({"CPU": 1})
    s.handle(sch.WorkerRegistered(b"w1"))
    s.handle(sch.WorkerRegistered(b"w2"))
    first = s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))[0].wid
    assert s.handle(sch.LeaseRequested(req(2, {"CPU": 1}))) == []
    acts = s.handle(sch.WorkerBlocked(first))
    assert kinds(acts) == ["Grant"] and acts[0].req.lrid == 2
    s.handle(sch.WorkerUnblocked(first))
    assert s.avail["CPU"] == -1  # oversubscribed until a lease returns


def test_owner_death_ends_its_leases_and_requests():
    s = sch.NodeScheduler({"CPU": 2})
    s.handle(sch.WorkerRegistered(b"w1"))
    s.handle(sch.LeaseRequested(req(1, {"CPU": 1}, ra="ipc://dead")))
    s.handle(sch.LeaseRequested(req(2, {"CPU": 5}, ra="ipc://dead")))
    acts = s.handle(sch.OwnerDied("ipc://dead"))
    assert [a.wid for a in acts if isinstance(a, sch.KillWorker)] == [b"w1"]
    assert s.available()["CPU"] == 2 and not s.queue


def test_gpu_ids_assigned_and_returned():
    s = sch.NodeScheduler({"CPU": 4, "GPU": 2})
    s.handle(sch.WorkerRegistered(b"w1"))
    s.handle(sch.WorkerRegistered(b"w2"))
    a = s.handle(sch.LeaseRequested(req(1, {"CPU": 1, "GPU": 1})))[0]
    b = s.handle(sch.LeaseRequested(req(2, {"CPU": 1, "GPU": 1})))[0]
    assert sorted(a.res["GPU_ids"] + b.res["GPU_ids"]) == [0, 1]
    s.handle(sch.LeaseReturned(a.lease_id, exiting=True))
    assert s.gpu_free == a.res["GPU_ids"]


def test_handle_is_the_only_way_in():
    """Events are values taken by handle(); anything else is refused by name."""
    s = sch.NodeScheduler({"CPU": 1})
    assert s.handle(sch.WorkersStarting(2)) == [] and s.starting == 2
    assert s.handle(sch.WorkerStartFailed()) == [] and s.starting == 1
    with pytest.raises(TypeError, match="not a scheduler event"):
        s.handle(sch.KillWorker(b"w"))  # an action is not an event
    assert not [n for n in ("request", "cancel", "tick", "worker_registered", "owner_died")
                if hasattr(s, n)]


def test_workers_dying_before_registering_are_restarted_with_backoff():
    """A broken worker environment must not make the raylet fork in a tight loop."""
    s = sch.NodeScheduler({"CPU": 1})
    s.handle(sch.Tick(100.0, warn_after=60))
    assert kinds(s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))) == ["StartWorkers"]
    for _ in range(sch.START_FAILURES_BEFORE_BACKOFF - 1):
        assert kinds(s.handle(sch.WorkerStartFailed())) == ["StartWorkers"]  # tried again
    acts = s.handle(sch.WorkerStartFailed())
    assert kinds(acts) == ["StartsHeld"] and acts[0].seconds == sch.START_BACKOFF_S
    assert s.handle(sch.Tick(100.1, warn_after=60)) == []  # held
    assert kinds(s.handle(sch.Tick(100.0 + sch.START_BACKOFF_S, warn_after=60))) == ["StartWorkers"]
    acts = s.handle(sch.WorkerStartFailed())  # the next one doubles the hold
    assert kinds(acts) == ["StartsHeld"] and acts[0].seconds == 2 * sch.START_BACKOFF_S
    t = 100.0 + 3 * sch.START_BACKOFF_S
    assert kinds(s.handle(sch.Tick(t, warn_after=60))) == ["StartWorkers"]
    assert kinds(s.handle(sch.WorkerRegistered(b"w1"))) == ["Grant"]
    assert s.start_failures == 0  # a registration ends the backoff
