"""One shared-memory segment per object, in /dev/shm.

Layout of a segment (all integers little-endian)::

    0   magic b"ZRO1"
    4   u32 number of frames n
    8   u64 total size of the segment
    16  n x (u64 offset, u64 length)   frame table
    ... frames, each starting at a 64-byte boundary

Frame 0 is the pickle stream, the others its out-of-band buffers. A reader
maps the segment read-only and gets memoryviews into it: a numpy array in it is
read without a copy. Unlinking a segment that a reader still maps is safe: the
memory lives until the last mapping is gone.

Every mapping of a segment holds a shared ``flock`` on it (``open_shared``), and
so does its writer while it writes: the lock belongs to the open file
description, which Python's ``mmap`` keeps (a dup of the fd) until the mapping
itself is gone, i.e. until the last memoryview or numpy array into it is freed
or the process dies. The raylet recycles a freed segment's pages as a spare
(``spare.SpareFiller.recycle``) only if it gets an exclusive lock at once:
nobody maps it, so no reader ever sees an object's memory change.

Ownership (/dev/shm is world-writable): a node's segments live in a private
directory, ``/dev/shm/zray-<session8>-<node8>-<random>/``, made by the raylet
with ``mkdtemp`` (mode 0700, ours), so other users can neither plant files in it
nor learn the names in it. Segment names are relative to /dev/shm
(``<dir>/<oid hex>``). As defence in depth every segment is opened with
``O_NOFOLLOW`` and checked with ``fstat`` before we write or map it: a regular
file, our uid, no permission bits for group or others (``NotOursError``
otherwise); new ones are made with ``O_CREAT|O_EXCL`` mode 0600. Sweeps remove
only what is ours and log the rest (``remove_all``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
import tempfile

SHM_DIR = "/dev/shm"
MAGIC = b"ZRO1"
ALIGN = 64
_HDR = struct.Struct("<4sIQ")
_ENT = struct.Struct("<QQ")


log = logging.getLogger("zray.shm")


class SegmentError(Exception):
    pass


class NotOursError(SegmentError, PermissionError):
    """A file or directory in /dev/shm that another user made or may change: never used."""


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


def check_ours(st: os.stat_result, path: str) -> None:
    """Raise NotOursError unless ``st`` is a regular file of ours that only we may open."""
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise NotOursError(f"{path}: not a private file of ours (uid {st.st_uid}, mode "
                           f"{stat.filemode(st.st_mode)}): refused")


def check_dir(path: str) -> None:
    """Raise NotOursError unless ``path`` is a real directory of ours, mode 0700."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o777 != 0o700:
        raise NotOursError(f"{path}: not a private directory of ours (uid {st.st_uid}, mode "
                           f"{stat.filemode(st.st_mode)}): refused")


def make_node_dir(pattern: str) -> str:
    """Make a node's private segment directory; returns its segment prefix (``<dir>/``).

    ``pattern`` (``zray-<session8>-<node8>-``) starts the name, ``mkdtemp`` adds a
    random part and makes it 0700: nobody can have made it before us.
    """
    path = tempfile.mkdtemp(prefix=pattern, dir=SHM_DIR)
    check_dir(path)
    return os.path.basename(path) + "/"


def _check_parent(path: str) -> None:
    parent = os.path.dirname(path)
    if parent != SHM_DIR and os.path.dirname(parent) == SHM_DIR:
        check_dir(parent)


