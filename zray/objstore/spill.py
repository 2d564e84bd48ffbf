"""The I/O half of the object store: carries out ``store`` actions on real files.

Segment of object ``oid``: ``/dev/shm/<shm_prefix><oid.hex()>``; its spill
file: ``<spill_dir>/<oid.hex()>`` (same bytes, so ``shm.read_file`` reads it
too). All operations are idempotent enough for retries: unlinking or deleting
what is already gone is not an error.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections import deque
from collections.abc import Callable, Iterable

from . import shm
from .store import (
    Action,
    DeleteSpilled,
    Event,
    Evict,
    Evicted,
    ObjectId,
    ObjectStoreState,
    Restore,
    Restored,
    RestoreFailed,
    Spill,
    Spilled,
    SpillFailed,
    Unlink,
)

_CHUNK = 1 << 30  # sendfile moves at most ~2 GiB per call; ask for 1 GiB


def _copy(src_fd: int, dst_fd: int) -> int:
    """Copy all of ``src_fd`` to ``dst_fd`` in the kernel where it can."""
    size = os.fstat(src_fd).st_size
    done = 0
    try:
        while done < size:
            n = os.sendfile(dst_fd, src_fd, done, min(_CHUNK, size - done))
            if n == 0:
                raise OSError(errno.EIO, "source file shrank during copy")
            done += n
        return done
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS) or done:
            raise
    # sendfile refused these files (unusual filesystem): plain read/write.
    os.lseek(src_fd, 0, os.SEEK_SET)
    while True:
        buf = os.read(src_fd, 8 << 20)
        if not buf:
            return done
        view = memoryview(buf)
        while view:
            n = os.write(dst_fd, view)
            view = view[n:]
            done += n


class SegmentInUse(OSError):
    """A spill victim is mapped by a reader or writer: spilling it would free nothing."""


class StoreExecutor:
    """Performs Spill/Restore/Evict/Unlink/DeleteSpilled for one node's store."""

    def __init__(self, shm_prefix: str, spill_dir: str) -> None:
        if not shm_prefix or shm_prefix.startswith("/") or ".." in shm_prefix:
            raise ValueError(f"bad shm prefix {shm_prefix!r}")
        self.shm_prefix = shm_prefix
        self.spill_dir = spill_dir
        # Freed segments (Unlink) are offered here first: True means it kept the
        # segment's pages as a spare (spare.SpareFiller.recycle) instead.
        self.recycle: Callable[[str], bool] | None = None
        # Then here (if set): unlinks the segment, or, if a reader still maps it,
        # keeps it (renamed aside) and its bytes counted until the reader lets go.
        self.drain: Callable[[str], None] | None = None
        # Spilled objects may hold user data: only the session's owner reads them.
        os.makedirs(spill_dir, mode=0o700, exist_ok=True)

    # ------------------------------------------------------------ names

    def segment_name(self, object_id: ObjectId) -> str:
        return self.shm_prefix + object_id.hex()

    def spill_path(self, object_id: ObjectId) -> str:
        return os.path.join(self.spill_dir, object_id.hex())

    # ------------------------------------------------------------ operations

    def spill(self, object_id: ObjectId) -> int:
        """Copy the segment to the spill dir, then unlink it; returns bytes written.

        The copy goes to a temporary name and is renamed into place, so a spill
        file that exists is always complete.
        """
        final = self.spill_path(object_id)
        tmp = final + ".part"
        src = _open_ours(shm.segment_path(self.segment_name(object_id)))
        try:
            # A segment somebody maps (a reader, a writer) is not spilled: unlinking
            # it would free no memory (the hard limit counts on it) while a second
            # copy lands on disk. Held while we copy: a reader that opens it
            # meanwhile waits, then finds it gone and asks for a restore.
            try:
                fcntl.flock(src, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise SegmentInUse(f"{object_id.hex()} is mapped: not spilled") from e
            dst = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
            try:
                n = _copy(src, dst)
            except BaseException:
                os.close(dst)
                _remove(tmp)
                raise
            os.close(dst)
            os.replace(tmp, final)
            shm.unlink(self.segment_name(object_id))
        finally:
            os.close(src)
        return n

    def restore(self, object_id: ObjectId) -> int:
        """Copy the spill file back into /dev/shm, then remove it; returns bytes.

        If the segment already exists (the object was pulled again meanwhile)
        it holds the same immutable bytes, so that counts as restored.
        """
        path = self.spill_path(object_id)
        src = _open_ours(path)
        try:
            seg = shm.segment_path(self.segment_name(object_id))
            try:
                dst = shm.create_private(seg, os.O_WRONLY)
            except FileExistsError:
                n = os.fstat(src).st_size
            else:
                try:
                    n = _copy(src, dst)
                except BaseException:
                    os.close(dst)
                    _remove(seg)  # ours (O_EXCL): never leave a partial segment
                    raise
                os.close(dst)
        finally:
            os.close(src)
        _remove(path)
        return n

    def unlink(self, object_id: ObjectId) -> bool:
        """Unlink the segment (readers that mapped it keep their mapping)."""
        return shm.unlink(self.segment_name(object_id))

    evict = unlink

    def _release(self, object_id: ObjectId) -> None:
        if self.drain is not None:
            self.drain(self.segment_name(object_id))
        else:
            self.unlink(object_id)

    def delete_spilled(self, object_id: ObjectId) -> bool:
        return _remove(self.spill_path(object_id))

    def cleanup(self) -> int:
        """Remove every segment with our prefix and everything in the spill dir."""
        n = shm.remove_all(self.shm_prefix)
        try:
            names = os.listdir(self.spill_dir)
        except FileNotFoundError:
            return n
        for name in names:
            n += _remove(os.path.join(self.spill_dir, name))
        return n

    # ------------------------------------------------------------ dispatch

    def execute(self, action: Action) -> Event | None:
        """Carry out one I/O action; return its completion event (or None).

        Actions that are not I/O (Ready, Missing, StoreFull) return None too:
        they are for the shell to answer readers or log.
        """
        oid: ObjectId = getattr(action, "object_id", b"")
        if isinstance(action, Spill):
            try:
                self.spill(oid)
            except OSError:  # disk full, segment gone: it stays in memory
                return SpillFailed(oid)
            return Spilled(oid)
        if isinstance(action, Restore):
            try:
                self.restore(oid)
            except FileNotFoundError:
                return RestoreFailed(oid, lost=True)
            except OSError:
                # e.g. /dev/shm full: the file is intact, a later get retries.
                return RestoreFailed(oid, lost=False)
            return Restored(oid)
        if isinstance(action, Evict):
            self._release(oid)
            return Evicted(oid)
        if isinstance(action, Unlink):
            if self.recycle is None or not self.recycle(self.segment_name(oid)):
                self._release(oid)
        elif isinstance(action, DeleteSpilled):
            self.delete_spilled(oid)
        return None


def run_sync(
    state: ObjectStoreState,
    executor: StoreExecutor,
    actions: Iterable[Action],
) -> list[Action]:
    """Run actions to completion inline, feeding completions back into ``state``.

    Returns the non-I/O actions (Ready, Missing, StoreFull) in order, for the
    shell to answer readers or log. A raylet may use this as is, or run
    Spill/Restore in a thread and call ``state.handle`` with the completion.
    """
    queue = deque(actions)
    out: list[Action] = []
    while queue:
        action = queue.popleft()
        done = executor.execute(action)
        if done is not None:
            queue.extend(state.handle(done))
        elif not isinstance(action, (Unlink, DeleteSpilled)):
            out.append(action)
    return out


def _open_ours(path: str) -> int:
    """Open a segment or spill file for reading, checked to be a private file of ours."""
    fd = shm._open_nofollow(path, os.O_RDONLY)
    try:
        shm.check_ours(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
