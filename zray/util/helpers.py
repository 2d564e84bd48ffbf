"""``ray.util.as_completed`` and ``ray.util.map_unordered`` (Ray >= 2.46, alpha API).

Both yield results as batches of refs become ready (``zray.wait`` with
``num_returns=chunk_size``); ``map_unordered`` also bounds how many tasks are in flight.
Extra keyword arguments (``timeout``, ``fetch_local``) go to each ``zray.wait`` call:
a timeout bounds one wait, not the whole iteration, as in Ray.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

DEFAULT_CHUNK_SIZE = 10
DEFAULT_BACKPRESSURE_SIZE = 100


def _check(chunk_size: int, kwargs: dict) -> None:
    if chunk_size < 1:
        raise ValueError("`chunk_size` must be >= 1")
    if "num_returns" in kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")


def _next_batch(refs: list, chunk_size: int, yield_obj_refs: bool,
                wait_kwargs: dict) -> tuple[list, list]:
    """One ``wait`` for up to chunk_size refs: (their values or refs, the refs still pending)."""
    import zray

    ready, pending = zray.wait(refs, num_returns=min(chunk_size, len(refs)), **wait_kwargs)
    return (ready if yield_obj_refs else zray.get(ready)), pending


def as_completed(refs: Sequence[Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 yield_obj_refs: bool = False, **kwargs: Any) -> Iterator[Any]:
    """Yield the results of ``refs`` (or the refs, with yield_obj_refs=True) as batches of
    ``chunk_size`` become ready; within a batch, in the order of ``refs``."""
    _check(chunk_size, kwargs)
    pending = list(refs)
    while pending:
        batch, pending = _next_batch(pending, chunk_size, yield_obj_refs, kwargs)
        yield from batch


def map_unordered(fn: Any, items: Iterable[Any], *,
                  backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                  **kwargs: Any) -> Iterator[Any]:
    """Call ``fn.remote(item)`` for each item, with at most ``backpressure_size`` tasks in
    flight (None: no bound), and yield results as they complete (no order promised)."""
    if backpressure_size is not None and backpressure_size <= 0:
        raise ValueError("backpressure_size must be positive.")
    _check(chunk_size, kwargs)
    limit = float("inf") if backpressure_size is None else backpressure_size
    pending: list = []
    for item in items:
        pending.append(fn.remote(item))
        if len(pending) >= limit:
            batch, pending = _next_batch(pending, chunk_size, yield_obj_refs, kwargs)
            yield from batch
    yield from as_completed(pending, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs,
                            **kwargs)
