"""The caller's side of actors: each actor's calls, in order, across restarts.

For every actor this process calls the owner keeps an ``ActorState``: where
the actor is (the shell turns the GCS's ACTOR_STATE publications into
``ActorAlive``/``ActorRestarting``/``ActorDead`` events), the calls not sent
yet, and the calls in flight. A call is a ``Task`` whose ``actor`` field is a
``Call``: its return objects, generator items, ``get``, ``wait`` and
``cancel`` reuse the task machinery; only sending, replies and failures differ.

Ordering: the calls this process makes to one actor carry consecutive sequence
numbers, assigned in send order; the actor runs them in that order
(zray/actor_executor.py). Numbering restarts at 0 for every incarnation of the
actor, so calls re-sent after a restart stay in order.
"""

from __future__ import annotations

import collections
from typing import Any

import zray.exceptions as exc
from zray import ids
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.base import OwnerBase
from zray.owner.state import Task

# ActorState.state (Ray's names)
PENDING, ALIVE, RESTARTING, DEAD = "PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"
# After an actor's intended exit, replies it sent may still be on their way.
EXIT_GRACE_S = 0.5


class Call:
    """What an actor call needs besides its Task: the message, kept for re-sending."""

    __slots__ = ("aid", "meta", "st", "h", "payload")

    def __init__(self, aid: bytes, meta: dict[Any, Any], h: dict[Any, Any], payload: list[Any]):
        self.aid = aid
        self.meta = meta
        self.st: ActorState | None = None  # set by the owner at Submit
        self.h = h
        self.payload = payload


class ActorState:
    """This process's view of one actor."""

    def __init__(self, aid: bytes, meta: dict[Any, Any]):
        self.aid = aid
        self.meta = meta
        self.state = PENDING
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
        self.pins: list[Any] | None = None  # refs the constructor's arguments need

    @property
    def cls_name(self) -> str:
        return str(self.meta.get("cls", "Actor"))


