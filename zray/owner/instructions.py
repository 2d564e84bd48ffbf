"""What an owner asks the world to do: the instructions ``Owner.handle`` returns.

The shell (zray/core_worker.py) turns each into a message (or a wake-up of
threads blocked in get/wait). Dataclasses with slots, read-only by convention
(not ``frozen``: see zray/owner/events.py). Addresses: a ``str`` is a socket address ready to
use, a ``list`` a packed address the shell resolves, ``None`` the local raylet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zray.owner.state import Entry, LeasedWorker, Task


@dataclass(slots=True)
class RequestLease:
    lrid: int
    dest: str | None
    res: dict[Any, Any]
    strategy: Any
    retriable: bool = True  # False: the raylet's memory monitor kills retriable work first


@dataclass(slots=True)
class PushTask:
    task: Task
    worker: LeasedWorker


@dataclass(slots=True)
class ReturnLease:
    raylet: list[Any] | str
    lease: int
    exiting: bool


@dataclass(slots=True)
class FreeObjects:
    dest: str | list[Any] | None
    oids: list[Any]
    node: bytes | None = None  # the node meant (a forwarding raylet needs it)


@dataclass(slots=True)
class AddBorrower:
    owner: list[Any]
    oid: bytes
    borrower: list[Any] | None = None  # packed address; None: this process


@dataclass(slots=True)
class RemoveBorrower:
    owner: list[Any]
    oid: bytes


@dataclass(slots=True)
class FetchObject:
    """Ask the owner of a borrowed object for its value (GET_OBJECT)."""
    oid: bytes
    entry: Entry


@dataclass(slots=True)
class SendValue:
    """OBJECT_VALUE to a borrower: the entry's value or location, or ``error_frames``."""
    ra: str
    oid: bytes
    entry: Entry | None
    error: BaseException | None = None


@dataclass(slots=True)
class ObjectsReady:
    """These objects became ready or failed: wake what waits for them."""
    oids: list[Any]
    entries: list[Any]


@dataclass(slots=True)
class GeneratorEnded:
    tid: bytes


@dataclass(slots=True)
class CancelRunning:
    addr: str
    tid: bytes
    force: bool
    recursive: bool


@dataclass(slots=True)
class LocationsReply:
    ra: str
    rid: Any
    oid: bytes
    nodes: list[Any]


@dataclass(slots=True)
class DropConnection:
    addr: str


@dataclass(slots=True)
class SubscribeActor:
    aid: bytes


@dataclass(slots=True)
class SendActorCall:
    addr: str
    header: dict[Any, Any]
    payload: list[Any]


@dataclass(slots=True)
class TerminateActor:
    """Every handle of an actor this process owns is gone: end it after its calls."""
    aid: bytes
    meta: dict[Any, Any]
