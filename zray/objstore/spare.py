"""Spare segments: shared memory whose pages exist before the large objects that need them.

Writing a fresh /dev/shm file costs the kernel a page allocation and zeroing per
4 KiB page, more than the copy itself. Ray's plasma store avoids it by mapping
one arena up front and reusing its pages; with one file per object, zray keeps a
few *spare* files instead. A writer of a large object claims one by renaming it
to the object's name (atomic: two claimants cannot both get it), shrinks it to
size and writes into pages that already exist.

Spares come from two places, both in the raylet:

* **Recycling** (``SpareFiller.recycle``): when an object is freed, its segment
  becomes a spare instead of being unlinked, if nobody maps it. Every mapping of
  a segment (and its writer) holds a shared ``flock`` for as long as the mapping
  lives (``shm.open_shared``); the raylet renames the segment into a spare only
  if it gets an exclusive lock at once, so no reader of an object ever sees its
  memory reused (objects stay immutable). A put/free loop then writes into the
  same warm pages every time, as plasma does; the writer even keeps its mapping
  of them for a while (``shm._WriterMaps``), and ``take`` hands it those first.
* **Filling** (``SpareFiller``'s thread): spares of the sizes the node recently
  needed, written with zeros while the node is idle, for the first object of a
  size and for objects that are kept (nothing to recycle). Written, not merely
  ``fallocate``d: tmpfs would zero a fallocated page at the writer's first fault,
  which is the cost a spare is meant to take off the writer.

A spare is named ``<prefix>spare-<bytes>-<random>``, ``<bytes>`` its size. Spares
hold at most ``max_bytes`` in all (and never more than the store's free room),
so objects plus spares stay within the store's capacity. They share the node's
segment prefix: every cleanup that removes the node's segments removes them too.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable

from zray.objstore import shm

# Claiming a spare is part of writing a segment (shm.py); these live there.
from zray.objstore.shm import (  # noqa: F401  (this module's names too)
    SPARE_MIN,
    TAG,
    fits,
    size_class,
    spare_name,
    spares,
    take,
)

# Spares are made only after the node's transfers and large writes have been quiet
# this long (SpareFiller.busy): zeroing 100 MB of pages costs 30-50 ms of a core,
# which a transfer or a put running at the same time would pay for on a small machine.
QUIET_S = 0.2
# Spares nobody claimed for this long are unlinked, and sizes not needed for this
# long are no longer made: an idle node gives its memory back.
IDLE_S = 30.0
_ZEROS = memoryview(bytes(4 << 20))


class SpareFiller:
    """The raylet's spares: recycles freed segments, fills in missing ones in the background.

    Spares hold at most ``max_bytes`` in all, and the filler makes spares only
    while they hold less than ``fill_bytes`` (making them costs CPU, recycling
    does not). ``room()``: bytes the store's capacity leaves free (capacity
    minus objects); spares never take more, so objects plus spares stay within
    the capacity.
    """

    def __init__(self, prefix: str, max_bytes: int, per_class: int = 2,
                 room: Callable[[], int] | None = None, keep_recycled: int = 4,
                 fill_bytes: int | None = None, idle_s: float = IDLE_S):
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.fill_bytes = max_bytes if fill_bytes is None else min(fill_bytes, max_bytes)
        self.per_class = per_class  # made by the filler, per size class
        self.keep_recycled = keep_recycled  # recycled, per size class
        self.room = room or (lambda: max_bytes)
        self.idle_s = idle_s
        self.wanted: dict[int, float] = {}  # size class -> when it was last needed (monotonic)
        self.stats = {"recycled": 0, "recycled_bytes": 0, "made": 0, "made_bytes": 0,
                      "dropped": 0}
        # At least the bytes the spares hold (writers' claims only lower it): a
        # cheap test for "may the spares exceed the room?" (``held_max``). Every
        # change of the spares by the raylet and its count happen under the lock.
        self._held = 0
        self._held_lock = threading.RLock()
        self._busy_at = 0.0  # the last large write, free or transfer (monotonic)
        self._ev = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="zray-spares", daemon=True)
        self._thread.start()

    def note(self, size: int) -> None:
        """A large object of this size was just written: keep spares for the next."""
        if size < SPARE_MIN or size_class(size) > self.fill_bytes:
            return
        now = time.monotonic()
        self.wanted[size_class(size)] = now
        self._busy_at = now
        self._ev.set()

    @property
    def held_max(self) -> int:
        """An upper bound of the bytes the spares hold, without listing /dev/shm."""
        return self._held

    def _list(self) -> list[tuple[int, str]]:
        with self._held_lock:
            have = spares(self.prefix)
            self._held = sum(b for b, _ in have)
        return have

    def _add(self, n: int) -> None:
        with self._held_lock:
            self._held += n

    def busy(self) -> None:
        """Memory bandwidth is in use now (a transfer): make no spare for QUIET_S."""
        self._busy_at = time.monotonic()

    def recycle(self, name: str) -> bool:
        """Make the freed segment ``name`` a spare if nobody maps it and it fits the budget.

        False: the caller unlinks it as before (a reader still maps it, it is
        small, or spares hold enough already).
        """
        path = shm.segment_path(name)
        try:
            size = os.stat(path).st_size
            if size < SPARE_MIN or size > self.max_bytes:
                return False
            fd = shm._open_nofollow(path, os.O_RDONLY)
        except OSError:
            return False
        self._held_lock.acquire()
        try:
            st = os.fstat(fd)
            shm.check_ours(st, path)  # NotOursError is an OSError: not recycled
            size = st.st_size
            have = self._list()
            held = sum(b for b, _ in have)
            if held + size > min(self.max_bytes, self.room()):
                return False
            cls = size_class(size)
            if sum(size_class(b) == cls for b, _ in have) >= self.keep_recycled:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # mapped (or being written): its bytes must stay as they are
            # Renamed while we hold the lock: a reader that opened it before us
            # locks after us and then finds the object's name gone (shm.open_shared).
            os.rename(path, shm.segment_path(spare_name(self.prefix, size)))
            self._add(size)
        except OSError:
            return False
        finally:
            self._held_lock.release()
            os.close(fd)
        self.busy()
        self.stats["recycled"] += 1
        self.stats["recycled_bytes"] += size
        return True

    def trim(self, room: int) -> int:
        """Unlink spares, largest first, until they hold at most ``room`` bytes; returns bytes freed."""
        with self._held_lock:
            have = sorted(self._list(), reverse=True)
            held = sum(b for b, _ in have)
            freed = 0
            for b, n in have:
                if held - freed <= max(room, 0):
                    break
                if shm.unlink(n):
                    freed += b
                    self.stats["dropped"] += 1
            self._add(-freed)
        return freed

    def expire(self) -> int:
        """Unlink spares that nobody claimed for ``idle_s`` (a rename sets a file's ctime)."""
        limit = time.time() - self.idle_s
        n = 0
        with self._held_lock:
            for b, name in self._list():
                try:
                    if os.stat(shm.segment_path(name)).st_ctime < limit and shm.unlink(name):
                        n += 1
                        self.stats["dropped"] += 1
                        self._add(-b)
                except OSError:
                    pass
        return n

    def _wait_quiet(self) -> bool:
        """Sleep until nothing was busy for QUIET_S; False if stopped meanwhile."""
        while not self._stop:
            left = self._busy_at + QUIET_S - time.monotonic()
            if left <= 0:
                return True
            time.sleep(left)
        return False

    def _quiet(self) -> bool:
        return not self._stop and time.monotonic() - self._busy_at >= QUIET_S

    def stop(self) -> None:
        self._stop = True
        self._ev.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop:
            self._ev.wait(1.0)
            self._ev.clear()
            if self._stop:
                return
            self.expire()
            now = time.monotonic()
            for cls in [c for c, t in self.wanted.items() if now - t > self.idle_s]:
                del self.wanted[cls]
            # Most recently needed classes first, each up to per_class, within the budget.
            for cls, _ in sorted(self.wanted.items(), key=lambda kv: -kv[1]):
                while self._wait_quiet():
                    have = self._list()  # afresh: writers claim, frees recycle
                    held = sum(b for b, _ in have)
                    if (sum(size_class(b) == cls for b, _ in have) >= self.per_class
                            or held + cls > min(self.fill_bytes, self.room())):
                        break
                    if not self._make(cls):
                        break

    def _make(self, cls: int) -> bool:
        tmp = shm.segment_path(f"{self.prefix}tmp-{os.urandom(6).hex()}")
        try:
            st = os.statvfs(shm.SHM_DIR)
            if st.f_bavail * st.f_frsize < 2 * cls:
                return False  # never crowd out real objects
            fd = shm.create_private(tmp)
            try:
                os.ftruncate(fd, cls)
                # The slow part, off the critical path: allocate and zero every page.
                # Given up as soon as a write or transfer starts (it needs the cores).
                for off in range(0, cls, len(_ZEROS)):
                    if not self._quiet():
                        raise InterruptedError("busy")
                    n = min(len(_ZEROS), cls - off)
                    if os.pwrite(fd, _ZEROS[:n], off) != n:
                        raise OSError("short write")
            finally:
                os.close(fd)
            with self._held_lock:
                os.rename(tmp, shm.segment_path(spare_name(self.prefix, cls)))
                self._add(cls)
            self.stats["made"] += 1
            self.stats["made_bytes"] += cls
            return True
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