def _open_nofollow(path: str, flags: int, mode: int = 0o600) -> int:
    """os.open that never follows a symlink nor blocks on a FIFO (both: NotOursError)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotOursError(f"{path}: a symlink: refused") from e
        raise


def create_private(path: str, flags: int = os.O_RDWR) -> int:
    """Create ``path`` afresh (O_CREAT|O_EXCL, 0600) in a directory of ours; returns the fd."""
    _check_parent(path)
    return _open_nofollow(path, flags | os.O_CREAT | os.O_EXCL)


def open_shared(path: str, flags: int = os.O_RDONLY) -> int:
    """Open a segment of ours and take a shared lock on it (see the module docstring).

    FileNotFoundError if it is gone, also if it was freed (recycled or
    unlinked) between our open and our lock: the fd would be another file then.
    NotOursError if it is not a private file of ours.
    """
    _check_parent(path)
    fd = _open_nofollow(path, flags)
    try:
        st = os.fstat(fd)
        check_ours(st, path)  # before we lock, map or write anything
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while the raylet checks it
        try:
            now = os.stat(path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
            raise FileNotFoundError(errno.ENOENT, "segment freed meanwhile", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def layout_size(frames: list) -> int:
    """The size of the segment that holds ``frames``."""
    return _layout([memoryview(f).nbytes for f in frames])[1]


def _layout(sizes: list[int]) -> tuple[list[int], int]:
    pos = _HDR.size + _ENT.size * len(sizes)
    offsets = []
    for n in sizes:
        pos = (pos + ALIGN - 1) // ALIGN * ALIGN
        offsets.append(pos)
        pos += n
    return offsets, max(pos, 1)


def write_frames(fd: int, frames: list, path: str = "", allocated: bool = False) -> int:
    """Write frames into the file ``fd`` (already opened for writing) in segment layout.

    ``allocated``: the file's pages exist already (a spare): size it, map it with
    its page table filled in (MAP_POPULATE) and copy. Otherwise ``pwrite``: a
    mapping would have tmpfs zero every fresh page at its first fault before we
    overwrite it; a write of whole pages allocates them without that (2-3x faster
    here), and a full /dev/shm is an ENOSPC error rather than a SIGBUS.
    """
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else memoryview(f) for f in frames]
    sizes = [v.nbytes for v in views]
    offsets, total = _layout(sizes)
    header = _HDR.pack(MAGIC, len(views), total) + b"".join(
        _ENT.pack(off, n) for off, n in zip(offsets, sizes, strict=True))
    if allocated:
        os.ftruncate(fd, total)
        key, w = _writer_maps.get(fd, total)
        try:
            m = w.m
            m[: len(header)] = header
            for off, v in zip(offsets, views, strict=True):
                if v.nbytes >= BIG:
                    _parallel_copy(m, off, v)
                else:
                    m[off: off + v.nbytes] = v
        finally:
            _writer_maps.put_back(key, w)
        return total
    if total >= BIG:  # leave some room for everyone else
        st = os.fstatvfs(fd)
        if st.f_bavail * st.f_frsize < total + (16 << 20):
            raise SegmentError(f"no room for {total} bytes in {path or 'segment'}: "
                               f"{st.f_bavail * st.f_frsize} bytes free")
    try:
        os.ftruncate(fd, total)
        _pwrite_all(fd, header, 0)
        for off, v in zip(offsets, views, strict=True):
            if v.nbytes >= BIG:
                _parallel_pwrite(fd, off, v)
            elif v.nbytes:
                _pwrite_all(fd, v, off)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            raise SegmentError(f"no room for {total} bytes in {path or 'segment'}: {e}") from e
        raise
    return total


BIG = 64 << 20  # frames this large are copied by several threads
OID_HEX = 40  # segment names end with the object id in hex


def _threads() -> int:
    return min(4, os.cpu_count() or 1)


def _pwrite_all(fd: int, v, pos: int) -> None:
    v = memoryview(v)
    while v.nbytes:
        k = os.pwrite(fd, v, pos)
        if k <= 0:
            raise OSError(errno.EIO, "short write")
        v = v[k:]
        pos += k


def _parallel_pwrite(fd: int, off: int, v: memoryview) -> None:
    """pwrite in slices on threads (os.pwrite releases the GIL): page allocations overlap."""
    import threading

    n = v.nbytes
    k = _threads()
    step = (n // k + 4095) // 4096 * 4096
    errors: list[BaseException] = []

    def part(a: int, b: int) -> None:
        try:
            while a < b:  # at most 64 MiB per call: the kernel caps one write near 2 GiB
                c = min(b, a + (64 << 20))
                _pwrite_all(fd, v[a:c], off + a)
                a = c
        except BaseException as e:  # re-raised by the caller
            errors.append(e)

    threads = [threading.Thread(target=part, args=(a, min(n, a + step)))
               for a in range(0, n, step)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _address(v: memoryview) -> int | None:
    import ctypes
    import sys

    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(v))
    except TypeError:  # read-only buffer
        np = sys.modules.get("numpy")
        if np is None:
            return None
        return int(np.frombuffer(v, dtype=np.uint8).ctypes.data)


def _parallel_copy(m: mmap.mmap, off: int, v: memoryview) -> None:
    """memmove in slices on threads: ctypes releases the GIL, page faults overlap."""
    import ctypes
    import threading

    n = v.nbytes
    dst = ctypes.addressof(ctypes.c_char.from_buffer(m)) + off
    src = _address(v)
    if src is None:  # no address to be had: copy through Python (holds the GIL)
        m[off: off + n] = v
        return
    k = _threads()
    step = (n // k + 4095) // 4096 * 4096
    threads = []
    for i in range(k):
        a = i * step
        if a >= n:
            break
        t = threading.Thread(target=ctypes.memmove, args=(dst + a, src + a, min(step, n - a)))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()


class _Mapping:
    __slots__ = ("m", "fd", "length", "used")

    def __init__(self, m: mmap.mmap, fd: int, length: int):
        self.m, self.fd, self.length, self.used = m, fd, length, 0.0

    def close(self) -> None:
        try:
            self.m.close()
        finally:
            if self.fd >= 0:
                os.close(self.fd)


class _WriterMaps:
    """Writable mappings of the spares this process wrote into last, kept for a while.

    A put/free loop gets the same recycled segment back again and again
    (take() prefers the inodes kept here): writing it through the mapping
    made last time skips setting up and tearing down its page table, which
    for 800 MB costs as much as the copy itself. A kept mapping holds no lock
    (it is made from a file description of its own, not the writer's locked
    one), so it never keeps the raylet from recycling; this process writes
    through it only after it claimed the segment again by renaming a spare,
    and nobody maps a spare. Kept for at most KEEP_S after the last write, and
    dropped within REAP_S once the raylet unlinked the file (so the pages
    are not held after a trim or a shutdown).
    """

    KEEP_S = 2.0
    REAP_S = 0.25
    MAX = 4

    def __init__(self) -> None:
        import threading

        self._threading = threading
        self.lock = threading.Lock()
        self.maps: dict[tuple[int, int], _Mapping] = {}
        self.reaper: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def inodes(self) -> set[int]:
        with self.lock:
            return {ino for _, ino in self.maps}

    def get(self, fd: int, total: int) -> tuple[tuple[int, int] | None, _Mapping]:
        """A writable mapping of ``total`` bytes of the file ``fd`` (populated)."""
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self.lock:
            w = self.maps.pop(key, None)
        if w is not None:
            if w.length >= total:
                return key, w
            w.close()
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        try:
            own = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)  # a new, unlocked file description
        except OSError:
            return None, _Mapping(mmap.mmap(fd, total, flags=flags), -1, total)  # not kept
        try:
            return key, _Mapping(mmap.mmap(own, total, flags=flags), own, total)
        except BaseException:
            os.close(own)
            raise

    def put_back(self, key: tuple[int, int] | None, w: _Mapping) -> None:
        if key is None or w.length < SPARE_KEEP_MIN:
            w.close()
            return
        import time

        w.used = time.monotonic()
        with self.lock:
            self.maps[key] = w
            drop = sorted(self.maps.items(), key=lambda kv: kv[1].used)[: max(0, len(self.maps) - self.MAX)]
            for k, _ in drop:
                del self.maps[k]
            if self.reaper is None:
                self.reaper = self._threading.Thread(target=self._reap, name="zray-shm-maps",
                                                     daemon=True)
                self.reaper.start()
        for _, old in drop:
            old.close()

    def _reap(self) -> None:
        import time

        while True:
            time.sleep(self.REAP_S)
            now = time.monotonic()
            with self.lock:
                drop = []
                for k, w in list(self.maps.items()):
                    try:
                        gone = os.fstat(w.fd).st_nlink == 0
                    except OSError:
                        gone = True
                    if gone or now - w.used > self.KEEP_S:
                        drop.append(self.maps.pop(k))
                done = not self.maps
                if done:
                    self.reaper = None
            for w in drop:
                w.close()
            if done:
                return

    def _after_fork(self) -> None:
        # The child has the mappings but not the reaper: drop them.
        self.lock = self._threading.Lock()
        self.reaper = None
        drop = list(self.maps.values())
        self.maps.clear()
        for w in drop:
            try:
                w.close()
            except (OSError, BufferError):
                pass


SPARE_KEEP_MIN = 8 << 20  # smaller mappings are cheap to make again: not kept
_writer_maps = _WriterMaps()


def create(name: str, frames: list) -> int:
    """Create segment ``name`` holding ``frames``; returns its size in bytes."""
    try:
        return _create(name, frames)
    except SegmentError:
        # /dev/shm is full: the node's spares (memory kept for later writes) go
        # first. Nobody maps a spare, so any process may unlink them.
        if not sum(unlink(n) for _, n in spares(name[:-OID_HEX])):
            raise
    return _create(name, frames)


def _create(name: str, frames: list) -> int:
    path = segment_path(name)
    total = layout_size(frames)
    fd, allocated = open_for_write(name[:-OID_HEX], total, path, prefer=_writer_maps.inodes())
    try:
        return write_frames(fd, frames, path, allocated)
    except BaseException:
        os.close(fd)
        fd = -1
        unlink(name)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def create_file(path: str, frames: list) -> int:
    """Write ``frames`` in segment layout into a new private file at ``path`` (anywhere)."""
    fd = create_private(path)
    try:
        return write_frames(fd, frames, path, False)
    except BaseException:
        os.close(fd)
        fd = -1
        os.unlink(path)
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def open_for_write(prefix: str, total: int, path: str,
                   prefer: set[int] | frozenset = frozenset()) -> tuple[int, bool]:
    """The fd (shared-locked, checked to be ours) of a new segment at ``path``; and
    whether it is a claimed spare (its pages exist) rather than a new empty file."""
    if total >= SPARE_MIN and take(prefix, total, path, prefer=prefer):
        fd = -1
        try:
            # Locked like a reader's mapping: the raylet never recycles it mid-write.
            # Checked to be ours before a byte goes in (open_shared).
            fd = open_shared(path, os.O_RDWR)
            if os.fstat(fd).st_nlink != 1:  # another name could read it later
                raise NotOursError(f"{path}: a spare with other links: refused")
            return fd, True
        except NotOursError as e:
            log.warning("%s", e)
            if fd >= 0:
                os.close(fd)
            unlink(path[len(SHM_DIR) + 1:])  # never written; it leaves our name
        except FileNotFoundError:
            pass  # freed before it was even written: start afresh
    fd = create_private(path)
    fcntl.flock(fd, fcntl.LOCK_SH)  # empty, so no raylet recycles it before this
    return fd, False


def read_file(path: str) -> list[memoryview]:
    """Map a segment (or spilled file) read-only; return its frames as memoryviews.

    The mapping holds a shared lock on the file for as long as any of the
    frames (or a view into one) lives: see the module docstring.
    """
    fd = open_shared(path)
    try:
        size = os.fstat(fd).st_size
        if size < _HDR.size:
            raise SegmentError(f"{path}: truncated segment")
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    magic, n, total = _HDR.unpack_from(m, 0)
    if magic != MAGIC or total > size:
        raise SegmentError(f"{path}: not a zray object segment")
    mv = memoryview(m)
    out = []
    for i in range(n):
        off, ln = _ENT.unpack_from(m, _HDR.size + _ENT.size * i)
        out.append(mv[off: off + ln])
    return out


def read(name: str) -> list[memoryview]:
    return read_file(segment_path(name))


def exists(name: str) -> bool:
    return os.path.exists(segment_path(name))


def unlink(name: str) -> bool:
    """Unlink a segment of ours (another user's file of that name is left alone)."""
    path = segment_path(name)
    try:
        if os.lstat(path).st_uid != os.geteuid():
            log.warning("%s belongs to uid %d: left alone", path, os.lstat(path).st_uid)
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def size_of(name: str) -> int:
    return os.stat(segment_path(name)).st_size


def _split(prefix: str) -> tuple[str, str, str]:
    """(directory path, name prefix of the directory, prefix of the names in it)."""
    d, _, head = prefix.rpartition("/")
    if not d:
        return SHM_DIR, "", head
    return os.path.join(SHM_DIR, d), d + "/", head


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []


def list_segments(prefix: str) -> list[str]:
    """Names (relative to /dev/shm) of the files whose name starts with ``prefix``.

    A flat ``prefix`` (no ``/``) also matches node directories: their files are
    listed (``<dir>/<name>``), and the directory itself as ``<dir>/``.
    """
    dpath, dname, head = _split(prefix)
    out = []
    for n in _listdir(dpath):
        if not n.startswith(head):
            continue
        if not dname and os.path.isdir(os.path.join(dpath, n)) and \
                not os.path.islink(os.path.join(dpath, n)):
            out.append(n + "/")
            out += [f"{n}/{m}" for m in _listdir(os.path.join(dpath, n))]
        else:
            out.append(dname + n)
    return out


def remove_all(prefix: str) -> int:
    """Remove every segment of ours whose name starts with ``prefix`` (cleanup); returns files.

    Node directories that match (or that ``prefix`` names, ``<dir>/``) go with
    their files. Files and directories of other users are logged and left:
    a sweep never stops half way.
    """
    dpath, dname, head = _split(prefix)
    me = os.geteuid()
    n = 0
    if dname and not head:  # "<dir>/": the whole directory
        return _remove_dir(dpath, me)
    for name in _listdir(dpath):
        if not name.startswith(head):
            continue
        path = os.path.join(dpath, name)
        try:
            st = os.lstat(path)
            if st.st_uid != me:
                log.warning("%s belongs to uid %d, not to us: left alone", path, st.st_uid)
                continue
            if stat.S_ISDIR(st.st_mode):
                n += _remove_dir(path, me)
            else:
                os.unlink(path)
                n += 1
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("cannot remove %s: %s", path, e)
    return n


def _remove_dir(path: str, me: int) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != me:
        log.warning("%s is not a directory of ours: left alone", path)
        return 0
    n = 0
    for name in _listdir(path):
        try:
            os.unlink(os.path.join(path, name))  # in a 0700 directory of ours: all ours
            n += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", os.path.join(path, name), e)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove %s: %s", path, e)
    return n


