"""Binary ids for jobs, nodes, workers, tasks and objects.

An ObjectID is its TaskID followed by a 4-byte return index, so the task that
made an object (its lineage) is known from the id alone.
"""

from __future__ import annotations

import itertools
import os
import struct

TASK_ID_LEN = 16
OBJECT_ID_LEN = TASK_ID_LEN + 4
UNIQUE_ID_LEN = 16
PUT_INDEX = 0xFFFFFFFF  # return index of objects made by put()

_prefix = os.urandom(8)
_counter = itertools.count(1)


def _reset_after_fork() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8)
    _counter = itertools.count(1)


os.register_at_fork(after_in_child=_reset_after_fork)


def new_task_id() -> bytes:
    # next() of an itertools.count is atomic (C, under the GIL): no lock needed.
    return _prefix + next(_counter).to_bytes(8, "big")


def new_unique_id() -> bytes:
    return os.urandom(UNIQUE_ID_LEN)


def object_id_for(task_id: bytes, index: int) -> bytes:
    return task_id + struct.pack(">I", index)


def new_put_id() -> bytes:
    return object_id_for(new_task_id(), PUT_INDEX)


def task_id_of(object_id: bytes) -> bytes:
    return object_id[:TASK_ID_LEN]


def index_of(object_id: bytes) -> int:
    return struct.unpack(">I", object_id[TASK_ID_LEN:])[0]


class BaseID:
    """Hex-printable id wrapper with Ray's method names."""

    __slots__ = ("_b",)
    size = UNIQUE_ID_LEN

    def __init__(self, b: bytes):
        self._b = bytes(b)

    def binary(self) -> bytes:
        return self._b

    def hex(self) -> str:
        return self._b.hex()

    @classmethod
    def from_hex(cls, h: str):
        return cls(bytes.fromhex(h))

    @classmethod
    def from_random(cls):
        return cls(os.urandom(cls.size))

    @classmethod
    def nil(cls):
        return cls(b"\xff" * cls.size)

    def is_nil(self) -> bool:
        return self._b == b"\xff" * self.size

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._b == other._b

    def __hash__(self) -> int:
        return hash(self._b)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hex()})"

    __str__ = hex


class JobID(BaseID):
    size = 4


class NodeID(BaseID):
    pass


class WorkerID(BaseID):
    pass


class TaskID(BaseID):
    size = TASK_ID_LEN


class ActorID(BaseID):
    pass


class ObjectID(BaseID):
    size = OBJECT_ID_LEN
