"""Accounting, eviction and spilling of a node's object store, as a state machine.

``ObjectStoreState`` does no I/O and reads no clock: ``handle(event)`` takes one
event and returns a list of actions for the raylet to carry out (usually through
``spill.StoreExecutor``). Completion of the slow actions (``Spill``, ``Restore``,
``Evict``) comes back as further events (``Spilled``, ``Restored``, ``Evicted``,
or ``SpillFailed``/``RestoreFailed``).

Life of an object on a node::

    seal ──► IN_MEMORY ──Spill──► SPILLING ──spilled──► SPILLED
                 ▲                                        │ get
                 └────────────restored──── RESTORING ◄────┘
    IN_MEMORY (secondary) ──Evict──► gone (bytes counted until ``Evicted``)

Byte accounting: ``used`` is every byte the store's segments occupy in
/dev/shm, including objects whose spill or eviction is still in flight and
restores that are reserved but not finished. ``releasing`` is the part of
``used`` already on its way out; room-making counts it as free so that two
events in a row do not both spill for the same shortfall.

Only objects that are in memory, unpinned and not already leaving are victims:
unpinned secondary copies first (least recently used first), since they can be
pulled again from their primary node, then unpinned primary copies, which are
spilled to disk rather than lost.

Hard limit: a writer reserves its object's bytes (``Reserve``) before it
creates the segment; the shell first makes room (``MakeRoom``, then runs the
actions) and reserves only if the bytes ``fits``. Restores and pulled copies
ask the same way. ``used`` counts reservations, so objects in /dev/shm never
exceed the capacity; a reservation becomes the object at its ``seal``.

Ordering rule for the shell: it must not create the segment of an object id
while an ``Evict`` of that id is still pending. Running ``Evict``/``Unlink``
inline (they are a single unlink) meets it trivially.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

ObjectId = bytes


# ---------------------------------------------------------------- actions


@dataclass(frozen=True)
class Ready:
    """The object is in /dev/shm: readers may map it now."""

    object_id: ObjectId


@dataclass(frozen=True)
class Missing:
    """The object is not on this node (never was, was evicted, or was lost)."""

    object_id: ObjectId


@dataclass(frozen=True)
class Evict:
    """Unlink a secondary copy to make room; answer with ``Evicted``."""

    object_id: ObjectId


@dataclass(frozen=True)
class Spill:
    """Copy a primary copy to disk, then unlink it; answer with ``Spilled``/``SpillFailed``."""

    object_id: ObjectId


@dataclass(frozen=True)
class Restore:
    """Copy a spilled object back into /dev/shm; answer with ``Restored``/``RestoreFailed``."""

    object_id: ObjectId


@dataclass(frozen=True)
class Unlink:
    """Unlink the object's segment (freed by its owner). No completion event."""

    object_id: ObjectId


@dataclass(frozen=True)
class DeleteSpilled:
    """Remove the object's spill file. No completion event."""

    object_id: ObjectId


@dataclass(frozen=True)
class StoreFull:
    """Room could not be made: the store is over capacity until pins are released.

    ``object_id`` is the object whose arrival (seal or restore) went over.
    """

    object_id: ObjectId
    used: int
    capacity: int


Action = Union[Ready, Missing, Evict, Spill, Restore, Unlink, DeleteSpilled, StoreFull]


# ---------------------------------------------------------------- events
# ObjectStoreState.handle(event) takes them: the shell's requests and, from
# StoreExecutor, the completions of slow actions.


@dataclass(frozen=True)
class Seal:
    object_id: ObjectId
    size: int
    primary: bool


@dataclass(frozen=True)
class Pin:
    object_id: ObjectId


@dataclass(frozen=True)
class Unpin:
    object_id: ObjectId


@dataclass(frozen=True)
class Get:
    object_id: ObjectId


@dataclass(frozen=True)
class Delete:
    object_id: ObjectId


@dataclass(frozen=True)
class MakeRoom:
    """Evict/spill so that ``size`` more bytes would fit (then ask ``fits``)."""

    size: int