# --- spares: claiming (the raylet makes them: spare.SpareFiller) -----------------
SPARE_MIN = 8 << 20  # objects smaller than this gain little from a spare
TAG = "spare-"


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


def fits(spare_bytes: int, size: int) -> bool:
    """May a spare of ``spare_bytes`` hold an object segment of ``size`` bytes?

    Not much larger: shrinking it frees the rest, and a larger object may need it.
    Only spares in the node's private directory are ever made or claimed; the
    writer checks the claimed file again (``open_for_write``).
    """
    return size <= spare_bytes <= max(size_class(size), size + size // 4)


def spares(prefix: str) -> list[tuple[int, str]]:
    """(bytes, name) of the node's spares, by their names."""
    dpath, dname, head = _split(prefix + TAG)
    out: list[tuple[int, str]] = []
    try:
        names = os.listdir(dpath)
    except OSError:
        return out
    for n in names:
        if n.startswith(head):
            try:
                out.append((int(n[len(head):].split("-", 1)[0]), dname + n))
            except ValueError:
                continue
    return out


def spare_name(prefix: str, nbytes: int) -> str:
    return f"{prefix}{TAG}{nbytes}-{os.urandom(6).hex()}"


def take(prefix: str, size: int, dest: str, prefer: set[int] | frozenset = frozenset()) -> bool:
    """Rename the smallest spare that fits ``size`` bytes to ``dest`` (a path); False if none.

    ``prefer``: inode numbers of spares the caller still maps (_WriterMaps),
    taken first: their page table is set up already.
    """
    if size < SPARE_MIN:
        return False
    cands = sorted(s for s in spares(prefix) if fits(s[0], size))
    if prefer and len(cands) > 1:
        def mapped(n: str) -> bool:
            try:
                return os.stat(os.path.join(SHM_DIR, n)).st_ino in prefer
            except OSError:
                return False
        cands.sort(key=lambda c: not mapped(c[1]))  # stable: smallest first otherwise
    me = os.geteuid()
    for _, n in cands:
        src = os.path.join(SHM_DIR, n)
        try:
            st = os.lstat(src)
            if st.st_uid != me or not stat.S_ISREG(st.st_mode):
                continue  # not ours (planted in a shared directory): never claimed
            os.rename(src, dest)
            return True
        except OSError:
            continue  # another writer claimed it first
    return False
