"""Results of a zray multiprocessing Pool: ``AsyncResult`` and the ``imap`` iterators.

Every batch the pool submits comes back as a list with one entry per item: the item's
value, or an ``ItemError`` holding the exception the function raised. A batch whose actor
died (e.g. ``terminate()``) stands for the zray error in each of its items.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from multiprocessing import TimeoutError
from typing import Any


class ItemError:
    """An exception raised by the pool's function on one item (sent back, not raised, so
    the other items of the batch keep their results)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> tuple:
        return (ItemError, (self.error,))


def batch_values(ref: Any, size: int) -> list:
    """The batch's per-item results, exceptions as exception objects."""
    import zray
    from zray.exceptions import RayError

    try:
        values = zray.get(ref)
    except RayError as e:  # the batch as a whole failed: the actor died or was killed
        return [e] * size
    return [v.error if isinstance(v, ItemError) else v for v in values]


class AsyncResult:
    """The result of ``apply_async`` / ``map_async`` / ``starmap_async`` (as in
    ``multiprocessing.pool.AsyncResult``): get, wait, ready, successful."""

    def __init__(self, refs: list, sizes: list[int], callback: Callable | None = None,
                 error_callback: Callable | None = None, single_result: bool = False) -> None:
        self._refs = refs
        self._sizes = sizes
        self._single = single_result
        self._values: list | None = None  # flat, once every batch is in
        self._lock = threading.Lock()
        if callback is not None or error_callback is not None:
            # multiprocessing calls them from a result thread as soon as all is done.
            threading.Thread(target=self._run_callbacks, args=(callback, error_callback),
                             name="zray-pool-callbacks", daemon=True).start()

    def _run_callbacks(self, callback: Callable | None, error_callback: Callable | None) -> None:
        self.wait()
        error = self._first_error()
        if error is not None:
            if error_callback is not None:
                error_callback(error)
        elif callback is not None:
            values = self._collect()
            callback(values[0] if self._single else values)

    def _collect(self) -> list:
        with self._lock:
            if self._values is None:
                flat: list = []
                for ref, size in zip(self._refs, self._sizes):
                    flat.extend(batch_values(ref, size))
                self._values = flat
            return self._values

    def _first_error(self) -> BaseException | None:
        return next((v for v in self._collect() if isinstance(v, BaseException)), None)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the result is ready or timeout seconds pass (no error on timeout)."""
        import zray

        if self._values is None and self._refs:
            zray.wait(self._refs, num_returns=len(self._refs), timeout=timeout,
                      fetch_local=False)

    def ready(self) -> bool:
        """Whether every task of this result has finished."""
        import zray

        if self._values is not None or not self._refs:
            return True
        ready, _ = zray.wait(self._refs, num_returns=len(self._refs), timeout=0,
                             fetch_local=False)
        return len(ready) == len(self._refs)

    def successful(self) -> bool:
        """Whether no task raised; ValueError if the result is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._first_error() is None

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list, or one value for apply_async), waiting up to timeout seconds
        (multiprocessing.TimeoutError); re-raises the first exception a task raised."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        error = self._first_error()
        if error is not None:
            raise error
        values = self._collect()
        return values[0] if self._single else list(values)


class IMapIterator:
    """The iterator of ``imap`` (ordered) and ``imap_unordered``: one batch in flight per
    pool actor; each finished batch frees its actor for the next one, read lazily from
    the input. A failed item comes back as its exception object (Ray's behaviour)."""

    def __init__(self, submit: Callable[[int, list], Any], num_actors: int,
                 items: Iterator, chunksize: int, ordered: bool) -> None:
        self._submit = submit
        self._items = items
        self._chunksize = chunksize
        self._ordered = ordered
        self._exhausted = False
        self._next_chunk = 0       # the chunk index submitted next
        self._next_out = 0         # ordered: the chunk index returned next
        self._in_flight: dict[Any, tuple[int, int, int]] = {}  # ref -> chunk, actor, size
        self._done: dict[int, list] = {}  # finished chunks not yet returned
        self._buffer: deque = deque()
        for actor_index in range(num_actors):
            self._submit_next(actor_index)

    def _submit_next(self, actor_index: int) -> None:
        if self._exhausted:
            return
        chunk = []
        for item in self._items:
            chunk.append(item)
            if len(chunk) == self._chunksize:
                break
        if len(chunk) < self._chunksize:
            self._exhausted = True
        if chunk:
            ref = self._submit(actor_index, chunk)
            self._in_flight[ref] = (self._next_chunk, actor_index, len(chunk))
            self._next_chunk += 1

    def __iter__(self) -> IMapIterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; multiprocessing.TimeoutError if none comes within timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer:
            if self._ordered and self._next_out in self._done:
                self._buffer.extend(self._done.pop(self._next_out))
                self._next_out += 1
            elif not self._ordered and self._done:
                self._buffer.extend(self._done.pop(next(iter(self._done))))
            elif not self._in_flight:
                raise StopIteration
            else:
                self._collect(deadline)
        return self._buffer.popleft()

    def _collect(self, deadline: float | None) -> None:
        import zray

        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _ = zray.wait(list(self._in_flight), num_returns=1, timeout=remaining)
        if not ready:
            raise TimeoutError
        for ref in ready:
            chunk, actor_index, size = self._in_flight.pop(ref)
            self._done[chunk] = batch_values(ref, size)
            self._submit_next(actor_index)
