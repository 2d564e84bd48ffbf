"""Default size of a node's object store, chosen the way Ray chooses it."""

from __future__ import annotations

import shutil

import psutil

from .shm import SHM_DIR

# Ray's defaults: 30% of RAM, at most 200 GB.
DEFAULT_PROPORTION = 0.3
MAX_DEFAULT_BYTES = 200 * 10**9
# Keep this much of /dev/shm free for everyone else (and for our own restores
# and in-flight copies, which briefly exceed the accounted capacity).
SHM_MARGIN_FRACTION = 0.05
SHM_MARGIN_MIN = 64 << 20


def default_capacity(total_memory: int | None = None, shm_free: int | None = None,
                     shm_total: int | None = None) -> int:
    """Bytes for the store: 30% of RAM, capped by free /dev/shm minus a margin.

    The arguments override what is measured (for tests). Never negative; 0
    means /dev/shm has no usable room, which the caller should report.
    """
    if total_memory is None:
        total_memory = psutil.virtual_memory().total
    if shm_free is None or shm_total is None:
        try:
            usage = shutil.disk_usage(SHM_DIR)
        except OSError:  # no /dev/shm (not Linux): RAM is the only bound
            usage = None
        if usage is not None:
            shm_free = usage.free if shm_free is None else shm_free
            shm_total = usage.total if shm_total is None else shm_total
    cap = min(int(total_memory * DEFAULT_PROPORTION), MAX_DEFAULT_BYTES)
    if shm_free is not None:
        margin = max(SHM_MARGIN_MIN, int((shm_total or shm_free) * SHM_MARGIN_FRACTION))
        cap = min(cap, shm_free - margin)
    return max(cap, 0)