class ActorsMixin(OwnerBase):
    """The Owner's actor handlers (see zray/owner/core.py)."""

    def _actor(self, aid: bytes, meta: dict[Any, Any] | None) -> ActorState:
        """The state of an actor; subscribes to it on first sight."""
        st = self.actors.get(aid)
        if st is None:
            st = ActorState(aid, meta or {})
            self.actors[aid] = st
        elif meta and not st.meta:
            st.meta = meta
        if not st.subscribed:
            st.subscribed = True
            self.out.append(ins.SubscribeActor(aid))
        return st

    def pending_calls(self, aid: bytes) -> int:
        """Calls to this actor not answered yet (for max_pending_calls)."""
        st = self.actors.get(aid)
        return 0 if st is None else len(st.queue) + len(st.inflight)

    # ------------------------------------------------------------- handles
    def _on_actor_registered(self, e_: ev.ActorRegistered) -> None:
        st = ActorState(e_.aid, e_.meta)
        st.owned = True
        st.detached = e_.detached
        st.subscribed = True  # REGISTER_ACTOR's "sub" subscribes us
        st.pins = e_.pins
        self.actors[e_.aid] = st

    def _on_actor_forgotten(self, e_: ev.ActorForgotten) -> None:
        self.actors.pop(e_.aid, None)

    def _on_actor_handle_made(self, e_: ev.ActorHandleMade) -> None:
        st = self._actor(e_.aid, e_.meta)
        st.handles += 1
        if e_.owned:
            st.owned = True

    def _on_actor_escaped(self, e_: ev.ActorEscaped) -> None:
        st = self.actors.get(e_.aid)
        if st is not None:
            st.escaped = True

    def _on_actor_handle_dropped(self, e_: ev.ActorHandleDropped) -> None:
        st = self.actors.get(e_.aid)
        if st is None:
            return
        st.handles -= 1
        if st.handles > 0:
            return
        if st.state == DEAD:
            self._forget(st)
        elif st.owned and not st.escaped and not st.detached and not st.terminating:
            # Ray: an actor whose every handle is gone ends after the calls queued to it.
            st.terminating = True
            self.out.append(ins.TerminateActor(st.aid, st.meta))

    # --------------------------------------------------------------- calls
    def _actor_submitted(self, t: Task) -> None:
        call = t.actor
        st = self.actors.get(call.aid)
        if st is None or not st.subscribed or (call.meta and not st.meta):
            st = self._actor(call.aid, call.meta)
        call.st = st
        if st.state == ALIVE and not st.queue:
            self._send_call(st, t)
        elif st.state == DEAD:
            self._finish_with_error(t, st.error or exc.ActorDiedError())
        else:
            t.state = "queued"
            st.queue.append(t)

    def _send_call(self, st: ActorState, t: Task) -> None:
        """Send one call to the actor: sequence numbers follow send order."""
        call = t.actor
        h = call.h
        h["seq"] = st.seq
        h["inc"] = st.inc
        st.seq += 1
        t.state = "running"
        t.attempt += 1
        st.inflight[t.tid] = t
        assert st.addr is not None, "calls are sent to an ALIVE actor only"
        self.out.append(ins.SendActorCall(st.addr, h, call.payload))

    def _actor_reply(self, t: Task, r: ev.TaskReply) -> None:
        st = t.actor.st
        st.inflight.pop(t.tid, None)
        self._complete_task(t, r)
        if st.state == DEAD and not st.inflight:
            self._forget(st)

    def _cancel_actor_call(self, t: Task, recursive: bool) -> None:
        """zray.cancel on an actor call; force is not supported for actor calls."""
        st = t.actor.st
        if t.state == "queued":
            try:
                st.queue.remove(t)
            except ValueError:
                pass
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.state == "running" and st.addr:
            # The actor drops it if not started yet, interrupts it if it can.
            self.out.append(ins.CancelRunning(st.addr, t.tid, False, recursive))

    # ----------------------------------------------------------- lifecycle
    def _on_actor_alive(self, e_: ev.ActorAlive) -> None:
        st = self.actors.get(e_.aid)
        if st is None or st.state == DEAD:
            return
        if st.state == ALIVE and st.inc == e_.inc:
            return
        if st.inflight:  # sent to an earlier incarnation: it is gone
            self._lost_inflight(st)
        old = st.addr
        st.state = ALIVE
        st.addr = e_.addr
        if old and old != st.addr:
            self.out.append(ins.DropConnection(old))  # that process is gone
        st.inc = e_.inc
        st.pid = e_.pid
        st.seq = 0
        while st.queue:
            self._send_call(st, st.queue.popleft())

    def _on_actor_restarting(self, e_: ev.ActorRestarting) -> None:
        st = self.actors.get(e_.aid)
        if st is None or st.state == DEAD:
            return
        old = st.addr
        st.state = RESTARTING
        st.addr = None
        self._lost_inflight(st)
        if old:
            self.out.append(ins.DropConnection(old))

    def _on_actor_pending(self, e_: ev.ActorPending) -> None:
        st = self.actors.get(e_.aid)
        if st is not None and st.state not in (ALIVE, DEAD):
            st.state = PENDING

    def _on_actor_dead(self, e_: ev.ActorDead) -> None:
        st = self.actors.get(e_.aid)
        if st is None or st.state == DEAD:
            return
        old = st.addr
        st.state = DEAD
        st.addr = None
        st.error = e_.error
        st.pins = None
        while st.queue:
            self._finish_with_error(st.queue.popleft(), st.error)
        if st.inflight and e_.exited:
            # Replies sent before the exit may still be on their way: wait a little.
            self._actor_timers.append([None, st])
        else:
            self._fail_inflight(st)
        if old:
            self.out.append(ins.DropConnection(old))

    def _lost_inflight(self, st: ActorState) -> None:
        """The actor's process died with these calls in flight: retry or fail them."""
        retry = []
        for t in list(st.inflight.values()):
            if t.cancelled:
                self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
            elif t.retries != 0 and not t.gen_count:
                if t.retries > 0:
                    t.retries -= 1
                t.state = "queued"
                retry.append(t)
            else:
                self._finish_with_error(t, exc.ActorUnavailableError(
                    None, f"The actor {st.aid.hex()} ({st.cls_name}) is unavailable: its "
                    "process died while running this call, and the actor is restarting. "
                    "The call may or may not have been executed (max_task_retries=0).",
                    st.aid.hex()))
        st.inflight.clear()
        st.queue.extendleft(reversed(retry))

    def _fail_inflight(self, st: ActorState) -> None:
        err = st.error or exc.ActorDiedError()
        for t in list(st.inflight.values()):
            self._finish_with_error(t, err)
        st.inflight.clear()
        self._forget(st)

    def _forget(self, st: ActorState) -> None:
        if st.handles <= 0 and not st.queue and not st.inflight:
            self.actors.pop(st.aid, None)

    def _actor_tick(self, now: float) -> None:
        timers = self._actor_timers
        if not timers:
            return
        keep = []
        for item in timers:
            if item[0] is None:
                item[0] = now + EXIT_GRACE_S  # set at the first Tick after the death
                keep.append(item)
            elif item[0] <= now:
                self._fail_inflight(item[1])
            else:
                keep.append(item)
        self._actor_timers = keep
