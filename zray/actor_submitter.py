"""The caller's side of actors: creating them, and calling them in order.

One ``ActorSubmitter`` per CoreWorker (made on first use). For every actor this
process calls it keeps an ``ActorState``: where the actor is (learnt from the
GCS's ``ACTOR_STATE`` publications), the calls not sent yet, and the calls in
flight. A call is a ``core_worker.Task`` whose ``actor`` field is set: its
return objects, generator items, ``get``, ``wait`` and ``cancel`` reuse the
task machinery; only sending, replies and failures differ.

Ordering: the calls this process makes to one actor carry consecutive sequence
numbers, assigned and sent under the CoreWorker's lock; the actor runs them in
that order (actor_executor.py). Numbering restarts at 0 for every incarnation
of the actor, so calls re-sent after a restart stay in order.
"""

from __future__ import annotations

import collections
import heapq
import logging
import queue
import threading
import time
from typing import Any

from zray import config, ids, protocol, serialization
from zray import exceptions as exc
from zray.core_worker import INLINE, READY, STORED, CoreWorker, Task
from zray.object_ref import ObjectRef

log = logging.getLogger("zray.actor")

REF = 2  # argument descriptor kind: [2, oid, owner] — the actor resolves it (get)
# After an actor's intended exit, replies it sent may still be on their way.
EXIT_GRACE_S = 0.5
_RET1 = ids.object_id_for(b"", 1)  # the suffix of a call's first return object


class Call:
    """What an actor call needs besides its Task: the message, kept for re-sending."""

    __slots__ = ("st", "h", "payload")

    def __init__(self, st: ActorState, h: dict, payload: list):
        self.st = st
        self.h = h
        self.payload = payload


class ActorState:
    """This process's view of one actor."""

    def __init__(self, aid: bytes, meta: dict):
        self.aid = aid
        self.meta = meta
        self.state = protocol.ACTOR_PENDING
        self.addr: str | None = None
        self.inc = -1
        self.pid = 0
        self.queue: collections.deque[Task] = collections.deque()  # not sent yet
        self.inflight: dict[bytes, Task] = {}  # sent, no reply yet (in send order)
        self.seq = 0
        self.subscribed = False
        self.error: BaseException | None = None  # set when DEAD
        self.owned = False  # this process created it
        self.detached = False
        self.handles = 0  # ActorHandle instances in this process
        self.escaped = False  # a handle was pickled (passed elsewhere)
        self.terminating = False
        self.pins: list | None = None  # refs the constructor's arguments need

    @property
    def cls_name(self) -> str:
        return self.meta.get("cls", "Actor")