@dataclass(frozen=True)
class Reserve:
    """A writer is about to create the object: count its bytes (the shell checked ``fits``)."""

    object_id: ObjectId
    size: int


@dataclass(frozen=True)
class Unreserve:
    """The writer gave up (or died) before its seal: its bytes are free again."""

    object_id: ObjectId


@dataclass(frozen=True)
class Spilled:
    object_id: ObjectId


@dataclass(frozen=True)
class SpillFailed:
    object_id: ObjectId


@dataclass(frozen=True)
class Restored:
    object_id: ObjectId


@dataclass(frozen=True)
class RestoreFailed:
    """``lost``: the spill file is gone or unreadable, so the object is gone too."""

    object_id: ObjectId
    lost: bool = False


@dataclass(frozen=True)
class Evicted:
    object_id: ObjectId


Event = Union[
    Seal, Pin, Unpin, Get, Delete, MakeRoom, Reserve, Unreserve, Spilled, SpillFailed,
    Restored, RestoreFailed, Evicted,
]


# ---------------------------------------------------------------- state


class Where(Enum):
    IN_MEMORY = "in_memory"
    SPILLING = "spilling"
    SPILLED = "spilled"
    RESTORING = "restoring"


@dataclass
class _Obj:
    size: int
    primary: bool
    where: Where = Where.IN_MEMORY
    pins: int = 0
    # Deleted by its owner while a spill/restore was in flight: finish the
    # I/O first, then clean up, so that two operations never race on one file.
    deleted: bool = False
    # A reader asked for it while it was being spilled: restore once it lands.
    want_restore: bool = False


