"""The owner state machine (zray/owner/), driven by events alone: no processes, no sockets.

In the style of dask's WorkerState tests: feed events to ``Owner.handle`` and
check the instructions it returns and the state it keeps.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from zray import config, ids, serialization
from zray import exceptions as exc
from zray.object_ref import ObjectRef
from zray.owner import Owner
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.actors import EXIT_GRACE_S, Call
from zray.owner.state import FAILED, INLINE, PENDING, READY, STORED, Task

NODE = b"n" * 28
OTHER_NODE = b"o" * 28
ME = [NODE, "ipc:///tmp/zray-test/w-me", None]
OTHER_OWNER = [OTHER_NODE, "ipc:///tmp/zray-test/w-other", "tcp://10.0.0.2:5000"]
RAYLET2 = [OTHER_NODE, "ipc:///tmp/zray-test/raylet", "tcp://10.0.0.2:6000"]


def make_owner() -> Owner:
    return Owner(NODE, ME[1], ME, "me", lambda e: serialization.serialize(e)[0],
                 serialization.deserialize)


def task(retries: int = 0, nret=1, args: list | None = None) -> Task:
    return Task(ids.new_task_id(), "f", nret, args or [], [], fn_id=b"fn", retries=retries,
                res={"CPU": 1})


def of(out: list, cls: type) -> list:
    return [i for i in out if isinstance(i, cls)]


def grant(o: Owner, lrid: int, wid: bytes, node: bytes = NODE, raylet=None) -> list:
    return o.handle(ev.LeaseGranted(lrid, wid, "ipc://w-" + wid.hex(), lrid, node,
                                    {"CPU": 1}, raylet or [NODE, "ipc://raylet", None]))


def reply(o: Owner, t: Task, dt: float = 1e-4, stored_on: bytes | None = None) -> list:
    if stored_on is None:
        frames = serialization.serialize(42)[0]
        return o.handle(ev.TaskReply(t.tid, [[INLINE, len(frames), False]], frames, dt=dt))
    return o.handle(ev.TaskReply(t.tid, [[STORED, stored_on, 1000]], [], dt=dt))


def error_of(o: Owner, oid: bytes) -> BaseException:
    e = o.objects[oid]
    assert e.state == FAILED and e.is_error
    return serialization.deserialize(e.frames)


def test_submits_request_leases():
    o = make_owner()
    outs = [o.handle(ev.Submit(task())) for _ in range(3)]
    reqs = [of(out, ins.RequestLease) for out in outs]
    assert [len(r) for r in reqs] == [1, 1, 1]  # one per queued task, up to the limit
    assert len({r[0].lrid for r in reqs}) == 3
    assert not any(of(out, ins.PushTask) for out in outs)
    # Over MAX_PENDING_LEASES, tasks wait for a lease without asking for more.
    more = [o.handle(ev.Submit(task())) for _ in range(config.MAX_PENDING_LEASES)]
    assert sum(len(of(out, ins.RequestLease)) for out in more) == \
        config.MAX_PENDING_LEASES - 3


def test_grant_pushes_the_first_queued_task():
    o = make_owner()
    t1, t2 = task(), task()
    lrid = of(o.handle(ev.Submit(t1)), ins.RequestLease)[0].lrid
    o.handle(ev.Submit(t2))
    out = grant(o, lrid, b"w1")
    pushes = of(out, ins.PushTask)
    assert [p.task for p in pushes] == [t1]
    assert pushes[0].worker.addr == "ipc://w-" + b"w1".hex()
    assert t1.state == "running" and t2.state == "queued"
    # The reply makes its return ready and frees the worker for the next task.
    out = reply(o, t1)
    ready = of(out, ins.ObjectsReady)
    assert ready and t1.oids[0] in ready[0].oids
    assert o.objects[t1.oids[0]].state == READY
    assert [p.task for p in of(out, ins.PushTask)] == [t2]


def test_a_grant_nobody_needs_is_returned():
    o = make_owner()
    out = grant(o, 99, b"w1")
    assert of(out, ins.ReturnLease) and not of(out, ins.PushTask)


def _pipelined(o: Owner, retries: int = 0) -> tuple[list, object]:
    """Enough short tasks that a worker gets a second one while busy."""
    tasks = [task(retries) for _ in range(config.MAX_PENDING_LEASES + 4)]
    lrids = []
    for t in tasks:
        lrids += [r.lrid for r in of(o.handle(ev.Submit(t)), ins.RequestLease)]
    grant(o, lrids[0], b"w1")
    out = reply(o, tasks[0], dt=1e-4)  # short: this key's tasks may be pipelined
    return tasks, out


def test_short_replies_pipeline_a_second_task_to_a_busy_worker():
    o = make_owner()
    tasks, out = _pipelined(o)
    pushes = of(out, ins.PushTask)
    assert [p.task for p in pushes] == tasks[1:3]
    w = pushes[0].worker
    assert pushes[1].worker is w and len(w.inflight) == 2


def test_long_tasks_are_not_pipelined():
    o = make_owner()
    tasks = [task() for _ in range(config.MAX_PENDING_LEASES + 4)]
    lrids = []
    for t in tasks:
        lrids += [r.lrid for r in of(o.handle(ev.Submit(t)), ins.RequestLease)]
    grant(o, lrids[0], b"w1")
    out = reply(o, tasks[0], dt=10 * config.PIPELINE_MAX_TASK_S)
    assert [p.task for p in of(out, ins.PushTask)] == [tasks[1]]


def test_worker_death_retries_the_started_call_and_requeues_the_other_for_free():
    o = make_owner()
    tasks, out = _pipelined(o, retries=1)
    started, behind = tasks[1], tasks[2]
    assert started.attempt == behind.attempt == 1
    o.handle(ev.WorkerDied(b"w1", "killed"))
    assert started.retries == 0, "the task that may have run used a retry"
    assert behind.retries == 1 and behind.attempt == 0, "the unstarted one is requeued free"
    ks = o.keys[started.key]
    assert list(ks.queue)[:2] == [started, behind]
    assert started.state == behind.state == "queued"
    # A second death of the retried task fails it.
    lrid = next(iter(ks.pending_leases))
    grant(o, lrid, b"w2")
    assert started.state == "running"
    out = o.handle(ev.WorkerDied(b"w2", "killed"))
    assert isinstance(error_of(o, started.oids[0]), exc.WorkerCrashedError)
    assert of(out, ins.ObjectsReady)


def test_tasks_handed_back_are_requeued_and_stop_pipelining():
    o = make_owner()
    tasks, out = _pipelined(o)
    o.handle(ev.TasksReturned([tasks[2].tid]))
    ks = o.keys[tasks[2].key]
    assert ks.queue[0] is tasks[2] and tasks[2].attempt == 0
    assert ks.depth() == 1


def test_dropped_borrowed_ref_is_released_after_the_delay():
    o = make_owner()
    oid = ids.object_id_for(ids.new_task_id(), 1)
    out = o.handle(ev.RefAdded(oid, OTHER_OWNER))
    assert of(out, ins.AddBorrower) == [ins.AddBorrower(OTHER_OWNER, oid)]
    assert not o.handle(ev.RefsDropped([oid]))
    assert oid not in o.objects
    delay = config.BORROW_RELEASE_DELAY_S
    assert not o.handle(ev.Tick(100.0))  # the release is due one delay from now
    assert not o.handle(ev.Tick(100.0 + delay - 0.01))
    out = o.handle(ev.Tick(100.0 + delay + 0.01))
    assert out == [ins.RemoveBorrower(OTHER_OWNER, oid)]
    assert not o.handle(ev.Tick(200.0))


def test_borrowed_again_before_the_delay_sends_no_release():
    o = make_owner()
    oid = ids.object_id_for(ids.new_task_id(), 1)
    o.handle(ev.RefAdded(oid, OTHER_OWNER))
    o.handle(ev.RefsDropped([oid]))
    o.handle(ev.Tick(100.0))
    out = o.handle(ev.RefAdded(oid, OTHER_OWNER))
    assert of(out, ins.AddBorrower)
    assert not of(o.handle(ev.Tick(100.0 + config.BORROW_RELEASE_DELAY_S + 1)),
                  ins.RemoveBorrower)


def test_owned_object_lives_while_borrowed():
    o = make_owner()
    oid = ids.new_put_id()
    o.handle(ev.Put(oid, serialization.serialize(1)[0], None, 10, []))
    o.handle(ev.RefAdded(oid, ME))
    o.handle(ev.BorrowerAdded(oid, "ipc://borrower"))
    o.handle(ev.RefsDropped([oid]))
    assert oid in o.objects, "freed while a borrower holds it"
    o.handle(ev.BorrowerRemoved(oid, "ipc://borrower"))
    assert oid not in o.objects


def test_freeing_a_stored_value_frees_its_copies():
    o = make_owner()
    oid = ids.new_put_id()
    o.handle(ev.Put(oid, None, NODE, 10 << 20, []))
    o.handle(ev.RefAdded(oid, None))
    out = o.handle(ev.RefsDropped([oid]))
    assert of(out, ins.FreeObjects) == [ins.FreeObjects(None, [oid], NODE)]


def test_a_borrower_asking_for_a_pending_value_is_answered_once_it_is_ready():
    o = make_owner()
    t = task()
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    oid = t.oids[0]
    assert o.handle(ev.GetObject(oid, "ipc://borrower")) == [], "pending: the answer waits"
    grant(o, lrid, b"w1")
    out = reply(o, t)
    assert [(i.ra, i.oid, i.entry is o.objects[oid]) for i in of(out, ins.SendValue)] == \
        [("ipc://borrower", oid, True)]
    # An object this process does not own: an error answer at once.
    stranger = ids.object_id_for(ids.new_task_id(), 1)
    sends = of(o.handle(ev.GetObject(stranger, "ipc://borrower")), ins.SendValue)
    assert isinstance(sends[0].error, exc.ReferenceCountingAssertionError)


def test_refs_in_a_return_value_are_lent_and_held_by_the_value():
    o = make_owner()
    inner = ids.new_put_id()
    o.handle(ev.Put(inner, serialization.serialize(1)[0], None, 10, []))
    o.handle(ev.RefAdded(inner, None))
    # Lent to the caller of a task that returns it: a borrower keeps it alive.
    o.handle(ev.Lend([(inner, ME)], OTHER_OWNER, "tcp://10.0.0.2:5000"))
    o.handle(ev.RefsDropped([inner]))
    assert inner in o.objects
    o.handle(ev.BorrowerRemoved(inner, "tcp://10.0.0.2:5000"))
    assert inner not in o.objects
    # A borrowed ref inside a value we get back is held while the value lives.
    t = task()
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    grant(o, lrid, b"w1")
    nested = ids.object_id_for(ids.new_task_id(), 1)
    frames = serialization.serialize(42)[0]
    o.handle(ev.TaskReply(t.tid, [[INLINE, len(frames), False]], frames,
                          contained=[[OTHER_OWNER, [[0, nested]]]]))
    assert o.objects[nested].pins == 1 and not o.objects[nested].owned
    out = o.handle(ev.RefsDropped([t.oids[0]]))  # the outer value goes: so does the borrow
    assert nested not in o.objects and out == []
    assert of(o.handle(ev.Tick(0.0)), ins.RemoveBorrower) == []
    assert of(o.handle(ev.Tick(config.BORROW_RELEASE_DELAY_S + 1)), ins.RemoveBorrower) == \
        [ins.RemoveBorrower(OTHER_OWNER, nested)]


def test_a_worker_exiting_after_max_calls_returns_its_lease_and_hands_back_the_rest():
    o = make_owner()
    t1, t2 = task(), task()
    lrid = of(o.handle(ev.Submit(t1)), ins.RequestLease)[0].lrid
    o.handle(ev.Submit(t2))
    grant(o, lrid, b"w1")
    frames = serialization.serialize(1)[0]
    out = o.handle(ev.TaskReply(t1.tid, [[INLINE, len(frames), False]], frames, exiting=True))
    assert [r.exiting for r in of(out, ins.ReturnLease)] == [True]
    assert t2.state == "queued" and not of(out, ins.PushTask)


def test_application_errors_retry_only_when_asked():
    o = make_owner()
    t = Task(ids.new_task_id(), "f", 1, [], [], fn_id=b"fn", retries=1, retry_exc=[KeyError])
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    grant(o, lrid, b"w1")
    err = serialization.serialize(exc.RayTaskError("f", "tb", KeyError("k")))[0]
    out = o.handle(ev.TaskReply(t.tid, [[INLINE, len(err), True]], err, err=True))
    assert [p.task for p in of(out, ins.PushTask)] == [t] and t.retries == 0
    out = o.handle(ev.TaskReply(t.tid, [[INLINE, len(err), True]], err, err=True))
    assert isinstance(error_of(o, t.oids[0]), exc.RayTaskError), "no retries left: the error"


def test_copies_pulled_elsewhere_are_reported_and_freed():
    o = make_owner()
    oid = ids.new_put_id()
    o.handle(ev.Put(oid, None, NODE, 10 << 20, []))
    o.handle(ev.RefAdded(oid, None))
    o.handle(ev.LocationAdded(oid, OTHER_NODE, RAYLET2))
    out = o.handle(ev.GetLocations(oid, "ipc://raylet", 7))
    assert of(out, ins.LocationsReply) == [ins.LocationsReply("ipc://raylet", 7, oid,
                                                              [NODE, OTHER_NODE])]
    out = o.handle(ev.RefsDropped([oid]))
    assert sorted((f.dest or "", f.node) for f in of(out, ins.FreeObjects)) == \
        [("", NODE), (RAYLET2[2], OTHER_NODE)]


def _stored_on_other_node(o: Owner, retries: int) -> Task:
    t = task(retries)
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    grant(o, lrid, b"w9", node=OTHER_NODE, raylet=RAYLET2)
    reply(o, t, stored_on=OTHER_NODE)
    assert o.objects[t.oids[0]].state == READY
    return t


def test_node_death_reexecutes_from_lineage():
    o = make_owner()
    arg_oid = ids.new_put_id()
    o.handle(ev.Put(arg_oid, serialization.serialize("arg")[0], None, 10, []))
    arg = ObjectRef(arg_oid, ME, _register=False)
    t = task(retries=1, args=[arg])
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    grant(o, lrid, b"w9", node=OTHER_NODE, raylet=RAYLET2)
    reply(o, t, stored_on=OTHER_NODE)
    assert t.tid in o.lineage and o.objects[arg_oid].pins == 1, "lineage keeps the arguments"
    out = o.handle(ev.NodeDied(OTHER_NODE, RAYLET2[2]))
    assert o.objects[t.oids[0]].state == PENDING, "the lost value is being rebuilt"
    assert of(out, ins.RequestLease), "the task runs again"
    assert ins.DropConnection(RAYLET2[2]) in out
    assert t.retries == 0 and t.tid in o.tasks


def test_spillback_to_a_dead_node_asks_the_local_raylet_again():
    o = make_owner()
    t = task(retries=1)
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    o.handle(ev.NodeDied(OTHER_NODE, RAYLET2[2]))
    # Our raylet heard of the death later than we did: it sends us there.
    out = o.handle(ev.Spillback(lrid, RAYLET2[2], OTHER_NODE))
    assert [(r.dest, r.lrid != lrid) for r in of(out, ins.RequestLease)] == [(None, True)]
    # A live peer is asked as told.
    out = o.handle(ev.Spillback(of(out, ins.RequestLease)[0].lrid, "tcp://10.0.0.3:6000",
                                b"p" * 28))
    assert [r.dest for r in of(out, ins.RequestLease)] == ["tcp://10.0.0.3:6000"]


def test_node_death_without_retries_loses_the_value():
    o = make_owner()
    t = _stored_on_other_node(o, retries=0)
    out = o.handle(ev.NodeDied(OTHER_NODE, RAYLET2[2]))
    assert isinstance(error_of(o, t.oids[0]), exc.ObjectLostError)
    assert t.oids[0] in of(out, ins.ObjectsReady)[0].oids
    # Objects borrowed from an owner on that node fail too.
    o2 = make_owner()
    oid = ids.object_id_for(ids.new_task_id(), 1)
    o2.handle(ev.RefAdded(oid, OTHER_OWNER))
    o2.handle(ev.NodeDied(OTHER_NODE, None))
    assert isinstance(error_of(o2, oid), exc.OwnerDiedError)


def test_cancel_a_queued_task():
    o = make_owner()
    t = task()
    o.handle(ev.Submit(t))
    out = o.handle(ev.Cancel(t.tid, False, False))
    assert isinstance(error_of(o, t.oids[0]), exc.TaskCancelledError)
    assert of(out, ins.ObjectsReady) and t.tid not in o.tasks


def test_a_failed_dependency_fails_the_task_without_running_it():
    o = make_owner()
    dep = task()
    o.handle(ev.Submit(dep))
    t = task(args=[ObjectRef(dep.oids[0], ME, _register=False)])
    o.handle(ev.Submit(t))
    assert t.state == "waiting"
    o.handle(ev.FailTask(dep.tid, ValueError("boom")))
    assert isinstance(error_of(o, t.oids[0]), ValueError)


def test_generator_items_and_end():
    o = make_owner()
    t = task(nret="streaming")
    lrid = of(o.handle(ev.Submit(t)), ins.RequestLease)[0].lrid
    grant(o, lrid, b"w1")
    frames = serialization.serialize("x")[0]
    out = o.handle(ev.GeneratorItem(t.tid, 0, [INLINE, len(frames), False], frames, None))
    oid0 = ids.object_id_for(t.tid, 1)
    assert of(out, ins.ObjectsReady)[0].oids == [oid0]
    assert not o.generator_finished(t.tid, 1)
    out = o.handle(ev.TaskReply(t.tid, [], [], gen_n=1))
    assert ins.GeneratorEnded(t.tid) in out
    assert o.generator_finished(t.tid, 1)


# ----------------------------------------------------------------- actors
AID = b"a" * 16


def call(retries: int = 0) -> Task:
    tid = ids.new_task_id()
    return Task(tid, "A.f", 1, [], [], retries=retries,
                actor=Call(AID, {"cls": "A"}, {"tid": tid}, []))


def test_actor_calls_wait_for_the_actor_then_go_in_sequence():
    o = make_owner()
    o.handle(ev.ActorHandleMade(AID, {"cls": "A"}))
    calls = [call() for _ in range(3)]
    outs = [o.handle(ev.Submit(c)) for c in calls]
    assert not any(of(out, ins.SendActorCall) for out in outs), "sent before the actor lives"
    out = o.handle(ev.ActorAlive(AID, 0, "ipc://actor-0", 123))
    sends = of(out, ins.SendActorCall)
    assert [(s.addr, s.header["tid"], s.header["seq"], s.header["inc"]) for s in sends] == \
        [("ipc://actor-0", c.tid, n, 0) for n, c in enumerate(calls)]
    # Alive and idle: the next call goes at once, numbered on.
    c4 = call()
    sends = of(o.handle(ev.Submit(c4)), ins.SendActorCall)
    assert [s.header["seq"] for s in sends] == [3]
    # A reply completes its call.
    frames = serialization.serialize(7)[0]
    o.handle(ev.TaskReply(c4.tid, [[INLINE, len(frames), False]], frames))
    assert o.objects[c4.oids[0]].state == READY
    assert c4.tid not in o.actors[AID].inflight


def test_actor_restart_resends_retriable_calls_renumbered_and_fails_the_others():
    o = make_owner()
    o.handle(ev.ActorHandleMade(AID, {"cls": "A"}))
    o.handle(ev.ActorAlive(AID, 0, "ipc://actor-0", 1))
    keep, lose = call(retries=1), call(retries=0)
    o.handle(ev.Submit(keep))
    o.handle(ev.Submit(lose))
    out = o.handle(ev.ActorRestarting(AID))
    assert ins.DropConnection("ipc://actor-0") in out
    assert isinstance(error_of(o, lose.oids[0]), exc.ActorUnavailableError)
    assert keep.retries == 0 and keep.state == "queued"
    later = call()
    assert not of(o.handle(ev.Submit(later)), ins.SendActorCall), "queued behind the retry"
    out = o.handle(ev.ActorAlive(AID, 1, "ipc://actor-1", 2))
    sends = of(out, ins.SendActorCall)
    assert [(s.header["tid"], s.header["seq"], s.header["inc"]) for s in sends] == \
        [(keep.tid, 0, 1), (later.tid, 1, 1)], "numbering restarts at 0 per incarnation"


def test_dead_actor_fails_calls_and_an_intended_exit_waits_for_late_replies():
    o = make_owner()
    o.handle(ev.ActorHandleMade(AID, {"cls": "A"}))
    o.handle(ev.ActorAlive(AID, 0, "ipc://actor-0", 1))
    inflight = call()
    o.handle(ev.Submit(inflight))
    err = exc.ActorDiedError(None, "gone", AID.hex())
    o.handle(ev.ActorDead(AID, err, True))
    assert o.objects[inflight.oids[0]].state == PENDING, "a late reply may still come"
    o.handle(ev.Tick(10.0))
    o.handle(ev.Tick(10.1))
    assert o.objects[inflight.oids[0]].state == PENDING
    o.handle(ev.Tick(10.0 + EXIT_GRACE_S + 0.01))
    assert isinstance(error_of(o, inflight.oids[0]), exc.ActorDiedError)
    after = call()
    o.handle(ev.Submit(after))
    assert isinstance(error_of(o, after.oids[0]), exc.ActorDiedError)


def test_last_handle_dropped_ends_an_owned_actor():
    o = make_owner()
    o.handle(ev.ActorRegistered(AID, {"cls": "A"}, False, []))
    o.handle(ev.ActorHandleMade(AID, {"cls": "A"}, True))
    out = o.handle(ev.ActorHandleDropped(AID))
    assert out == [ins.TerminateActor(AID, {"cls": "A"})]
    # A handle that escaped to another process keeps the actor alive.
    o2 = make_owner()
    o2.handle(ev.ActorRegistered(AID, {"cls": "A"}, False, []))
    o2.handle(ev.ActorHandleMade(AID, {"cls": "A"}, True))
    o2.handle(ev.ActorEscaped(AID))
    assert o2.handle(ev.ActorHandleDropped(AID)) == []


def test_pending_calls_count_queued_and_inflight():
    o = make_owner()
    o.handle(ev.ActorHandleMade(AID, {"cls": "A"}))
    o.handle(ev.Submit(call()))
    o.handle(ev.ActorAlive(AID, 0, "ipc://actor-0", 1))
    o.handle(ev.Submit(call()))
    assert o.pending_calls(AID) == 2


# ---------------------------------------------------------------- no I/O
FORBIDDEN = {"zmq", "threading", "socket", "time", "os", "select", "selectors", "subprocess",
             "asyncio", "signal", "_signal", "mmap", "fcntl", "io", "shutil", "tempfile",
             "zray.protocol", "zray.core_worker", "zray.serialization", "zray.objstore",
             "zray.api", "zray.polling"}


def test_owner_modules_import_no_io():
    pkg = os.path.join(os.path.dirname(os.path.dirname(__file__)), "zray", "owner")
    for name in sorted(os.listdir(pkg)):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(pkg, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            for m in mods:
                assert not any(m == f or m.startswith(f + ".") for f in FORBIDDEN), \
                    f"zray/owner/{name} imports {m}"


def test_importing_the_owner_loads_nothing_that_does_io():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "import zray.owner\n"
        f"assert zray.owner.__file__.startswith({root!r}), zray.owner.__file__\n"
        "bad = sorted(m for m in ('zmq', 'socket', 'threading', 'select', 'selectors',"
        " 'subprocess', 'asyncio', 'zray.protocol', 'zray.core_worker', 'zray.api',"
        " 'zray.serialization', 'cloudpickle') if m in sys.modules)\n"
        "print(','.join(bad))\n")
    # -S: no site hooks (some .pth files import threading themselves).
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                       timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing zray.owner loaded {r.stdout.strip()}"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