class ActorSubmitter:
    def __init__(self, cw: CoreWorker):
        self.cw = cw
        self.actors: dict[bytes, ActorState] = {}
        self.events: queue.SimpleQueue = queue.SimpleQueue()  # from __del__: safe anywhere
        self.timers: list = []  # heap of (when, n, fn)
        self._n = 0
        self.namespaces: dict[bytes, str | None] = {}
        self.thread = threading.Thread(target=self._loop, name="zray-actors", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------ states
    def state(self, aid: bytes, meta: dict | None) -> ActorState:
        """The state of an actor (lock held); subscribes to it on first sight."""
        st = self.actors.get(aid)
        if st is None:
            st = ActorState(aid, meta or {})
            self.actors[aid] = st
        elif meta and not st.meta:
            st.meta = meta
        if not st.subscribed:
            st.subscribed = True
            cw = self.cw
            cw.conns.send(cw.gcs, {"t": protocol.SUBSCRIBE_ACTOR, "aid": aid,
                                   "ra": cw.my_addr_for(cw.gcs), "wid": cw.worker_id,
                                   "node": cw.node_id})
        return st

    def handle_made(self, aid: bytes, meta: dict | None) -> None:
        with self.cw.lock:
            self.state(aid, meta).handles += 1

    def handle_dropped(self, aid: bytes) -> None:
        self.events.put(("drop", aid))  # __del__ may run with any lock held

    def escaped(self, aid: bytes) -> None:
        st = self.actors.get(aid)
        if st is not None:
            st.escaped = True

    # ---------------------------------------------------------- creation
    def job_namespace(self) -> str | None:
        cw = self.cw
        if cw.mode == "driver":
            return cw.namespace
        job = cw.job_id
        if job not in self.namespaces:
            ns = None
            try:
                _, payload = cw.request(cw.gcs, {"t": protocol.KV_GET, "ns": "job", "k": job})
                if payload:
                    ns = serialization.loads_plain(payload[0]).get("namespace")
            except Exception:  # noqa: BLE001 - no job info: the anonymous namespace
                pass
            self.namespaces[job] = ns
        return self.namespaces[job]

    def create(self, fn_id: bytes, meta: dict, args: tuple, kwargs: dict, o: dict) -> tuple:
        """Register a new actor with the GCS; returns (actor id, meta, owned)."""
        cw = self.cw
        aid = ids.new_unique_id()
        name = o.get("name")
        ns = o.get("namespace") or self.job_namespace()
        argd, payload, keep = self.encode_args(args, kwargs, f"{meta['cls']}.__init__")
        spec = {"fn": fn_id, "cls": meta["cls"], "res": o["_resources"], "hold": o["_hold"],
                "strat": protocol.strategy_wire(o.get("scheduling_strategy")),
                "max_restarts": o.get("max_restarts") or 0,
                "max_concurrency": o.get("max_concurrency"), "async": meta.get("async", False),
                "meta": meta, "env": (o.get("runtime_env") or {}).get("env_vars") or None}
        detached = o.get("lifetime") == "detached"
        with cw.lock:
            st = ActorState(aid, meta)
            st.owned = True
            st.detached = detached
            st.subscribed = True  # REGISTER_ACTOR's "sub" subscribes us
            st.pins = keep
            self.actors[aid] = st
        h = {"t": protocol.REGISTER_ACTOR, "aid": aid, "name": name, "ns": ns,
             "detached": detached, "gie": bool(o.get("get_if_exists")),
             "owner": cw.address_packed, "owner_wid": cw.worker_id,
             "drv": cw.driver_addr, "job": cw.job_id, "spec": spec, "args": argd,
             "kw": list(kwargs), "sub": cw.my_addr_for(cw.gcs)}
        try:
            r, _ = cw.request(cw.gcs, h, payload)
        except BaseException:
            with cw.lock:
                self.actors.pop(aid, None)
            raise
        if r.get("ok") and not r.get("existing"):
            return aid, meta, True
        with cw.lock:
            self.actors.pop(aid, None)
        if not r.get("ok"):
            raise exc.ActorAlreadyExistsError(r.get("msg") or f"The name {name} is taken")
        return r["existing"], r.get("meta") or meta, False

    def encode_args(self, args: tuple, kwargs: dict, what: str) -> tuple[list, list, list]:
        """Argument descriptors, their frames, and the refs to hold until the call is done."""
        cw = self.cw
        argd: list = []
        payload: list = []
        keep: list = []
        nargs = len(args)
        for i, a in enumerate((*args, *kwargs.values())):
            if isinstance(a, ObjectRef):
                keep.append(a)
                with cw.lock:
                    e = cw.objects.get(a._id)
                    owner = a._owner or cw.address_packed
                    if e is not None and e.state == READY and e.frames is not None:
                        argd.append([INLINE, len(e.frames)])
                        payload.extend(e.frames)
                    elif e is not None and e.state == READY and e.node is not None:
                        argd.append([STORED, a._id, e.node, owner])
                    else:
                        argd.append([REF, a._id, owner])  # pending or failed: the actor waits
                continue
            label = (f"argument {i} of {what}" if i < nargs
                     else f"argument {list(kwargs)[i - nargs]!r} of {what}")
            frames, refs = serialization.serialize(a, label)
            keep.extend(refs)
            size = serialization.frames_size(frames)
            if size > config.INLINE_MAX:
                ref = cw.put_frames(frames, size, refs)
                keep.append(ref)
                argd.append([STORED, ref._id, cw.node_id, cw.address_packed])
            else:
                argd.append([INLINE, len(frames)])
                payload.extend(frames)
        return argd, payload, keep

    # ------------------------------------------------------------- calls
    def submit(self, aid: bytes, meta: dict, method: str, args: tuple, kwargs: dict,
               nret: Any, retries: int, name: str | None = None) -> Any:
        cw = self.cw
        tid = ids.new_task_id()
        fname = name or f"{meta.get('cls', 'Actor')}.{method}"
        gen = nret == "streaming"
        wnret = -1 if gen else nret
        if args or kwargs:
            argd, payload, keep = self.encode_args(args, kwargs, fname)
            kwnames = list(kwargs)
        else:
            argd, payload, keep, kwnames = [], [], [], []
        h = {"t": protocol.PUSH_TASK, "tid": tid, "aid": aid, "meth": method,
             "name": fname, "nret": wnret, "args": argd, "kw": kwnames,
             "own": cw.address_packed, "drv": cw.driver_addr, "job": cw.job_id,
             "cid": cw.worker_id}
        t = Task()
        t.tid = tid
        with cw.lock:
            st = self.actors.get(aid)
            if st is None or not st.subscribed or (meta and not st.meta):
                st = self.state(aid, meta)
            limit = meta.get("max_pending_calls") or -1
            if limit > 0 and len(st.queue) + len(st.inflight) >= limit:
                raise exc.PendingCallsLimitExceeded(
                    f"The actor {aid.hex()} has {limit} pending calls from this process "
                    f"(max_pending_calls={limit}).")
            t.actor = Call(st, h, payload)
            now = st.state == protocol.ACTOR_ALIVE and not st.queue
            if now:
                # Sent first, so that the actor starts while we do the bookkeeping: its
                # reply cannot be handled before we release the lock.
                self._send(st, t)
            t.fname = fname
            t.fn_id = None
            t.gen = gen
            t.nret = wnret
            t.retries = retries
            t.retry_exc = False
            t.max_calls = 0
            t.res = {}
            t.strategy = None
            t.env = None
            t.key = None
            t.kwnames = kwnames
            t.arg_pins = []
            t.args = keep  # held until the call is done (Task.args is dropped then)
            if wnret == 1:
                t.oids = [tid + _RET1]
            else:
                n_oids = wnret if wnret > 0 else (1 if wnret == 0 else 0)
                t.oids = [ids.object_id_for(tid, i + 1) for i in range(n_oids)]
            t.parent = cw.current_task_id
            cw._register_task(t)
            out = cw._returns_of(t, nret)
            if not now:
                if st.state == protocol.ACTOR_DEAD:
                    cw._finish_with_error(t, st.error or exc.ActorDiedError())
                else:
                    t.state = "queued"
                    st.queue.append(t)
        if nret == 0:
            cw.drop_hidden_return(t)
        return out

    def _send(self, st: ActorState, t: Task) -> None:
        """Send one call to the actor (lock held): sequence numbers follow send order."""
        call = t.actor
        h = call.h
        h["seq"] = st.seq
        h["inc"] = st.inc
        st.seq += 1
        t.state = "running"
        t.attempt += 1
        st.inflight[t.tid] = t
        self.cw.conns.send(st.addr, h, call.payload)

    def on_task_reply(self, t: Task, h: dict, payload: list) -> None:
        """TASK_REPLY of an actor call (called by the CoreWorker, lock held)."""
        cw = self.cw
        st = t.actor.st
        st.inflight.pop(t.tid, None)
        cw.complete_task(t, h, payload)
        if st.state == protocol.ACTOR_DEAD and not st.inflight:
            self._forget(st)

    def cancel(self, t: Task, recursive: bool) -> None:
        """zray.cancel on an actor call (lock held). force is not supported for actor calls."""
        st = t.actor.st
        if t.state == "queued":
            try:
                st.queue.remove(t)
            except ValueError:
                pass
            self.cw._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.state == "running" and st.addr:
            # The actor drops it if not started yet, interrupts it if it can.
            self.cw.conns.send(st.addr, {"t": protocol.CANCEL_TASK, "tid": t.tid,
                                         "force": False, "rec": recursive})

    # --------------------------------------------------------- lifecycle
    def on_actor_state(self, h: dict, payload: list) -> None:
        """ACTOR_STATE from the GCS: where the actor is now, or that it restarts or died."""
        cw = self.cw
        with cw.lock:
            st = self.actors.get(h["aid"])
            if st is None or st.state == protocol.ACTOR_DEAD:
                return
            new = h["st"]
            old = st.addr
            if new == protocol.ACTOR_ALIVE:
                if st.state == protocol.ACTOR_ALIVE and st.inc == h["inc"]:
                    return
                if st.inflight:  # sent to an earlier incarnation: it is gone
                    self._lost_inflight(st, True)
                st.state = protocol.ACTOR_ALIVE
                st.addr = cw.addr_of(h["addr"])
                if old and old != st.addr:
                    cw.conns.drop(old)  # that process is gone: no socket left for it
                st.inc = h["inc"]
                st.pid = h.get("pid", 0)
                st.seq = 0
                while st.queue:
                    self._send(st, st.queue.popleft())
            elif new == protocol.ACTOR_RESTARTING:
                st.state = protocol.ACTOR_RESTARTING
                st.addr = None
                self._lost_inflight(st, True)
                if old:
                    cw.conns.drop(old)
            elif new == protocol.ACTOR_DEAD:
                self._dead(st, h, payload)
                if old:
                    cw.conns.drop(old)
            elif st.state != protocol.ACTOR_ALIVE:
                st.state = new

    def _lost_inflight(self, st: ActorState, restarting: bool) -> None:
        """The actor's process died with these calls in flight: retry or fail them."""
        retry = []
        for t in list(st.inflight.values()):
            if t.cancelled:
                self.cw._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
            elif t.retries != 0 and not t.gen_count:
                if t.retries > 0:
                    t.retries -= 1
                t.state = "queued"
                retry.append(t)
            else:
                self.cw._finish_with_error(t, exc.ActorUnavailableError(
                    None, f"The actor {st.aid.hex()} ({st.cls_name}) is unavailable: its "
                    "process died while running this call, and the actor is restarting. "
                    "The call may or may not have been executed (max_task_retries=0).",
                    st.aid.hex()))
        st.inflight.clear()
        st.queue.extendleft(reversed(retry))

    def _dead(self, st: ActorState, h: dict, payload: list) -> None:
        st.state = protocol.ACTOR_DEAD
        st.addr = None
        st.error = death_error(st, h, payload)
        st.pins = None
        while st.queue:
            self.cw._finish_with_error(st.queue.popleft(), st.error)
        if st.inflight and h.get("kind") == protocol.DIED_EXITED:
            # Replies sent before the exit may still be on their way.
            self._after(EXIT_GRACE_S, lambda: self._fail_inflight(st))
        else:
            self._fail_inflight(st)

    def _fail_inflight(self, st: ActorState) -> None:
        for t in list(st.inflight.values()):
            self.cw._finish_with_error(t, st.error)
        st.inflight.clear()
        self._forget(st)

    def _forget(self, st: ActorState) -> None:
        if st.handles <= 0 and not st.queue and not st.inflight:
            self.actors.pop(st.aid, None)

    def _dropped(self, aid: bytes) -> ActorState | None:
        """A handle was garbage-collected (lock held); returns the actor to end, if any."""
        st = self.actors.get(aid)
        if st is None:
            return None
        st.handles -= 1
        if st.handles > 0:
            return None
        if st.state == protocol.ACTOR_DEAD:
            self._forget(st)
            return None
        if st.owned and not st.escaped and not st.detached and not st.terminating:
            # Ray: an actor whose every handle is gone ends after the calls queued to it.
            st.terminating = True
            return st
        return None

    # ------------------------------------------------------------- timers
    def _after(self, delay: float, fn) -> None:
        self._n += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._n, fn))

    def _loop(self) -> None:
        cw = self.cw
        while cw._running:
            try:
                ev = self.events.get(timeout=0.1)
            except queue.Empty:
                ev = None
            try:
                with cw.lock:
                    end = self._dropped(ev[1]) if ev is not None and ev[0] == "drop" else None
                if end is not None:
                    self.submit(end.aid, end.meta, "__ray_terminate__", (), {}, 0, 0)
                with cw.lock:
                    now = time.monotonic()
                    while self.timers and self.timers[0][0] <= now:
                        heapq.heappop(self.timers)[2]()
            except Exception:  # noqa: BLE001 - keep the thread alive
                log.exception("actor bookkeeping failed")

    def kill(self, aid: bytes, no_restart: bool) -> None:
        cw = self.cw
        r, _ = cw.request(cw.gcs, {"t": protocol.KILL_ACTOR, "aid": aid,
                                   "no_restart": bool(no_restart)})
        if not r.get("ok"):
            raise ValueError(f"The actor {aid.hex()} is not known to the cluster.")
        if r.get("state", {}).get("st") == protocol.ACTOR_DEAD and aid in self.actors:
            self.on_actor_state(r["state"], [])  # calls made after kill() fail at once


