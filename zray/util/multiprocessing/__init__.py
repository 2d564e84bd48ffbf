"""``ray.util.multiprocessing``: the ``multiprocessing.Pool`` API on zray actors.

``from zray.util.multiprocessing import Pool`` replaces ``from multiprocessing import Pool``;
the pool's processes are actors, so they can span a cluster.
"""

from __future__ import annotations

from multiprocessing import JoinableQueue, TimeoutError

from zray.util.multiprocessing.pool import Pool
from zray.util.multiprocessing.results import AsyncResult, IMapIterator

__all__ = ["AsyncResult", "IMapIterator", "JoinableQueue", "Pool", "TimeoutError"]
