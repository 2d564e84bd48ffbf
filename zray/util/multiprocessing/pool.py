"""``Pool``: the ``multiprocessing.Pool`` API, each pool process a zray actor.

Work is cut into batches (``chunksize`` items), handed round-robin to the actors; each
batch is one actor call that runs the function on every item and sends back one result
per item (an exception is sent back, not raised, so a batch never loses its good results).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from zray.util.annotations import RayDeprecationWarning
from zray.util.multiprocessing.results import AsyncResult, IMapIterator, ItemError


class _PoolActor:
    """One pool process: runs the initializer once, then batches of calls."""

    def __init__(self, initializer: Callable | None = None,
                 initargs: Iterable | None = None) -> None:
        if initializer is not None:
            initializer(*(initargs or ()))

    def ping(self) -> None:
        """Answered once __init__ (the initializer) has run."""

    def run_batch(self, func: Callable, batch: list) -> list:
        results = []
        for args, kwargs in batch:
            try:
                results.append(func(*args, **kwargs))
            except Exception as e:
                results.append(ItemError(e))
        return results


def _iterable(items: Any, what: str) -> Iterable:
    if hasattr(items, "__iter__"):
        return items
    # Ray (and multiprocessing before it) took a lone argument as a one-item iterable.
    warnings.warn(f"Passing a non-iterable argument to {what} is deprecated: it is "
                  "treated as a one-item list.", RayDeprecationWarning, stacklevel=3)
    return [items]


class Pool:
    """A pool of actor processes (``multiprocessing.Pool``'s API).

    Args:
        processes: how many actors; default the cluster's CPU count (ValueError if more
            than the cluster has, or < 1).
        initializer, initargs: run ``initializer(*initargs)`` in each actor as it starts.
        maxtasksperchild: replace an actor after it has run this many batches.
        context: ignored (accepted for multiprocessing compatibility).
        ray_address: connect here if zray is not initialized ("local": start a new
            local cluster); else ``RAY_ADDRESS`` / ``ZRAY_ADDRESS``; else start a local
            cluster with ``processes`` CPUs.
        ray_remote_args: ``.options(...)`` of the actors (default ``num_cpus=0``).
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable | None = None, maxtasksperchild: int | None = None,
                 context: Any = None, ray_address: str | None = None,
                 ray_remote_args: dict | None = None) -> None:
        import zray

        if maxtasksperchild is not None and maxtasksperchild < 1:
            raise ValueError("maxtasksperchild must be a positive int or None")
        if context is not None:
            warnings.warn("Pool's 'context' argument is not supported on zray and is "
                          "ignored.", stacklevel=2)
        self._closed = False
        self._initializer = initializer
        self._initargs = tuple(initargs) if initargs is not None else None
        self._maxtasksperchild = maxtasksperchild
        self._stopping: list = []  # __ray_terminate__ refs of actors being retired
        self._rr = 0  # round-robin cursor of apply_async
        processes = self._init_zray(processes, ray_address)
        self._actor_cls = zray.remote(_PoolActor).options(
            **{"num_cpus": 0, **(ray_remote_args or {})})
        self._actors: list[list] = [[self._new_actor(), 0] for _ in range(processes)]
        zray.get([a.ping.remote() for a, _ in self._actors])

    @staticmethod
    def _init_zray(processes: int | None, ray_address: str | None) -> int:
        import zray

        if not zray.is_initialized():
            if ray_address == "local" or (ray_address is None and not (
                    os.environ.get("RAY_ADDRESS") or os.environ.get("ZRAY_ADDRESS"))):
                zray.init(num_cpus=processes)
            else:
                zray.init(address=ray_address)
        cpus = int(zray.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = cpus
        if processes <= 0:
            raise ValueError("Processes in the pool must be >0.")
        if cpus < processes:
            raise ValueError(f"Tried to start a pool with {processes} processes on an "
                             f"existing zray cluster, but there are only {cpus} CPUs in "
                             "the cluster.")
        return processes

    def _new_actor(self) -> Any:
        return self._actor_cls.remote(self._initializer, self._initargs)

    def _submit(self, actor_index: int, func: Callable, batch: list) -> Any:
        """Run one batch on one actor; retire the actor after maxtasksperchild batches."""
        entry = self._actors[actor_index]
        ref = entry[0].run_batch.remote(func, batch)
        entry[1] += 1
        if self._maxtasksperchild is not None and entry[1] >= self._maxtasksperchild:
            # __ray_terminate__ runs after the calls already queued on that actor.
            self._stopping.append(entry[0].__ray_terminate__.remote())
            entry[0], entry[1] = self._new_actor(), 0
        return ref

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _chunksize(self, n: int) -> int:
        size, extra = divmod(n, len(self._actors) * 4)
        return max(1, size + (1 if extra else 0))

    def _map_async(self, func: Callable, iterable: Iterable, chunksize: int | None,
                   star: bool, callback: Callable | None,
                   error_callback: Callable | None) -> AsyncResult:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize = self._chunksize(len(items))
        elif chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        refs: list = []
        sizes: list[int] = []
        for n, start in enumerate(range(0, len(items), chunksize)):
            batch: list[tuple[tuple, dict]] = [(tuple(a) if star else (a,), {})
                     for a in items[start:start + chunksize]]
            refs.append(self._submit(n % len(self._actors), func, batch))
            sizes.append(len(batch))
        return AsyncResult(refs, sizes, callback, error_callback)

    # ------------------------------------------------------------------ the API

    def apply(self, func: Callable, args: tuple | None = None, kwargs: dict | None = None,
              *, kwds: dict | None = None) -> Any:
        """func(*args, **kwargs) on one of the actors; its result (or its exception)."""
        return self.apply_async(func, args, kwargs, kwds=kwds).get()

    def apply_async(self, func: Callable, args: tuple | None = None,
                    kwargs: dict | None = None, callback: Callable | None = None,
                    error_callback: Callable | None = None, *,
                    kwds: dict | None = None) -> AsyncResult:
        """Like apply(), returning an AsyncResult at once."""
        self._check_running()
        self._rr = (self._rr + 1) % len(self._actors)
        batch = [(tuple(args or ()), dict(kwargs or kwds or {}))]
        ref = self._submit(self._rr, func, batch)
        return AsyncResult([ref], [1], callback, error_callback, single_result=True)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """[func(x) for x in iterable], run in batches across the actors."""
        return self._map_async(func, iterable, chunksize, False, None, None).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None,
                  error_callback: Callable | None = None) -> AsyncResult:
        """Like map(), returning an AsyncResult; callback(list) once all succeeded, else
        error_callback(first exception)."""
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """[func(*args) for args in iterable]."""
        return self._map_async(func, iterable, chunksize, True, None, None).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                      callback: Callable | None = None,
                      error_callback: Callable | None = None) -> AsyncResult:
        """Like starmap(), returning an AsyncResult."""
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def _imap(self, func: Callable, iterable: Any, chunksize: int | None,
              ordered: bool, what: str) -> IMapIterator:
        self._check_running()
        size = chunksize or 1
        if size < 1:
            raise ValueError("chunksize must be >= 1")
        items = iter(_iterable(iterable, what))

        def submit(actor_index: int, chunk: list) -> Any:
            return self._submit(actor_index, func, [((a,), {}) for a in chunk])

        return IMapIterator(submit, len(self._actors), items, size, ordered)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = 1) -> IMapIterator:
        """Results of func over iterable, in order, lazily: one batch per actor at a time."""
        return self._imap(func, iterable, chunksize, True, "imap")

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int | None = 1) -> IMapIterator:
        """Like imap(), results in the order they finish."""
        return self._imap(func, iterable, chunksize, False, "imap_unordered")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Accept no more work; the actors exit once their queued work is done."""
        if not self._closed:
            for actor, _ in self._actors:
                self._stopping.append(actor.__ray_terminate__.remote())
        self._closed = True

    def terminate(self) -> None:
        """Stop now: the actors are killed and unfinished results fail."""
        import zray

        self.close()
        for actor, _ in self._actors:
            zray.kill(actor)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the actors of a closed pool to exit (ValueError if still running)."""
        import zray

        if not self._closed:
            raise ValueError("Pool is still running")
        if self._stopping:
            _, self._stopping = zray.wait(self._stopping, num_returns=len(self._stopping),
                                          timeout=timeout, fetch_local=False)

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()
