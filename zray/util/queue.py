"""``ray.util.queue``: a FIFO queue held by an actor, usable from the driver, tasks and actors.

The queue lives in an async actor (an ``asyncio.Queue``); a ``Queue`` object is only a
handle to it, so it can be passed to tasks and actors, and every copy sees the same items.
The actor answers with a status instead of raising, so ``Empty`` / ``Full`` reach the
caller as themselves, not wrapped in a task error.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any


class Empty(_stdlib_queue.Empty):
    """Raised by a get on an empty Queue (at once if non-blocking, else on timeout)."""


class Full(_stdlib_queue.Full):
    """Raised by a put on a full Queue (at once if non-blocking, else on timeout)."""


_OK, _EMPTY, _FULL = 0, 1, 2


class _QueueActor:
    """The state: one asyncio.Queue; blocking calls wait on the actor's event loop."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item: Any, timeout: float | None = None) -> tuple:
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return _FULL, ""
        return _OK, None

    async def get(self, timeout: float | None = None) -> tuple:
        try:
            return _OK, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return _EMPTY, ""

    def put_nowait(self, item: Any) -> tuple:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return _FULL, ""
        return _OK, None

    def put_nowait_batch(self, items: list) -> tuple:
        # All or nothing: a batch that does not fit adds no item.
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return _FULL, (f"Cannot add {len(items)} items to queue of size "
                           f"{self.queue.qsize()} and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)
        return _OK, None

    def get_nowait(self) -> tuple:
        try:
            return _OK, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return _EMPTY, ""

    def get_nowait_batch(self, num_items: int) -> tuple:
        if num_items > self.queue.qsize():
            return _EMPTY, (f"Cannot get {num_items} items from queue of size "
                            f"{self.queue.qsize()}.")
        return _OK, [self.queue.get_nowait() for _ in range(num_items)]


def _unwrap(reply: tuple) -> Any:
    status, value = reply
    if status == _EMPTY:
        raise Empty(value) if value else Empty
    if status == _FULL:
        raise Full(value) if value else Full
    return value


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


class Queue:
    """A first-in, first-out queue on zray, like ``asyncio.Queue`` (sync and async API).

    Args:
        maxsize: the most items it holds; 0 (default) is unbounded.
        actor_options: options for the queue's actor, passed to ``.options(...)``
            (e.g. ``{"num_cpus": 1}`` or a name).
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None) -> None:
        import zray

        self.maxsize = maxsize
        self.actor: Any = zray.remote(_QueueActor).options(
            **(actor_options or {})).remote(maxsize)

    def _call(self, method: str, *args: Any) -> Any:
        import zray

        if self.actor is None:
            raise RuntimeError("This Queue has been shut down.")
        return zray.get(getattr(self.actor, method).remote(*args))

    async def _acall(self, method: str, *args: Any) -> Any:
        if self.actor is None:
            raise RuntimeError("This Queue has been shut down.")
        return await getattr(self.actor, method).remote(*args)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return self._call("qsize")

    def qsize(self) -> int:
        """The number of items in the queue."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue is empty."""
        return self._call("empty")

    def full(self) -> bool:
        """Whether the queue is full."""
        return self._call("full")

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; if full, wait (block=True, up to timeout seconds) or raise Full."""
        if not block:
            return _unwrap(self._call("put_nowait", item))
        _check_timeout(timeout)
        return _unwrap(self._call("put", item, timeout))

    async def put_async(self, item: Any, block: bool = True,
                        timeout: float | None = None) -> None:
        """put() for asyncio code."""
        if not block:
            return _unwrap(await self._acall("put_nowait", item))
        _check_timeout(timeout)
        return _unwrap(await self._acall("put", item, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the first item; if empty, wait (block=True, up to timeout
        seconds) or raise Empty."""
        if not block:
            return _unwrap(self._call("get_nowait"))
        _check_timeout(timeout)
        return _unwrap(self._call("get", timeout))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """get() for asyncio code."""
        if not block:
            return _unwrap(await self._acall("get_nowait"))
        _check_timeout(timeout)
        return _unwrap(await self._acall("get", timeout))

    def put_nowait(self, item: Any) -> None:
        """put(item, block=False)."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all items in order, or none (Full) if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        return _unwrap(self._call("put_nowait_batch", list(items)))

    def get_nowait(self) -> Any:
        """get(block=False)."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return num_items items in order, or none (Empty) if fewer are there."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        return _unwrap(self._call("get_nowait_batch", num_items))

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor: at once (force=True), or let it exit and kill it if it
        has not within grace_period_s seconds. The items still in it are lost."""
        import zray

        if self.actor is not None:
            if force:
                zray.kill(self.actor, no_restart=True)
            else:
                done = self.actor.__ray_terminate__.remote()
                ready, _ = zray.wait([done], timeout=grace_period_s)
                if not ready:
                    zray.kill(self.actor, no_restart=True)
        self.actor = None
