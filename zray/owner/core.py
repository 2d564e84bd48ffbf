"""The Owner: one process's tasks and objects as a state machine without I/O.

``Owner.handle(event) -> list[instruction]`` is the one entry point, in the
style of dask's ``WorkerState.handle_stimulus`` and zray/objstore/store.py.
Events (zray/owner/events.py) come from the CoreWorker shell, which turns
messages, API calls and its clock into them; instructions
(zray/owner/instructions.py) go back to it to be sent. The handlers live in
mixins by subject: refs.py (reference counting, borrowing), tasks.py
(submission, leases, pipelining, replies, retries, generators, cancel) and
lineage.py (object locations, node death, re-execution) and actors.py (each
actor's calls: sequence numbers, queues, restarts).

Not thread-safe: the shell calls it under its lock. Errors it must store are
encoded by ``encode_error`` (the shell's serialiser), so that this package
imports nothing that does I/O.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.actors import ActorsMixin, ActorState
from zray.owner.lineage import LineageMixin
from zray.owner.refs import RefsMixin
from zray.owner.state import Entry, KeyState, Task
from zray.owner.tasks import TasksMixin


class Owner(RefsMixin, TasksMixin, LineageMixin, ActorsMixin):
    def __init__(self, node_id: bytes, ipc: str, me: list[Any], me_str: str,
                 encode_error: Callable[[BaseException], list[Any]],
                 decode: Callable[[list[Any]], Any]):
        self.node_id = node_id
        self.ipc = ipc  # this process's ipc address: with node_id, tells owned refs apart
        self.me = me  # this process's packed address
        self.me_str = me_str
        self.encode_error = encode_error
        self.decode = decode
        self.objects: dict[bytes, Entry] = {}
        self.tasks: dict[bytes, Task] = {}
        self.keys: dict[Any, KeyState] = {}
        self.lease_reqs: dict[int, KeyState] = {}
        self.lease_dest: dict[int, str | None] = {}  # lease request id -> raylet asked
        self._lease_rid = 0
        self.children: dict[bytes, set[Any]] = {}  # parent task id -> child task ids
        self.lineage: dict[bytes, Task] = {}
        self.raylet_addrs: dict[bytes, str] = {}  # other nodes' raylets (tcp)
        self.dead_nodes: set[bytes] = set()
        self._borrow_releases: collections.deque[list[Any]] = collections.deque()
        self.actors: dict[bytes, ActorState] = {}
        self._actor_timers: list[Any] = []  # [deadline (None until the next Tick), ActorState]
        self.out: list[Any] = []
        self._ready_oids: list[Any] = []
        self._ready_entries: list[Any] = []

    def handle(self, event: Any) -> list[Any]:
        """Apply one event; return the instructions it produced, in order."""
        _HANDLERS[type(event)](self, event)
        if self._ready_oids:
            self.out.append(ins.ObjectsReady(self._ready_oids, self._ready_entries))
            self._ready_oids = []
            self._ready_entries = []
        out = self.out
        self.out = []
        return out

    def _on_tick(self, t: ev.Tick) -> None:
        self._flush_borrow_releases(t.now)
        self._return_idle_leases(t.now)
        self._actor_tick(t.now)


_HANDLERS: dict[type, Callable[[Owner, Any], None]] = {
    ev.RefAdded: Owner._on_ref_added,
    ev.RefsDropped: Owner._on_refs_dropped,
    ev.BorrowerAdded: Owner._on_borrower_added,
    ev.BorrowerRemoved: Owner._on_borrower_removed,
    ev.Lend: Owner._on_lend,
    ev.Put: Owner._on_put,
    ev.Fetch: Owner._on_fetch,
    ev.ObjectValue: Owner._on_object_value,
    ev.GetObject: Owner._on_get_object,
    ev.ObjectsFailed: Owner._on_objects_failed,
    ev.Submit: Owner._on_submit,
    ev.LeaseGranted: Owner._on_lease_granted,
    ev.Spillback: Owner._on_spillback,
    ev.LeaseFailed: Owner._on_lease_failed,
    ev.WorkerDied: Owner._on_worker_died,
    ev.TasksReturned: Owner._on_tasks_returned,
    ev.TaskReply: Owner._on_task_reply,
    ev.GeneratorItem: Owner._on_generator_item,
    ev.GeneratorTaken: Owner._on_generator_taken,
    ev.GeneratorReleased: Owner._on_generator_released,
    ev.Cancel: Owner._on_cancel,
    ev.CancelChildren: Owner._on_cancel_children,
    ev.FailTask: Owner._on_fail_task,
    ev.LocalRayletDied: Owner._on_local_raylet_died,
    ev.NodeDied: Owner._on_node_died,
    ev.LocationAdded: Owner._on_location_added,
    ev.GetLocations: Owner._on_get_locations,
    ev.Tick: Owner._on_tick,
    ev.Shutdown: Owner._on_shutdown,
    ev.ActorRegistered: Owner._on_actor_registered,
    ev.ActorForgotten: Owner._on_actor_forgotten,
    ev.ActorHandleMade: Owner._on_actor_handle_made,
    ev.ActorHandleDropped: Owner._on_actor_handle_dropped,
    ev.ActorEscaped: Owner._on_actor_escaped,
    ev.ActorAlive: Owner._on_actor_alive,
    ev.ActorRestarting: Owner._on_actor_restarting,
    ev.ActorPending: Owner._on_actor_pending,
    ev.ActorDead: Owner._on_actor_dead,
}
