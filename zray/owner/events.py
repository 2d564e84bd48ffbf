"""What happens to an owner: the events ``Owner.handle`` takes.

The shell (zray/core_worker.py) turns messages and API calls into these. They
carry everything the owner needs, the clock included (``Tick``): the owner
never asks the world. Dataclasses with slots, read-only by convention: not
``frozen``, whose ``__init__`` costs a call per field (``object.__setattr__``),
a fifth more Python calls per task on the submit/reply path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zray.owner.state import Task


# ------------------------------------------------------------- references
@dataclass(slots=True)
class RefAdded:
    """An ObjectRef to ``oid`` was made in this process (``owner``: None if ours)."""
    oid: bytes
    owner: list[Any] | None


@dataclass(slots=True)
class RefsDropped:
    """ObjectRef instances were garbage-collected (one item per instance)."""
    oids: list[Any]


@dataclass(slots=True)
class BorrowerAdded:
    oid: bytes
    addr: str


@dataclass(slots=True)
class BorrowerRemoved:
    oid: bytes
    addr: str


@dataclass(slots=True)
class Lend:
    """Refs inside a return value this process sends to ``caller``: it borrows them now."""
    contained: list[Any]  # (oid, owner)
    caller: list[Any]  # packed address
    caller_addr: str


@dataclass(slots=True)
class Put:
    """A value this process made with put(): inline ``frames`` or stored on ``node``."""
    oid: bytes
    frames: list[Any] | None
    node: bytes | None
    size: int
    nested: list[Any]  # ObjectRefs inside the value


# ---------------------------------------------------------------- objects
@dataclass(slots=True)
class Fetch:
    """A borrowed object is needed here: ask its owner (once)."""
    oid: bytes


@dataclass(slots=True)
class ObjectValue:
    """OBJECT_VALUE: the owner of a borrowed object sent its value or location."""
    oid: bytes
    frames: list[Any] | None
    node: bytes | None
    size: int
    is_error: bool


@dataclass(slots=True)
class GetObject:
    """GET_OBJECT: a borrower asks for a value we own; answer to ``ra``."""
    oid: bytes
    ra: str


@dataclass(slots=True)
class ObjectsFailed:
    """Objects fail for a reason found by the shell (owner unreachable or dead)."""
    items: list[Any]  # (oid, exception)


# ------------------------------------------------------------------ tasks
@dataclass(slots=True)
class Submit:
    task: Task


@dataclass(slots=True)
class LeaseGranted:
    lrid: int
    wid: bytes
    waddr: str
    lease: int
    node: bytes
    res: dict[Any, Any]
    raylet: list[Any]  # packed address of the granting raylet


@dataclass(slots=True)
class Spillback:
    lrid: int
    raylet: str  # the raylet to ask instead
    node: bytes | None = None  # its node


@dataclass(slots=True)
class LeaseFailed:
    lrid: int
    error: BaseException


@dataclass(slots=True)
class WorkerDied:
    wid: bytes
    reason: str
    oom: bool = False  # killed by its raylet's memory monitor


@dataclass(slots=True)
class TasksReturned:
    """A worker hands back pipelined tasks it did not start (its task runs long)."""
    tids: list[Any]


@dataclass(slots=True)
class TaskReply:
    tid: bytes
    rets: list[Any]
    payload: list[Any]
    err: bool = False
    dt: float | None = None
    exiting: bool = False
    contained: list[Any] | None = None
    gen_n: int | None = None


@dataclass(slots=True)
class GeneratorItem:
    tid: bytes
    i: int
    ret: list[Any]
    payload: list[Any]
    contained: list[Any] | None


@dataclass(slots=True)
class GeneratorTaken:
    """next() of an ObjectRefGenerator handed out item ``oid``: the generator's pin ends."""
    oid: bytes


@dataclass(slots=True)
class GeneratorReleased:
    """An ObjectRefGenerator was dropped after ``consumed`` items."""
    tid: bytes
    consumed: int


@dataclass(slots=True)
class Cancel:
    tid: bytes
    force: bool
    recursive: bool


@dataclass(slots=True)
class CancelChildren:
    parent: bytes
    force: bool


@dataclass(slots=True)
class FailTask:
    """End a task with an error the shell found (e.g. its actor is dead)."""
    tid: bytes
    error: BaseException


@dataclass(slots=True)
class LocalRayletDied:
    pass


# ---------------------------------------------------------------- cluster
@dataclass(slots=True)
class NodeDied:
    node: bytes
    raylet_tcp: str | None


@dataclass(slots=True)
class LocationAdded:
    """OBJECT_LOCATION_ADD: a raylet pulled a copy of a value we own."""
    oid: bytes
    node: bytes
    raylet: list[Any] | None


@dataclass(slots=True)
class GetLocations:
    """GET_OBJECT_LOCATIONS from a raylet whose pull found no copy."""
    oid: bytes
    ra: str
    rid: Any


@dataclass(slots=True)
class Tick:
    now: float


@dataclass(slots=True)
class Shutdown:
    """Return every lease."""



# ----------------------------------------------------------------- actors
@dataclass(slots=True)
class ActorRegistered:
    """This process created the actor (REGISTER_ACTOR accepted)."""
    aid: bytes
    meta: dict[Any, Any]
    detached: bool
    pins: list[Any]  # refs the constructor's arguments need


@dataclass(slots=True)
class ActorForgotten:
    aid: bytes


@dataclass(slots=True)
class ActorHandleMade:
    aid: bytes
    meta: dict[Any, Any] | None
    owned: bool = False


@dataclass(slots=True)
class ActorHandleDropped:
    aid: bytes


@dataclass(slots=True)
class ActorEscaped:
    """A handle was pickled (passed to another process)."""
    aid: bytes


@dataclass(slots=True)
class ActorAlive:
    aid: bytes
    inc: int  # the incarnation
    addr: str
    pid: int


@dataclass(slots=True)
class ActorRestarting:
    aid: bytes


@dataclass(slots=True)
class ActorPending:
    aid: bytes


@dataclass(slots=True)
class ActorDead:
    aid: bytes
    error: BaseException
    exited: bool  # an intended exit: replies sent before it may still come