def death_error(st: ActorState, h: dict, payload: list) -> BaseException:
    """The exception a call to this dead actor raises."""
    aid = st.aid.hex()
    kind = h.get("kind")
    if kind == protocol.DIED_CREATION_ERROR and payload:
        try:
            cause = serialization.deserialize(payload)
        except Exception as e:  # noqa: BLE001
            cause = exc.RaySystemError(f"undecodable creation error: {e}")
        return exc.ActorDiedError(cause, "The actor died because of an error raised in its "
                                  f"creation task, {cause}", aid)
    if kind == protocol.DIED_UNSCHEDULABLE:
        return exc.ActorUnschedulableError(
            f"The actor {aid} ({h.get('cls') or st.cls_name}) cannot be scheduled: "
            f"{h.get('msg') or 'no node fits it'}")
    lines = ["The actor died unexpectedly before finishing this task.",
             f"\tclass_name: {h.get('cls') or st.cls_name}", f"\tactor_id: {aid}"]
    if h.get("pid"):
        lines.append(f"\tpid: {h['pid']}")
    if h.get("name"):
        lines.append(f"\tname: {h['name']}")
    if h.get("ns"):
        lines.append(f"\tnamespace: {h['ns']}")
    lines.append(h.get("msg") or "The actor is dead.")
    return exc.ActorDiedError(None, "\n".join(lines), aid)


def submitter(cw: CoreWorker) -> ActorSubmitter:
    """This process's ActorSubmitter (made on first use)."""
    s = cw.actor_calls()
    assert isinstance(s, ActorSubmitter)
    return s


def _h_actor_state(cw: CoreWorker, h: dict, payload: list) -> None:
    submitter(cw).on_actor_state(h, payload)


CoreWorker.register_actor_calls(ActorSubmitter)
CoreWorker.register_handler(protocol.ACTOR_STATE, _h_actor_state)


def on_driver_shutdown(cw: CoreWorker) -> None:
    """zray.shutdown() in a driver: its job is over, so its non-detached actors end."""
    try:
        cw.request(cw.gcs, {"t": protocol.JOB_FINISHED, "wid": cw.worker_id,
                            "addr": cw.address.ipc, "job": cw.job_id}, timeout=2.0)
    except Exception:  # noqa: BLE001 - the cluster may be gone already
        pass

