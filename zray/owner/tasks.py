"""Tasks: submission, dependencies, leases and pipelining, replies and retries, cancel.

A task waits for its arguments (``Entry.dependents``), then queues on its
scheduling key (resources and strategy). Each key asks raylets for leases on
workers (``RequestLease``) and pushes its queued tasks straight to them
(``PushTask``); short tasks are pipelined, ``MAX_TASKS_IN_FLIGHT`` deep per
worker. Replies store the return values; failures retry within
``max_retries``. Actor calls share the task records but are sent by
zray/owner/actors.py.
"""

from __future__ import annotations

from typing import Any

import zray.exceptions as exc  # (not "from zray import": that loads zray.api)
from zray import config, ids
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.base import OwnerBase
from zray.owner.state import (
    FAILED,
    INLINE,
    PENDING,
    READY,
    Entry,
    KeyState,
    LeasedWorker,
    Task,
    strategy_key,
)


class TasksMixin(OwnerBase):
    """The Owner's task handlers (see zray/owner/core.py)."""

    # ---------------------------------------------------------- submission
    def _on_submit(self, e_: ev.Submit) -> None:
        t = e_.task
        self._register_task(t)
        objs = self.objects
        if t.actor is None:
            # Pin what the task needs until it is done (an actor call holds its refs).
            pins = []
            for a in t.args:
                if type(a) is not list:  # an ObjectRef
                    e = objs.get(a._id)
                    if e is None:
                        e = self.entry_for(a._id, a._owner)
                    e.pins += 1
                    pins.append(a._id)
            if t.nested:
                for r in t.nested:
                    e = objs.get(r._id)
                    if e is not None:
                        e.pins += 1
                        pins.append(r._id)
                t.nested = None
            t.arg_pins = pins
        nret = t.user_nret
        if nret != 0 and not t.gen:
            for oid in t.oids:  # the refs .remote() hands back count here
                objs[oid].local += 1
        if t.actor is None:
            key = (tuple(sorted(t.res.items())), strategy_key(t.strategy))
            t.key = key
            ks = self.keys.get(key)
            if ks is None:
                ks = self.keys[key] = KeyState(t.res, t.strategy)
            if t.max_calls:
                ks.no_pipe = True
            self._resolve_deps(t)
        else:
            self._actor_submitted(t)
        if nret == 0:  # the task still runs; its hidden return object is dropped unused
            e = objs.get(t.oids[0])
            if e is not None:
                self._maybe_release(t.oids[0], e)

    def _register_task(self, t: Task) -> None:
        """Own a new task and its (pending) return objects."""
        self.tasks[t.tid] = t
        if t.parent is not None:
            self.children.setdefault(t.parent, set()).add(t.tid)
        objs = self.objects
        for oid in t.oids:
            e = Entry(True)
            e.task_id = t.tid
            objs[oid] = e

    def _resolve_deps(self, t: Task) -> None:
        deps = 0
        for a in t.args:
            if type(a) is not list:
                e = self.objects[a._id]
                if e.state == PENDING:
                    deps += 1
                    self._ensure_fetch(a._id, e)
                    if e.dependents is None:
                        e.dependents = []
                    e.dependents.append(t)
        t.deps = deps
        if deps == 0:
            self._enqueue(t)

    def _dep_ready(self, t: Task) -> None:
        t.deps -= 1
        if t.deps == 0 and t.state == "waiting":
            self._enqueue(t)

    def _enqueue(self, t: Task) -> None:
        # A failed dependency fails the task without running it (errors flow on).
        for a in t.args:
            if type(a) is not list:
                e = self.objects.get(a._id)
                if e is not None and e.state == FAILED:
                    self._finish_with_frames(t, e.frames)
                    return
        t.state = "queued"
        ks = self.keys[t.key]
        ks.queue.append(t)
        self._dispatch(ks)

    # -------------------------------------------------------------- leases
    def _dispatch(self, ks: KeyState) -> None:
        q = ks.queue
        if not q:
            return
        for w in ks.workers.values():  # idle workers first
            if not w.inflight and not w.dead:
                self._push(q.popleft(), w)
                if not q:
                    return
        want = min(len(q), config.MAX_PENDING_LEASES) - len(ks.pending_leases)
        for _ in range(want):
            self._request_lease(ks)
        depth = ks.depth()
        if depth < 2:
            return
        # Pipelining: what the pending lease requests cannot take queues on busy
        # workers of a key whose tasks are short (workers hand it back otherwise).
        for n in range(1, depth):
            for w in ks.workers.values():
                if len(q) <= len(ks.pending_leases):
                    return
                if len(w.inflight) == n and not w.dead and not w.long:
                    self._push(q.popleft(), w)

    def _request_lease(self, ks: KeyState, dest: str | None = None) -> None:
        self._lease_rid += 1
        rid = self._lease_rid
        ks.pending_leases.add(rid)
        self.lease_reqs[rid] = ks
        self.lease_dest[rid] = dest
        retriable = not (ks.queue and ks.queue[0].retries == 0)
        self.out.append(ins.RequestLease(rid, dest, ks.res, ks.strategy, retriable))

    def _push(self, t: Task, w: LeasedWorker) -> None:
        t.state = "running"
        t.worker = w
        t.attempt += 1
        w.inflight[t.tid] = t
        self.out.append(ins.PushTask(t, w))

    def _lease_answered(self, lrid: int) -> KeyState | None:
        self.lease_dest.pop(lrid, None)
        ks = self.lease_reqs.pop(lrid, None)
        if ks is not None:
            ks.pending_leases.discard(lrid)
        return ks

    def _on_lease_granted(self, e_: ev.LeaseGranted) -> None:
        self._learn_raylet(e_.node, e_.raylet)
        ks = self._lease_answered(e_.lrid)
        if ks is None or not ks.queue:
            self.out.append(ins.ReturnLease(e_.raylet, e_.lease, False))
            return
        w = LeasedWorker(e_.wid, e_.waddr, e_.lease, e_.node, e_.res, e_.raylet)
        ks.workers[w.wid] = w
        self._dispatch(ks)

    def _on_spillback(self, e_: ev.Spillback) -> None:
        ks = self._lease_answered(e_.lrid)
        if ks is not None and ks.queue:
            # A raylet whose view is older than our news may send us to a dead node, whose
            # answer would never come: ask our own raylet again instead.
            dead = e_.node is not None and e_.node in self.dead_nodes
            self._request_lease(ks, None if dead else e_.raylet)

    def _on_lease_failed(self, e_: ev.LeaseFailed) -> None:
        ks = self._lease_answered(e_.lrid)
        if ks is None:
            return
        while ks.queue:
            self._finish_with_error(ks.queue.popleft(), e_.error)

    def _on_worker_died(self, e_: ev.WorkerDied) -> None:
        for ks in self.keys.values():
            w = ks.workers.pop(e_.wid, None)
            if w is None:
                continue
            w.dead = True
            # The worker runs its tasks in push order: only the first can have
            # started; those queued behind it go back to the queue as they are.
            tasks = list(w.inflight.values())
            w.inflight.clear()
            self._requeue_unstarted(ks, tasks[1:])
            if tasks:
                self._task_lost(tasks[0], e_.reason, e_.oom)
            self._dispatch(ks)

    def _requeue_unstarted(self, ks: KeyState, tasks: list[Any]) -> None:
        """Tasks pushed to a worker that never started them: queue them again, in order."""
        for t in reversed(tasks):
            t.worker = None
            t.attempt -= 1
            if t.cancelled:
                self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
            else:
                t.state = "queued"
                ks.queue.appendleft(t)

    def _on_tasks_returned(self, e_: ev.TasksReturned) -> None:
        by_key: dict[Any, Any] = {}
        for tid in e_.tids:
            t = self.tasks.get(tid)
            w = t.worker if t is not None else None
            if t is None or w is None or w.inflight.pop(tid, None) is None:
                continue
            w.long = True
            by_key.setdefault(t.key, []).append(t)
        for k, tasks in by_key.items():
            ks = self.keys[k]
            ks.task_s = max(ks.task_s or 0.0, config.PIPELINE_MAX_TASK_S * 2)
            self._requeue_unstarted(ks, tasks)
            self._dispatch(ks)

    def _task_lost(self, t: Task, reason: str = "", oom: bool = False) -> None:
        t.worker = None
        if t.cancelled:
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.retries != 0 and not t.gen_count:
            if t.retries > 0:
                t.retries -= 1
            t.state = "queued"
            self.keys[t.key].queue.appendleft(t)
        else:
            # Killed by its raylet's memory monitor: Ray's OutOfMemoryError, its message.
            self._finish_with_error(t, exc.OutOfMemoryError(reason) if oom
                                    else exc.WorkerCrashedError())

    # ------------------------------------------------------------- replies
    def _on_task_reply(self, r: ev.TaskReply) -> None:
        t = self.tasks.get(r.tid)
        if t is None:
            return
        if t.actor is not None:
            self._actor_reply(t, r)
            return
        w = t.worker
        ks = self.keys[t.key]
        if r.dt is not None:
            ks.ran(r.dt)
        if w is not None:
            w.inflight.pop(t.tid, None)
            w.idle_since = None
            w.long = False
            if r.exiting:
                ks.workers.pop(w.wid, None)
                w.dead = True
                self.out.append(ins.ReturnLease(w.raylet, w.lease, True))
                self._requeue_unstarted(ks, list(w.inflight.values()))
                w.inflight.clear()
        t.worker = None
        if r.err and not t.cancelled and self._should_retry_exception(t, _error_frames(r.rets, r.payload)):
            if t.retries > 0:
                t.retries -= 1
            t.state = "queued"
            ks.queue.appendleft(t)
            self._dispatch(ks)
            return
        if t.cancelled and r.err:
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        else:
            self._complete_task(t, r)
        self._dispatch(ks)

    def _complete_task(self, t: Task, r: ev.TaskReply) -> None:
        """A successful TASK_REPLY (task or actor call): store returns, end the task."""
        self._store_returns(t, r.rets, r.payload, r.contained)
        if t.gen:
            if r.gen_n is not None:
                t.gen_count = r.gen_n
            t.gen_done = True
            self.out.append(ins.GeneratorEnded(t.tid))
        self._task_done(t)

    def _should_retry_exception(self, t: Task, payload: list[Any]) -> bool:
        if not t.retry_exc or t.retries == 0:
            return False
        if t.retry_exc is True:
            return True
        try:
            err = self.decode(payload)
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, tuple(t.retry_exc))

    def _store_returns(self, t: Task, rets: list[Any], payload: list[Any], contained: list[Any] | None) -> None:
        pos = 0
        objs = self.objects
        for oid, d in zip(t.oids, rets):
            e = objs.get(oid)
            if d[0] == INLINE:
                n = d[1]
                frames = [bytes(f) if len(f) < 65536 else f for f in payload[pos: pos + n]]
                pos += n
                if e is None:
                    continue
                e.frames = frames
                e.is_error = bool(d[2]) if len(d) > 2 else False
            else:
                if e is None:
                    # Nobody wants it any more: free the stored copy at once.
                    self.out.append(ins.FreeObjects(self.raylet_for(d[1]), [oid]))
                    continue
                e.node, e.size = d[1], d[2]
            e.state = FAILED if e.is_error else READY
            self._on_ready(oid, e)
        if contained:
            self._hold_contained([objs.get(oid) for oid in t.oids], contained)

    def _finish_with_error(self, t: Task, err: BaseException) -> None:
        self._finish_with_frames(t, self.encode_error(err))

    def _finish_with_frames(self, t: Task, frames: list[Any] | None) -> None:
        if t.gen:
            oid = ids.object_id_for(t.tid, t.gen_count + 1)
            item = Entry(True)
            item.task_id = t.tid
            item.pins = 1
            self.objects[oid] = item
            t.oids.append(oid)
            t.gen_count += 1
            t.gen_done = True
        for oid in t.oids:
            e = self.objects.get(oid)
            if e is None or e.state != PENDING:
                continue
            e.frames = frames
            e.is_error = True
            e.state = FAILED
            self._on_ready(oid, e)
        if t.gen:
            self.out.append(ins.GeneratorEnded(t.tid))
        self._task_done(t)

    def _task_done(self, t: Task) -> None:
        t.state = "done"
        self.tasks.pop(t.tid, None)
        if t.parent is not None:
            kids = self.children.get(t.parent)
            if kids:
                kids.discard(t.tid)
                if not kids:
                    del self.children[t.parent]
        if self._keep_lineage(t):
            return  # arguments stay pinned while a stored return may need a rerun
        for oid in t.arg_pins:
            e = self.objects.get(oid)
            if e is not None:
                e.pins -= 1
                self._maybe_release(oid, e)
        t.arg_pins = []
        t.args = []

    def _on_fail_task(self, e_: ev.FailTask) -> None:
        t = self.tasks.get(e_.tid)
        if t is not None and t.state != "done":
            self._finish_with_error(t, e_.error)

    # ---------------------------------------------------------- generators
    def _on_generator_item(self, g: ev.GeneratorItem) -> None:
        t = self.tasks.get(g.tid)
        if t is None:
            return
        i = g.i
        oid = ids.object_id_for(t.tid, i + 1)
        e = self.objects.get(oid)
        if e is None:
            e = Entry(True)
            e.task_id = t.tid
            e.pins = 1  # held by the generator until handed out
            self.objects[oid] = e
            t.oids.append(oid)
        d = g.ret
        if d[0] == INLINE:
            e.frames = [bytes(f) for f in g.payload]
            e.is_error = bool(d[2]) if len(d) > 2 else False
        else:
            e.node, e.size = d[1], d[2]
        e.state = FAILED if e.is_error else READY
        t.gen_count = max(t.gen_count, i + 1)
        if g.contained:
            self._hold_contained([e], g.contained)
        self._on_ready(oid, e)

    def _on_generator_released(self, g: ev.GeneratorReleased) -> None:
        t = self.tasks.get(g.tid)
        n = t.gen_count if t is not None else None
        i = g.consumed
        while True:
            oid = ids.object_id_for(g.tid, i + 1)
            e = self.objects.get(oid)
            if e is None:
                if n is None or i >= n:
                    break
                i += 1
                continue
            e.pins -= 1
            self._maybe_release(oid, e)
            i += 1

    def generator_finished(self, tid: bytes, i: int) -> bool:
        t = self.tasks.get(tid)
        return t is None or (t.gen_done and i >= t.gen_count)

    # -------------------------------------------------------------- cancel
    def _on_cancel(self, c: ev.Cancel) -> None:
        t = self.tasks.get(c.tid)
        if t is not None and t.state != "done":
            self._cancel_task(t, c.force, c.recursive)

    def _on_cancel_children(self, c: ev.CancelChildren) -> None:
        for tid in list(self.children.get(c.parent, ())):
            t = self.tasks.get(tid)
            if t is not None and t.state != "done":
                self._cancel_task(t, c.force, True)

    def _cancel_task(self, t: Task, force: bool, recursive: bool) -> None:
        t.cancelled = True
        if t.actor is not None:
            self._cancel_actor_call(t, recursive)
            return
        if t.state in ("waiting", "queued"):
            if t.state == "queued":
                try:
                    self.keys[t.key].queue.remove(t)
                except ValueError:
                    pass
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.state == "running" and t.worker is not None:
            self.out.append(ins.CancelRunning(t.worker.addr, t.tid, force, recursive))

    def _on_local_raylet_died(self, e_: ev.LocalRayletDied) -> None:
        for t in list(self.tasks.values()):
            if t.state != "done":
                if t.state == "queued" and t.key is not None:
                    try:
                        self.keys[t.key].queue.remove(t)
                    except ValueError:
                        pass
                self._finish_with_error(t, exc.LocalRayletDiedError())

    # --------------------------------------------------------------- ticks
    def _return_idle_leases(self, now: float) -> None:
        for ks in self.keys.values():
            if ks.queue:
                continue
            for wid, w in list(ks.workers.items()):
                if w.inflight:
                    continue
                if w.idle_since is None:
                    w.idle_since = now
                elif now - w.idle_since > config.LEASE_IDLE_S:
                    del ks.workers[wid]
                    self.out.append(ins.ReturnLease(w.raylet, w.lease, False))

    def _on_shutdown(self, e_: ev.Shutdown) -> None:
        for ks in self.keys.values():
            for w in ks.workers.values():
                self.out.append(ins.ReturnLease(w.raylet, w.lease, False))
            ks.workers.clear()


def _error_frames(rets: list[Any], payload: list[Any]) -> list[Any]:
    """The frames of the first error among a reply's returns (a generator that raised after
    yielding some values sends those values first)."""
    pos = 0
    for d in rets:
        if d[0] == INLINE:
            if len(d) > 2 and d[2]:
                return payload[pos: pos + d[1]]
            pos += d[1]
    return payload
