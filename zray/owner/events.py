"""What happens to an owner: the events ``Owner.handle`` takes.

The shell (zray/core_worker.py) turns messages and API calls into these. They
carry everything the owner needs, the clock included (``Tick``): the owner
never asks the world. Frozen dataclasses with slots: cheap on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zray.owner.state import Task

_dc = dataclass(frozen=True, slots=True)


# ------------------------------------------------------------- references
@_dc
class RefAdded:
    """An ObjectRef to ``oid`` was made in this process (``owner``: None if ours)."""
    oid: bytes
    owner: list | None


@_dc
class RefsDropped:
    """ObjectRef instances were garbage-collected (one item per instance)."""
    oids: list


@_dc
class BorrowerAdded:
    oid: bytes
    addr: str


@_dc
class BorrowerRemoved:
    oid: bytes
    addr: str


@_dc
class Lend:
    """Refs inside a return value this process sends to ``caller``: it borrows them now."""
    contained: list  # (oid, owner)
    caller: list  # packed address
    caller_addr: str


@_dc
class Put:
    """A value this process made with put(): inline ``frames`` or stored on ``node``."""
    oid: bytes
    frames: list | None
    node: bytes | None
    size: int
    nested: list  # ObjectRefs inside the value


# ---------------------------------------------------------------- objects
@_dc
class Fetch:
    """A borrowed object is needed here: ask its owner (once)."""
    oid: bytes


@_dc
class ObjectValue:
    """OBJECT_VALUE: the owner of a borrowed object sent its value or location."""
    oid: bytes
    frames: list | None
    node: bytes | None
    size: int
    is_error: bool


@_dc
class GetObject:
    """GET_OBJECT: a borrower asks for a value we own; answer to ``ra``."""
    oid: bytes
    ra: str


@_dc
class ObjectsFailed:
    """Objects fail for a reason found by the shell (owner unreachable or dead)."""
    items: list  # (oid, exception)


# ------------------------------------------------------------------ tasks
@_dc
class Submit:
    task: Task


@_dc
class LeaseGranted:
    lrid: int
    wid: bytes
    waddr: str
    lease: int
    node: bytes
    res: dict
    raylet: list  # packed address of the granting raylet


@_dc
class Spillback:
    lrid: int
    raylet: str  # the raylet to ask instead


@_dc
class LeaseFailed:
    lrid: int
    error: BaseException


@_dc
class WorkerDied:
    wid: bytes
    reason: str
    oom: bool = False  # killed by its raylet's memory monitor


@_dc
class TasksReturned:
    """A worker hands back pipelined tasks it did not start (its task runs long)."""
    tids: list


@_dc
class TaskReply:
    tid: bytes
    rets: list
    payload: list
    err: bool = False
    dt: float | None = None
    exiting: bool = False
    contained: list | None = None
    gen_n: int | None = None


@_dc
class GeneratorItem:
    tid: bytes
    i: int
    ret: list
    payload: list
    contained: list | None


@_dc
class GeneratorTaken:
    """next() of an ObjectRefGenerator handed out item ``oid``: the generator's pin ends."""
    oid: bytes


@_dc
class GeneratorReleased:
    """An ObjectRefGenerator was dropped after ``consumed`` items."""
    tid: bytes
    consumed: int


@_dc
class Cancel:
    tid: bytes
    force: bool
    recursive: bool


@_dc
class CancelChildren:
    parent: bytes
    force: bool


@_dc
class FailTask:
    """End a task with an error the shell found (e.g. its actor is dead)."""
    tid: bytes
    error: BaseException


@_dc
class LocalRayletDied:
    pass


# ---------------------------------------------------------------- cluster
@_dc
class NodeDied:
    node: bytes
    raylet_tcp: str | None


@_dc
class LocationAdded:
    """OBJECT_LOCATION_ADD: a raylet pulled a copy of a value we own."""
    oid: bytes
    node: bytes
    raylet: list | None


@_dc
class GetLocations:
    """GET_OBJECT_LOCATIONS from a raylet whose pull found no copy."""
    oid: bytes
    ra: str
    rid: Any


@_dc
class Tick:
    now: float


@_dc
class Shutdown:
    """Return every lease."""



# ----------------------------------------------------------------- actors
@_dc
class ActorRegistered:
    """This process created the actor (REGISTER_ACTOR accepted)."""
    aid: bytes
    meta: dict
    detached: bool
    pins: list  # refs the constructor's arguments need


@_dc
class ActorForgotten:
    aid: bytes


@_dc
class ActorHandleMade:
    aid: bytes
    meta: dict | None
    owned: bool = False


@_dc
class ActorHandleDropped:
    aid: bytes


@_dc
class ActorEscaped:
    """A handle was pickled (passed to another process)."""
    aid: bytes


@_dc
class ActorAlive:
    aid: bytes
    inc: int  # the incarnation
    addr: str
    pid: int


@_dc
class ActorRestarting:
    aid: bytes


@_dc
class ActorPending:
    aid: bytes


@_dc
class ActorDead:
    aid: bytes
    error: BaseException
    exited: bool  # an intended exit: replies sent before it may still come
