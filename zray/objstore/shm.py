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
"""

from __future__ import annotations

import mmap
import os
import struct

SHM_DIR = "/dev/shm"
MAGIC = b"ZRO1"
ALIGN = 64
_HDR = struct.Struct("<4sIQ")
_ENT = struct.Struct("<QQ")


class SegmentError(Exception):
    pass


def segment_path(name: str) -> str:
    return os.path.join(SHM_DIR, name)


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

    ``allocated``: the file's pages exist already (a spare): just size it.
    """
    views = [memoryview(f).cast("B") if not isinstance(f, bytes) else memoryview(f) for f in frames]
    sizes = [v.nbytes for v in views]
    offsets, total = _layout(sizes)
    if allocated:
        os.ftruncate(fd, total)
    elif total < BIG:
        try:
            os.posix_fallocate(fd, 0, total)
        except OSError as e:
            raise SegmentError(f"no room for {total} bytes in {path or 'segment'}: {e}") from e
    else:
        # fallocate zeroes every page before we overwrite it: for big objects
        # check the room, then let the copy itself allocate the pages.
        st = os.fstatvfs(fd)
        if st.f_bavail * st.f_frsize < total + (16 << 20):
            raise SegmentError(f"no room for {total} bytes in {path or 'segment'}: "
                               f"{st.f_bavail * st.f_frsize} bytes free")
        os.ftruncate(fd, total)
    # Pages that exist already are mapped in one go rather than faulted one by one.
    flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if allocated else 0)
    with mmap.mmap(fd, total, flags=flags) as m:
        _HDR.pack_into(m, 0, MAGIC, len(views), total)
        for i, (off, n) in enumerate(zip(offsets, sizes, strict=True)):
            _ENT.pack_into(m, _HDR.size + _ENT.size * i, off, n)
        for off, v in zip(offsets, views, strict=True):
            if v.nbytes >= BIG:
                _parallel_copy(m, off, v)
            else:
                m[off: off + v.nbytes] = v
    return total


BIG = 64 << 20  # frames this large are copied by several threads
OID_HEX = 40  # segment names end with the object id in hex


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
    k = min(4, os.cpu_count() or 1)
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


def create(name: str, frames: list) -> int:
    """Create segment ``name`` holding ``frames``; returns its size in bytes."""
    path = segment_path(name)
    from zray.objstore import spare

    size = sum(memoryview(f).nbytes for f in frames)
    allocated = size >= spare.SPARE_MIN and spare.take(name[:-OID_HEX], size + 4096, path)
    fd = os.open(path, os.O_RDWR if allocated else os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
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


def read_file(path: str) -> list[memoryview]:
    """Map a segment (or spilled file) read-only; return its frames as memoryviews."""
    fd = os.open(path, os.O_RDONLY)
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
    try:
        os.unlink(segment_path(name))
        return True
    except FileNotFoundError:
        return False


def size_of(name: str) -> int:
    return os.stat(segment_path(name)).st_size


def list_segments(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    except FileNotFoundError:
        return []


def remove_all(prefix: str) -> int:
    """Unlink every segment whose name starts with ``prefix`` (cleanup)."""
    n = 0
    for name in list_segments(prefix):
        n += unlink(name)
    return n
