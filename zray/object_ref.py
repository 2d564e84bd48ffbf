"""ObjectRef: a future for a value owned by some core worker in the cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import types
from typing import Any

from zray import serialization, worker_state
from zray.ids import TASK_ID_LEN


def _worker():
    return worker_state._core_worker


class ObjectRef:
    """A reference to an object; ``zray.get`` resolves it.

    Creating or unpickling one counts a reference at its owner; dropping the
    last one anywhere in the cluster frees the object.
    """

    __slots__ = ("_id", "_owner", "_cw", "__weakref__")
    # ``ObjectRef[int]`` in annotations, as Ray's ObjectRef is generic.
    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)

    def __init__(self, object_id: bytes, owner: list | None = None, _register: bool = True):
        self._id = object_id
        self._owner = owner  # packed Address of the owner
        self._cw = None
        if _register:
            cw = _worker()
            if cw is not None:
                self._cw = cw
                cw.add_local_ref(object_id, owner)

    def __del__(self):
        cw = self._cw
        if cw is not None:
            try:
                cw.remove_local_ref(self._id)
            except Exception:
                pass

    @classmethod
    def from_random(cls) -> ObjectRef:
        """A ref with a random id and no owner (Ray's test helper); nothing is counted."""
        import os

        from zray.ids import OBJECT_ID_LEN

        return cls(os.urandom(OBJECT_ID_LEN), None, _register=False)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def task_id(self):
        from zray.ids import TaskID

        return TaskID(self._id[:TASK_ID_LEN])

    def owner_address(self) -> list | None:
        return self._owner

    def is_nil(self) -> bool:
        return self._id == b"\xff" * len(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __reduce__(self):
        serialization.note_ref(self)
        return (_rebuild_ref, (self._id, self._owner))

    # Futures: Ray lets a ref be awaited and turned into a concurrent future.
    def future(self) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        cw = _worker()

        def run():
            try:
                fut.set_result(cw.get([self], None)[0])
            except BaseException as e:  # the error is the result
                fut.set_exception(e)

        cw.run_when_ready(self._id, run)
        return fut

    def __await__(self):
        return asyncio.wrap_future(self.future()).__await__()

    def as_future(self) -> asyncio.Future:
        return asyncio.wrap_future(self.future())


def _rebuild_ref(object_id: bytes, owner: list | None) -> ObjectRef:
    ref = ObjectRef(object_id, owner)
    serialization.note_ref(ref)
    return ref


class ObjectRefGenerator:
    """The refs of a streaming generator task, arriving as the task yields them."""

    def __init__(self, task_id: bytes, cw: Any):
        self._task_id = task_id
        self._cw = cw
        self._next = 0

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync(None)

    def _next_sync(self, timeout_s: float | None) -> ObjectRef:
        ref = self._cw.next_generator_ref(self._task_id, self._next, timeout_s)
        if ref is None:
            raise StopIteration
        self._next += 1
        return ref

    def next_ready(self, timeout_s: float | None = None) -> ObjectRef:
        return self._next_sync(timeout_s)

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        loop = asyncio.get_running_loop()
        ref = await loop.run_in_executor(None, self._next_or_none)
        if ref is None:
            raise StopAsyncIteration
        return ref

    def _next_or_none(self) -> ObjectRef | None:
        # StopIteration cannot cross a Future: signal the end with None.
        try:
            return self._next_sync(None)
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        return self._cw.generator_completed_ref(self._task_id)

    def is_finished(self) -> bool:
        return self._cw.generator_finished(self._task_id, self._next)

    def __del__(self):
        try:
            self._cw.release_generator(self._task_id, self._next)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()})"


# Ray's older names
ObjectID = ObjectRef
StreamingObjectRefGenerator = ObjectRefGenerator
DynamicObjectRefGenerator = ObjectRefGenerator
