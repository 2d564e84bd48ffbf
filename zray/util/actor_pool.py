"""``ray.util.ActorPool``: run work over a fixed set of actors, one call per actor at a time.

``fn(actor, value)`` starts the work and returns the ObjectRef of its result (or a list of
refs); the actor counts as busy until that result is taken with ``get_next`` /
``get_next_unordered``. Values submitted while every actor is busy wait in a FIFO and start
as actors come back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

V = TypeVar("V")

_TIMEOUT_MSG = "Timed out waiting for result"


def _key(future: Any) -> Any:
    # fn may return a list of refs: a tuple of them is its dict key.
    return tuple(future) if isinstance(future, list) else future


class ActorPool:
    """Operate on a fixed pool of actors (``zray.util.ActorPool([a1, a2])``)."""

    def __init__(self, actors: list) -> None:
        self._idle_actors: list = list(actors)
        self._future_to_actor: dict[Any, tuple[int, Any]] = {}  # key -> (index, actor)
        self._index_to_future: dict[int, Any] = {}
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: deque[tuple[Callable, Any]] = deque()

    # ------------------------------------------------------------------ mapping

    def map(self, fn: Callable[[Any, V], Any], values: list[V]) -> Iterator[Any]:
        """Apply fn over the actors and values; an iterator of results in values' order.

        Results of earlier submissions not yet taken are dropped first."""
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass
        for v in values:
            self.submit(fn, v)
        return self._drain(self.get_next)

    def map_unordered(self, fn: Callable[[Any, V], Any], values: list[V]) -> Iterator[Any]:
        """Like map(), but results come as they finish."""
        while self.has_next():
            try:
                self.get_next_unordered(timeout=0)
            except TimeoutError:
                pass
        for v in values:
            self.submit(fn, v)
        return self._drain(self.get_next_unordered)

    def _drain(self, get: Callable[[], Any]) -> Iterator[Any]:
        while self.has_next():
            yield get()

    # ------------------------------------------------------------------ one by one

    def submit(self, fn: Callable[[Any, V], Any], value: V) -> None:
        """Schedule fn(actor, value) on an idle actor, or queue it until one is free."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether any submitted result has not been returned yet."""
        return bool(self._future_to_actor)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order, waiting up to ``timeout`` seconds.

        Raises TimeoutError on timeout (with ignore_if_timedout=True the task is dropped
        first and its actor returned to the pool), StopIteration when nothing is pending."""
        import zray

        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            refs = list(future) if isinstance(future, list) else [future]
            ready, _ = zray.wait(refs, num_returns=len(refs), timeout=timeout)
            if len(ready) < len(refs):
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MSG)
                timed_out = True
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False) -> Any:
        """Any finished result (the earliest submitted of those ready), waiting up to
        ``timeout`` seconds; after this, get_next() may not be used until the pool drains."""
        import zray

        if not self.has_next():
            raise StopIteration("No more results to get")
        keys = list(self._future_to_actor)
        for k in keys:
            if isinstance(k, tuple):
                raise TypeError("get_next_unordered() needs fn to return one ObjectRef, "
                                f"not a list ({k!r})")
        ready, _ = zray.wait(keys, num_returns=1, timeout=timeout)
        if ready:
            future = ready[0]
        elif ignore_if_timedout:
            future = keys[0]
        else:
            raise TimeoutError(_TIMEOUT_MSG)
        index, actor = self._future_to_actor.pop(future)
        del self._index_to_future[index]
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{_TIMEOUT_MSG}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def _get_result(self, future: Any, actor: Any) -> Any:
        import zray
        from zray.exceptions import ActorDiedError

        alive = True
        try:
            return zray.get(future)
        except ActorDiedError:
            alive = False  # a dead actor never goes back to the idle set
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor: Any, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())

    # ------------------------------------------------------------------ membership

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self) -> Any:
        """Remove and return an idle actor, or None if none is free."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor: Any) -> None:
        """Add an actor to the pool (ValueError if it is already in it)."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
