"""The object store's hard limit, on the raylet: room is reserved before bytes are written.

Every writer of a segment on this node asks first: a put or a task return
(``CREATE_OBJECT`` from a core worker), a pulled copy and a restore (the raylet
itself). ``RoomKeeper.reserve`` makes room (evicts secondary copies, spills
unmapped primary copies: ``MakeRoom``, run inline) and reserves the bytes
only if they fit. A request that does not fit waits up to
``ZRAY_OBJECT_STORE_FULL_WAIT_S`` (room frees as readers drop their mappings
and owners free objects; retried on every free and every tick), then fails
with ``ObjectStoreFullError``'s message, which names the sizes. So the node's
objects (sealed and reserved) never exceed the capacity; the spares stay in the
room the objects leave, but for the one a writer in flight may claim.

Objects larger than the whole store go to a file in the node's spill directory
instead (``fallback_path``), as Ray's fallback allocation puts them in a
disk-backed mmap: the writer writes it there, readers on the node map it in
place (``PULL_DONE`` carries its ``path``), peers are served from it, and it
goes when the object is freed. A pulled copy or a restore that is larger than
the store is refused (``ObjectStoreFullError``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from zray.objstore import store as ostore

log = logging.getLogger("zray.raylet")

FULL_WAIT_S = float(os.environ.get("ZRAY_OBJECT_STORE_FULL_WAIT_S", "3.0"))


def full_message(oid: bytes, size: int, used: int, capacity: int, waited: float) -> str:
    """The text of ObjectStoreFullError (Ray's wording, with our numbers)."""
    if size > capacity:
        return (f"Failed to put object {oid.hex()} in the object store: the object is "
                f"{size} bytes, larger than the object store's capacity of {capacity} bytes. "
                "Start the node with a larger object_store_memory.")
    return (f"Failed to put object {oid.hex()} in object store because it is full. Object "
            f"size is {size} bytes; {used} of {capacity} bytes are in use by objects that "
            f"are mapped by readers or being written, after waiting {waited:.1f} s. Free "
            "references (and numpy arrays from get()) you no longer need, or start the node "
            "with a larger object_store_memory.")


DRAIN_TAG = "freed-"


@dataclass
class _Wait:
    oid: bytes
    size: int
    since: float
    done: Callable[[str], None]  # '' when reserved, else the error message
    owner: bytes = b""


class RoomKeeper:
    """Reservations and the requests waiting for room, for one raylet."""

    def __init__(self, raylet) -> None:
        self.r = raylet
        self.waiting: list[_Wait] = []
        self.by_writer: dict[bytes, set[bytes]] = {}  # writer's worker id -> reserved oids
        self.writer_of: dict[bytes, bytes] = {}
        self.drained: dict[str, int] = {}  # name of a freed, still mapped segment -> bytes
        self.fallback: dict[bytes, str] = {}  # objects larger than the store -> their file

    def _try(self, w: _Wait) -> bool:
        store = self.r.store
        if store.is_reserved(w.oid):
            return True
        if not store.fits(w.size):
            self.r.store_apply(store.handle(ostore.MakeRoom(w.size)))
        om = getattr(self.r, "om", None)
        if not store.fits(w.size) and om is not None and om.drop_served():
            # Segments kept mapped for serving peers cannot spill: let go, try again.
            self.r.store_apply(store.handle(ostore.MakeRoom(w.size)))
        if not store.fits(w.size):
            return False
        store.handle(ostore.Reserve(w.oid, w.size))
        # Spares live in the room the objects leave, but for one the writer may claim.
        room = self.r.capacity - store.occupied()
        spares = self.r.spares
        if spares.held_max > room + w.size:
            spares.trim(room + w.size)
        if w.owner:
            self.by_writer.setdefault(w.owner, set()).add(w.oid)
            self.writer_of[w.oid] = w.owner
        return True

    def reserve(self, oid: bytes, size: int, done: Callable[[str], None], *,
                owner: bytes = b"", wait: bool = True) -> None:
        """Reserve ``size`` bytes for ``oid``; ``done('')`` once reserved, else with why not.

        ``owner``: the writer's worker id (its reservations go if it dies);
        ``wait``: queue if it does not fit now (else fail at once).
        """
        cap = self.r.capacity
        w = _Wait(oid, size, time.monotonic(), done, owner)
        if size > cap:
            done(full_message(oid, size, self.r.store._used, cap, 0.0))
        elif self._try(w):
            done("")
        elif not wait:
            done(full_message(oid, size, self.r.store._used, cap, 0.0))
        else:
            self.waiting.append(w)

    def fallback_path(self, oid: bytes) -> str:
        """Where an object larger than the whole store is written: the node's spill dir."""
        path = os.path.join(self.r.store_exec.spill_dir, oid.hex() + ".big")
        self.fallback[oid] = path
        return path

    def drop_fallback(self, oid: bytes) -> bool:
        """Freed: remove the object's fallback file, if it has one."""
        path = self.fallback.pop(oid, None)
        if path is None:
            return False
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True

    def sealed(self, oid: bytes) -> None:
        """The reservation became an object (the store's seal counted it)."""
        owner = self.writer_of.pop(oid, None)
        if owner is not None:
            s = self.by_writer.get(owner)
            if s is not None:
                s.discard(oid)
                if not s:
                    del self.by_writer[owner]

    def cancel(self, oid: bytes) -> bool:
        """The writer gave up before its seal."""
        self.sealed(oid)
        return _unreserve(self.r.store, oid)

    def writer_gone(self, wid: bytes) -> None:
        """A writer died: its unsealed reservations and half-written segments go."""
        from zray.objstore import shm

        for oid in self.by_writer.pop(wid, ()):
            self.writer_of.pop(oid, None)
            if _unreserve(self.r.store, oid):
                shm.unlink(self.r.shm_prefix + oid.hex())
        self.waiting = [w for w in self.waiting if w.owner != wid]

    # ------------------------------------------------------------ freed but mapped

    def drain(self, name: str) -> None:
        """Unlink a freed or evicted segment, unless a reader maps it.

        A mapped one keeps its memory until the reader lets go: it is renamed
        aside (no new reader finds it: ``shm.open_shared`` checks the name) and
        its bytes stay counted (``store.draining``) until ``poll_drained``
        finds it unmapped. Decided under an exclusive ``flock``, as recycling is.
        """
        from zray.objstore import shm

        path = shm.segment_path(name)
        try:
            fd = shm._open_nofollow(path, os.O_RDONLY)
        except OSError:
            shm.unlink(name)
            return
        try:
            st = os.fstat(fd)
            shm.check_ours(st, path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(path)  # under the lock: nobody maps it, nobody will
                return
            except BlockingIOError:
                pass
            aside = f"{name[:-shm.OID_HEX]}{DRAIN_TAG}{name[-shm.OID_HEX:]}-{os.urandom(4).hex()}"
            os.rename(path, shm.segment_path(aside))
            self.drained[aside] = st.st_size
            self.r.store.draining += st.st_size
        except OSError as e:
            log.warning("cannot release %s: %s", name, e)
            shm.unlink(name)
        finally:
            os.close(fd)

    def poll_drained(self) -> None:
        """Unlink the drained segments that nobody maps any more; their bytes are free."""
        from zray.objstore import shm

        for aside, size in list(self.drained.items()):
            path = shm.segment_path(aside)
            try:
                fd = shm._open_nofollow(path, os.O_RDONLY)
            except OSError:
                fd = -1
            try:
                if fd >= 0:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os.unlink(path)
            except BlockingIOError:
                continue  # still mapped
            except OSError:
                pass
            finally:
                if fd >= 0:
                    os.close(fd)
            del self.drained[aside]
            self.r.store.draining -= size

    def retry(self, now: float) -> None:
        """Room may have freed: grant what fits now, in order; fail what waited too long."""
        if self.drained:
            self.poll_drained()
        if not self.waiting:
            return
        still = []
        for w in self.waiting:
            if self._try(w):
                w.done("")
            elif now - w.since >= FULL_WAIT_S:
                st = self.r.store
                log.warning("object store full: %d bytes for %s refused (%d of %d used)",
                            w.size, w.oid.hex()[:12], st._used, self.r.capacity)
                w.done(full_message(w.oid, w.size, st._used, self.r.capacity, now - w.since))
            else:
                still.append(w)
        self.waiting = still


def _unreserve(store: ostore.ObjectStoreState, oid: bytes) -> bool:
    """Drop the object's reservation; whether it had one."""
    had = store.is_reserved(oid)
    store.handle(ostore.Unreserve(oid))
    return had
