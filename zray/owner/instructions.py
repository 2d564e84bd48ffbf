"""What an owner asks the world to do: the instructions ``Owner.handle`` returns.

The shell (zray/core_worker.py) turns each into a message (or a wake-up of
threads blocked in get/wait). Addresses: a ``str`` is a socket address ready to
use, a ``list`` a packed address the shell resolves, ``None`` the local raylet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zray.owner.state import Entry, LeasedWorker, Task

_dc = dataclass(frozen=True, slots=True)


@_dc
class RequestLease:
    lrid: int
    dest: str | None
    res: dict
    strategy: Any
    retriable: bool = True  # False: the raylet's memory monitor kills retriable work first


@_dc
class PushTask:
    task: Task
    worker: LeasedWorker


@_dc
class ReturnLease:
    raylet: list | str
    lease: int
    exiting: bool


@_dc
class FreeObjects:
    dest: str | list | None
    oids: list
    node: bytes | None = None  # the node meant (a forwarding raylet needs it)


@_dc
class AddBorrower:
    owner: list
    oid: bytes
    borrower: list | None = None  # packed address; None: this process


@_dc
class RemoveBorrower:
    owner: list
    oid: bytes


@_dc
class FetchObject:
    """Ask the owner of a borrowed object for its value (GET_OBJECT)."""
    oid: bytes
    entry: Entry


@_dc
class SendValue:
    """OBJECT_VALUE to a borrower: the entry's value or location, or ``error_frames``."""
    ra: str
    oid: bytes
    entry: Entry | None
    error: BaseException | None = None


@_dc
class ObjectsReady:
    """These objects became ready or failed: wake what waits for them."""
    oids: list
    entries: list


@_dc
class GeneratorEnded:
    tid: bytes


@_dc
class CancelRunning:
    addr: str
    tid: bytes
    force: bool
    recursive: bool


@_dc
class LocationsReply:
    ra: str
    rid: Any
    oid: bytes
    nodes: list


@_dc
class DropConnection:
    addr: str


@_dc
class SubscribeActor:
    aid: bytes


@_dc
class SendActorCall:
    addr: str
    header: dict
    payload: list


@_dc
class TerminateActor:
    """Every handle of an actor this process owns is gone: end it after its calls."""
    aid: bytes
    meta: dict