@dataclass(frozen=True)
class StoreStats:
    capacity: int
    used_bytes: int  # bytes in /dev/shm, including in-flight spills/evictions/restores
    releasing_bytes: int  # part of used_bytes that a pending spill/evict will free
    num_in_memory: int
    num_spilled: int
    num_pinned: int
    spilled_bytes_total: int
    restored_bytes_total: int
    evicted_bytes_total: int
    over_capacity: bool

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ObjectStoreState:
    """Decides what the node's object store does; see the module docstring."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._objects: dict[ObjectId, _Obj] = {}
        # Eviction candidates: in memory and unpinned, oldest use first. An
        # object is in at most one of the two; being absent means pinned or
        # not in memory.
        self._lru_secondary: OrderedDict[ObjectId, None] = OrderedDict()
        self._lru_primary: OrderedDict[ObjectId, None] = OrderedDict()
        # Evicted copies are gone from _objects at once (readers get Missing and
        # re-pull) but their bytes stay counted until the executor says so.
        self._evicting: dict[ObjectId, int] = {}
        # Bytes reserved by writers that have not sealed yet (counted in _used).
        self._reserved: dict[ObjectId, int] = {}
        # Freed (or evicted) segments that a reader still maps: their memory is
        # in use until it unmaps (the shell keeps this up to date).
        self.draining = 0
        self._used = 0
        self._releasing = 0
        self._n_spilled = 0
        self._spilled_total = 0
        self._restored_total = 0
        self._evicted_total = 0

    # ------------------------------------------------------------ helpers

    def _lru_of(self, obj: _Obj) -> OrderedDict[ObjectId, None]:
        return self._lru_primary if obj.primary else self._lru_secondary

    def _touch(self, oid: ObjectId, obj: _Obj) -> None:
        """Mark as most recently used (if it is a candidate at all)."""
        if obj.where is Where.IN_MEMORY and obj.pins == 0:
            lru = self._lru_of(obj)
            lru[oid] = None
            lru.move_to_end(oid)

    def _drop_candidate(self, oid: ObjectId, obj: _Obj) -> None:
        self._lru_of(obj).pop(oid, None)

    def _over(self) -> int:
        """Bytes beyond capacity, counting pending releases as already free."""
        return self._used + self.draining - self._releasing - self.capacity

    def occupied(self) -> int:
        """Bytes of /dev/shm the objects hold: ``used`` plus freed segments still mapped."""
        return self._used + self.draining

    def _make_room(self, exclude: ObjectId | None) -> list[Action]:
        """Evict then spill LRU candidates until under capacity or out of candidates.

        Frees as much as it can even when that is not enough: the shortfall is
        real memory in /dev/shm, so less of it is better.
        """
        actions: list[Action] = []
        skipped: list[ObjectId] = []
        while self._over() > 0 and self._lru_secondary:
            oid, _ = self._lru_secondary.popitem(last=False)
            if oid == exclude:
                skipped.append(oid)
                continue
            obj = self._objects.pop(oid)
            self._evicting[oid] = self._evicting.get(oid, 0) + obj.size
            self._releasing += obj.size
            actions.append(Evict(oid))
        while self._over() > 0 and self._lru_primary:
            oid, _ = self._lru_primary.popitem(last=False)
            if oid == exclude:
                skipped.append(oid)
                continue
            obj = self._objects[oid]
            obj.where = Where.SPILLING
            self._releasing += obj.size
            actions.append(Spill(oid))
        for oid in skipped:  # put the excluded object back where it was: most recent
            self._touch(oid, self._objects[oid])
        return actions

    def _room_for(self, oid: ObjectId) -> list[Action]:
        actions = self._make_room(exclude=oid)
        if self._over() > 0:
            actions.append(StoreFull(oid, self._used, self.capacity))
        return actions

    def _start_restore(self, oid: ObjectId, obj: _Obj) -> list[Action]:
        # Reserve the bytes now: the segment exists as soon as the copy starts.
        obj.where = Where.RESTORING
        self._n_spilled -= 1
        self._used += obj.size
        actions = self._room_for(oid)
        # Room first, so that the shell frees memory before it fills more.
        return [a for a in actions if not isinstance(a, StoreFull)] + [Restore(oid)] + [
            a for a in actions if isinstance(a, StoreFull)
        ]

    # ------------------------------------------------------------ reservations

    def _make_room_for(self, size: int) -> list[Action]:
        """Evict/spill so that ``size`` more bytes would fit (as far as candidates allow)."""
        self._used += size
        try:
            return self._make_room(exclude=None)
        finally:
            self._used -= size

    def fits(self, size: int) -> bool:
        """Would ``size`` more bytes fit now (pending releases not counted as free)?"""
        return self._used + self.draining + size <= self.capacity

    def _reserve(self, object_id: ObjectId, size: int) -> list[Action]:
        """Count ``size`` bytes for an object about to be written (the caller checked ``fits``)."""
        if object_id not in self._reserved:
            self._reserved[object_id] = size
            self._used += size
        return []

    def is_reserved(self, object_id: ObjectId) -> bool:
        return object_id in self._reserved

    def _unreserve(self, object_id: ObjectId) -> list[Action]:
        """The writer gave up (or died) before its seal: its bytes are free again."""
        size = self._reserved.pop(object_id, None)
        if size is not None:
            self._used -= size
        return []

    def size_of(self, object_id: ObjectId) -> int:
        obj = self._objects.get(object_id)
        return 0 if obj is None else obj.size

    # ------------------------------------------------------------ events

    def _seal(self, object_id: ObjectId, size: int, primary: bool) -> list[Action]:
        """A new object of ``size`` bytes landed in /dev/shm (primary: made here)."""
        self._unreserve(object_id)  # its reservation, if any, becomes the object
        obj = self._objects.get(object_id)
        if obj is not None:
            if obj.where is Where.SPILLED:
                # Its segment was made again (e.g. pulled back): keep the shm
                # copy, drop the file so there is one copy to account for.
                self._n_spilled -= 1
                obj.where = Where.IN_MEMORY
                obj.primary = obj.primary or primary
                self._used += obj.size
                self._touch(object_id, obj)
                return [DeleteSpilled(object_id), *self._room_for(object_id)]
            # Already known with a segment: a duplicate seal (retries are
            # normal). A primary seal promotes a secondary copy.
            if primary and not obj.primary:
                self._drop_candidate(object_id, obj)
                obj.primary = True
            self._touch(object_id, obj)
            return []
        obj = _Obj(size=size, primary=primary)
        self._objects[object_id] = obj
        self._used += size
        self._touch(object_id, obj)
        return self._room_for(object_id)

    def _pin(self, object_id: ObjectId) -> list[Action]:
        """A reader is using the object: never evict or spill it until unpinned."""
        obj = self._objects.get(object_id)
        if obj is None or obj.deleted:
            return [Missing(object_id)]
        if obj.pins == 0:
            self._drop_candidate(object_id, obj)
        obj.pins += 1
        return []

    def _unpin(self, object_id: ObjectId) -> list[Action]:
        """A reader is done; the last unpin makes it a candidate again (most recent)."""
        obj = self._objects.get(object_id)
        if obj is None or obj.pins == 0:
            return []  # idempotent: a dead reader's pins may be dropped twice
        obj.pins -= 1
        if obj.pins == 0:
            self._touch(object_id, obj)
            # A seal or restore may have gone over capacity waiting for this.
            if self._over() > 0:
                return self._make_room(exclude=None)
        return []

    def _get(self, object_id: ObjectId) -> list[Action]:
        """A reader wants the object.

        Returns ``[Ready]`` if it is in memory, ``[Missing]`` if unknown,
        ``[..room.., Restore]`` if spilled, and ``[]`` if a spill or restore is
        in flight. In the last two cases a ``Ready`` or ``Missing`` for this id
        follows from a later event. ``Ready``/``Missing`` answer every reader
        waiting on that id, so the shell keeps the waiters, keyed by id.
        """
        obj = self._objects.get(object_id)
        if obj is None or obj.deleted:
            return [Missing(object_id)]
        if obj.where is Where.IN_MEMORY:
            self._touch(object_id, obj)
            return [Ready(object_id)]
        if obj.where is Where.SPILLED:
            return self._start_restore(object_id, obj)
        if obj.where is Where.SPILLING:
            obj.want_restore = True
        return []

    def _delete(self, object_id: ObjectId) -> list[Action]:
        """The owner freed the object: remove every copy this node has."""
        obj = self._objects.get(object_id)
        if obj is None or obj.deleted:
            return []
        if obj.where is Where.IN_MEMORY:
            # Readers that already mapped it keep their mapping; the bytes
            # leave our accounting now (they are freed when they unmap).
            del self._objects[object_id]
            self._drop_candidate(object_id, obj)
            self._used -= obj.size
            return [Unlink(object_id)]
        if obj.where is Where.SPILLED:
            del self._objects[object_id]
            self._n_spilled -= 1
            return [DeleteSpilled(object_id)]
        # In flight: clean up when the executor reports back, so that two
        # operations never race on one file. Readers waiting for a restore
        # will not get one: answer them now.
        waiting = obj.where is Where.RESTORING or obj.want_restore
        obj.deleted = True
        obj.want_restore = False
        return [Missing(object_id)] if waiting else []

    def _spilled(self, object_id: ObjectId) -> list[Action]:
        """The executor wrote the spill file and unlinked the segment."""
        obj = self._objects.get(object_id)
        if obj is None or obj.where is not Where.SPILLING:
            return []
        self._used -= obj.size
        self._releasing -= obj.size
        self._spilled_total += obj.size
        if obj.deleted:
            del self._objects[object_id]
            return [DeleteSpilled(object_id)]
        obj.where = Where.SPILLED
        self._n_spilled += 1
        if obj.want_restore:
            obj.want_restore = False
            return self._start_restore(object_id, obj)
        return []

    def _spill_failed(self, object_id: ObjectId) -> list[Action]:
        """The spill did not happen (disk full, segment gone): it is still in memory."""
        obj = self._objects.get(object_id)
        if obj is None or obj.where is not Where.SPILLING:
            return []
        self._releasing -= obj.size
        obj.where = Where.IN_MEMORY
        if obj.deleted:
            del self._objects[object_id]
            self._used -= obj.size
            return [Unlink(object_id)]
        actions: list[Action] = [Ready(object_id)] if obj.want_restore else []
        obj.want_restore = False
        # Most recent, so that the next shortfall tries other objects first.
        # No new room-making here: if the disk is full, trying the next victim
        # at once would only fail again; the next seal or unpin retries.
        self._touch(object_id, obj)
        if self._over() > 0:
            actions.append(StoreFull(object_id, self._used, self.capacity))
        return actions

    def _restored(self, object_id: ObjectId) -> list[Action]:
        """The executor copied the object back into /dev/shm."""
        obj = self._objects.get(object_id)
        if obj is None or obj.where is not Where.RESTORING:
            return []
        self._restored_total += obj.size
        obj.where = Where.IN_MEMORY
        if obj.deleted:
            del self._objects[object_id]
            self._used -= obj.size
            return [Unlink(object_id)]
        self._touch(object_id, obj)
        return [Ready(object_id)]

    def _restore_failed(self, object_id: ObjectId, lost: bool = False) -> list[Action]:
        """The restore did not happen; waiting readers get ``Missing``.

        With ``lost`` the spill file is unusable and the object is dropped (the
        owner may rebuild it); otherwise it stays spilled and a later ``get``
        tries again.
        """
        obj = self._objects.get(object_id)
        if obj is None or obj.where is not Where.RESTORING:
            return []
        self._used -= obj.size
        if obj.deleted:
            del self._objects[object_id]
            return [DeleteSpilled(object_id)]  # readers were told Missing at delete
        if lost:
            del self._objects[object_id]
            return [DeleteSpilled(object_id), Missing(object_id)]
        obj.where = Where.SPILLED
        self._n_spilled += 1
        return [Missing(object_id)]

    def _evicted(self, object_id: ObjectId) -> list[Action]:
        """The executor unlinked an evicted secondary copy."""
        size = self._evicting.pop(object_id, None)
        if size is None:
            return []
        self._used -= size
        self._releasing -= size
        self._evicted_total += size
        return []

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return the actions it calls for (the only way in)."""
        if isinstance(event, Seal):
            return self._seal(event.object_id, event.size, event.primary)
        if isinstance(event, RestoreFailed):
            return self._restore_failed(event.object_id, event.lost)
        if isinstance(event, MakeRoom):
            return self._make_room_for(event.size)
        if isinstance(event, Reserve):
            return self._reserve(event.object_id, event.size)
        method = _DISPATCH.get(type(event))
        if method is None:
            raise TypeError(f"not an object store event: {event!r}")
        return method(self, event.object_id)

    # ------------------------------------------------------------ queries

    def contains(self, object_id: ObjectId) -> bool:
        """Known here, in memory or spilled (and not deleted)."""
        obj = self._objects.get(object_id)
        return obj is not None and not obj.deleted

    def in_memory(self, object_id: ObjectId) -> bool:
        obj = self._objects.get(object_id)
        return obj is not None and not obj.deleted and obj.where is Where.IN_MEMORY

    def is_spilled(self, object_id: ObjectId) -> bool:
        obj = self._objects.get(object_id)
        return obj is not None and not obj.deleted and obj.where is Where.SPILLED

    def stats(self) -> StoreStats:
        """Counters for status reports (O(objects): call it for reports, not per event)."""
        in_mem = pinned = 0
        for obj in self._objects.values():
            in_mem += obj.where is Where.IN_MEMORY
            pinned += obj.pins > 0
        return StoreStats(
            capacity=self.capacity,
            used_bytes=self._used,
            releasing_bytes=self._releasing,
            num_in_memory=in_mem,
            num_spilled=self._n_spilled,
            num_pinned=pinned,
            spilled_bytes_total=self._spilled_total,
            restored_bytes_total=self._restored_total,
            evicted_bytes_total=self._evicted_total,
            over_capacity=self._over() > 0,
        )


_DISPATCH: dict[type, Callable[[ObjectStoreState, ObjectId], list[Action]]] = {
    Pin: ObjectStoreState._pin,
    Unpin: ObjectStoreState._unpin,
    Get: ObjectStoreState._get,
    Delete: ObjectStoreState._delete,
    Spilled: ObjectStoreState._spilled,
    SpillFailed: ObjectStoreState._spill_failed,
    Restored: ObjectStoreState._restored,
    Evicted: ObjectStoreState._evicted,
    Unreserve: ObjectStoreState._unreserve,
}
