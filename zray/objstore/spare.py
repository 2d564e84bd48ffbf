"""Spare segments: shared memory allocated ahead of the large objects that need it.

Writing a fresh /dev/shm file costs the kernel a page allocation and zeroing per
4 KiB page, about as much as the copy itself. Ray's plasma store avoids it by
mapping one arena up front; with one file per object, zray keeps a few *spare*
files of the sizes this node has recently needed, allocated by a background
thread of the raylet while the node is idle. A writer of a large object claims
one by renaming it to the object's name (atomic: two claimants cannot both get
it), shrinks it to size and writes into pages that already exist.

Spares were never mapped by anyone, so no reader of an older object can see its
memory reused (objects stay immutable). They share the node's segment prefix,
so every cleanup that removes the node's segments removes them too.
"""

from __future__ import annotations

import os
import threading
import time

from zray.objstore import shm

SPARE_MIN = 8 << 20  # objects smaller than this gain little from a spare
TAG = "spare-"
# Spares are made only after the node's transfers and large writes have been quiet
# this long (SpareFiller.busy): allocating 100 MB of pages costs 10-20 ms of a
# core, which a transfer running at the same time would pay for on a small machine.
QUIET_S = 0.2


def size_class(n: int) -> int:
    """Round up to a size class (at least SPARE_MIN): 4 steps per power of two.

    A claimed spare is shrunk to the object's size; the finer the classes, the
    fewer of its pages that costs (a 100 MB object takes a 96 MiB spare, not 128).
    """
    c = SPARE_MIN
    while c < n:
        c <<= 1
    if c > SPARE_MIN:
        step = c // 8
        for q in (5, 6, 7):  # c/2 < n <= c: the smallest of 5/8, 6/8, 7/8, 8/8 of c that fits
            if q * step >= n:
                return q * step
    return c


def take(prefix: str, size: int, dest: str) -> bool:
    """Rename a spare of at least ``size`` bytes to ``dest`` (a path); False if none."""
    if size < SPARE_MIN:
        return False
    want = size_class(size)
    head = prefix + TAG
    try:
        names = [n for n in os.listdir(shm.SHM_DIR) if n.startswith(head)]
    except OSError:
        return False
    for n in names:
        try:
            cls = int(n[len(head):].split("-", 1)[0])
        except ValueError:
            continue
        if cls != want:
            continue
        try:
            os.rename(os.path.join(shm.SHM_DIR, n), dest)
            return True
        except OSError:
            continue  # another writer claimed it first
    return False


class SpareFiller:
    """The raylet's background thread that keeps spares of recently needed sizes."""

    def __init__(self, prefix: str, max_bytes: int, per_class: int = 2):
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.per_class = per_class
        self.wanted: dict[int, int] = {}  # size class -> last time it was needed (a counter)
        self._tick = 0
        self._busy_at = 0.0  # the last large write or transfer (monotonic)
        self._ev = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="zray-spares", daemon=True)
        self._thread.start()

    def note(self, size: int) -> None:
        """A large object of this size was just written: keep spares for the next."""
        if size < SPARE_MIN or size_class(size) > self.max_bytes:
            return
        self._tick += 1
        self.wanted[size_class(size)] = self._tick
        self._busy_at = time.monotonic()
        self._ev.set()

    def busy(self) -> None:
        """Memory bandwidth is in use now (a transfer): make no spare for QUIET_S."""
        self._busy_at = time.monotonic()

    def _wait_quiet(self) -> bool:
        """Sleep until nothing was busy for QUIET_S; False if stopped meanwhile."""
        while not self._stop:
            left = self._busy_at + QUIET_S - time.monotonic()
            if left <= 0:
                return True
            time.sleep(left)
        return False

    def stop(self) -> None:
        self._stop = True
        self._ev.set()
        self._thread.join(timeout=2)

    def _have(self) -> dict[int, int]:
        head = self.prefix + TAG
        have: dict[int, int] = {}
        try:
            for n in os.listdir(shm.SHM_DIR):
                if n.startswith(head):
                    try:
                        cls = int(n[len(head):].split("-", 1)[0])
                    except ValueError:
                        continue
                    have[cls] = have.get(cls, 0) + 1
        except OSError:
            pass
        return have

    def _run(self) -> None:
        while not self._stop:
            self._ev.wait(1.0)
            self._ev.clear()
            if self._stop:
                return
            have = self._have()
            # Most recently needed classes first, within the byte budget.
            budget = self.max_bytes
            for cls, _ in sorted(self.wanted.items(), key=lambda kv: -kv[1]):
                keep = min(self.per_class, budget // cls)
                budget -= keep * cls
                for _ in range(keep - have.get(cls, 0)):
                    if not self._wait_quiet() or not self._make(cls):
                        break

    def _make(self, cls: int) -> bool:
        tmp = shm.segment_path(f"{self.prefix}tmp-{os.urandom(6).hex()}")
        try:
            st = os.statvfs(shm.SHM_DIR)
            if st.f_bavail * st.f_frsize < 2 * cls:
                return False  # never crowd out real objects
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                # The slow part, off the critical path. tmpfs zeroes these pages only at
                # their first fault through a mapping; pwrite (the puller) never does.
                os.posix_fallocate(fd, 0, cls)
            finally:
                os.close(fd)
            os.rename(tmp, shm.segment_path(f"{self.prefix}{TAG}{cls}-{os.urandom(6).hex()}"))
            return True
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
