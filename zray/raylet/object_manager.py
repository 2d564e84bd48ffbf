"""Moving objects between nodes: pull state machine, chunk codec, and the raylet's transfer shell.

A reader whose object lives on another node asks its own raylet (PULL_OBJECT);
that raylet pulls the bytes of the holder's shared-memory segment from the
holder's raylet over tcp and writes them into a segment of its own::

    puller raylet                                   holder raylet
    CHUNK_REQUEST {oid, off, n, ra, z, bw}  ──────►  reads its segment (mmap)
                                            ◄──────  CHUNK {oid, node, off, n, total, sens,
                                                            parts: [[len, codec], ...], bulk}
                                                     + one frame per part
                                            ◄──────  CHUNK {oid, node, off, missing: true}

- Chunks are ``CHUNK_BYTES`` (4 MiB) of the segment; up to ``WINDOW`` per pull and
  ``MAX_INFLIGHT`` in all are requested at once. The size is not known before the
  first answer, so a pull starts with a small speculative window (the holder
  answers ``n: 0`` past the end). Requests are idempotent: a chunk that does not
  come back within ``CHUNK_TIMEOUT_S`` is asked for again, then from the next
  holder; when no holder is left the raylet asks the object's owner where copies
  are (GET_OBJECT_LOCATIONS; the owner answers once a lost object is rebuilt).
- Each chunk is sent raw or LZ4-compressed, decided per chunk by the holder from
  a 64 KiB sample: compression is used when the puller allows it for that link
  (not on loopback, where the wire is faster than LZ4), the sample shrinks to at
  most ``MAX_RATIO`` and compresses faster than the link's measured bandwidth. A
  byte-shuffle filter (8-byte lanes, as blosc does) is tried too: it is what
  makes a numpy arange or other numeric arrays compress well.
- Authentication: tcp messages carry a MAC over their header and their signed
  frames. The bytes that are ever unpickled (the segment's header, frame table
  and pickle stream: everything before ``sens``) always travel in signed frames;
  raw out-of-band buffer bytes after ``sens`` travel as ``bulk`` frames outside
  the MAC (see docs/PROTOCOL.md, "Bulk frames"). The puller checks that no
  bulk part starts before ``sens``.

Where the time goes (100 MB over loopback, 2 cores): three copies of the bytes,
one by the holder's socket, one by the puller's socket into ZeroMQ's buffer, one
from that buffer into shared memory, which this raylet's loop does itself with
pwrite as each raw chunk arrives (after asking for the next ones): cheaper than
a hand-off to a thread. Compressed chunks are decoded and written on a thread
pool. The copy goes into a spare (objstore/spare.py: pages allocated ahead,
made only while no transfer runs); the holder fills in each chunk's page table
before sending it (MADV_POPULATE_READ); glibc is told to keep freed chunk
buffers (_tune_malloc). What is left of the Python is per chunk, hence 4 MiB.

The pulled copy is written to ``<prefix><oid>.part``, renamed into place when
complete, sealed in the local store as a secondary copy and reported to the
owner (OBJECT_LOCATION_ADD), which records it as a second location.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import struct
import time
from dataclasses import dataclass, field

import lz4.block

from zray import protocol
from zray.objstore import shm, spare

log = logging.getLogger("zray.object_manager")


def _env_int(name: str, default: int) -> int:
    v = os.environ.get("ZRAY_" + name)
    return int(v) if v else default


CHUNK_BYTES = _env_int("TRANSFER_CHUNK_BYTES", 4 << 20)
WINDOW = _env_int("TRANSFER_WINDOW", 8)  # chunks in flight per pull
MAX_INFLIGHT = _env_int("TRANSFER_MAX_INFLIGHT", 24)  # chunks in flight in all
INITIAL_WINDOW = 4  # before the size is known
CHUNK_TIMEOUT_S = 10.0
MAX_CHUNK_RETRIES = 2  # per holder, then the next holder
OWNER_TIMEOUT_S = 60.0
SERVE_IDLE_S = 5.0  # a served object's mapping is dropped after this long unused
MAX_OWNER_ASKS = 3
# "auto": compress where the link is slower than LZ4; "always"; "never".
COMPRESSION = os.environ.get("ZRAY_TRANSFER_COMPRESSION", "auto")
DEFAULT_LINK_BPS = 125e6  # assumed for a non-loopback link until measured (1 Gbit/s)

RAW, LZ4, SHUF8_LZ4 = 0, 1, 2
SAMPLE = 64 << 10
MAX_RATIO = 0.8
_HDR = struct.Struct("<4sIQ")
_ENT = struct.Struct("<QQ")
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if os.uname().sysname == "Linux" else 0)


# ===================================================================== codec
SHUFFLE_BLOCK = 256 << 10  # bytes transposed together (cache-sized)

_np_module: object = False  # not looked up yet


def _numpy():
    """numpy, imported on first use: it costs a raylet ~150 ms at start."""
    global _np_module
    if _np_module is False:
        try:  # numpy transposes a block about twice as fast as bytes slicing; optional
            import numpy
            _np_module = numpy
        except ImportError:  # pragma: no cover
            _np_module = None
    return _np_module


def shuffle8(data, use_numpy: bool = True) -> bytes:
    """Byte planes of 8-byte lanes, per SHUFFLE_BLOCK block (as blosc does).

    Within each block (the last may be shorter), byte i of every whole lane goes
    to plane i; the block's tail that is not a whole lane stays as it is.
    """
    _np = _numpy() if use_numpy else None
    if _np is not None:
        a = _np.frombuffer(data, _np.uint8)
        out = _np.empty(len(a), _np.uint8)
        full = len(a) // SHUFFLE_BLOCK * SHUFFLE_BLOCK
        if full:
            out[:full] = a[:full].reshape(-1, SHUFFLE_BLOCK // 8, 8).transpose(0, 2, 1).reshape(-1)
        r8 = (len(a) - full) // 8 * 8
        if r8:
            out[full:full + r8] = a[full:full + r8].reshape(-1, 8).T.reshape(-1)
        out[full + r8:] = a[full + r8:]
        return out.data
    data = bytes(data)
    parts = []
    for b0 in range(0, len(data), SHUFFLE_BLOCK):
        blk = data[b0:b0 + SHUFFLE_BLOCK]
        m = len(blk) // 8 * 8
        parts += [blk[i:m:8] for i in range(8)]
        parts.append(blk[m:])
    return b"".join(parts)


def unshuffle8(data, use_numpy: bool = True):
    """Inverse of shuffle8."""
    _np = _numpy() if use_numpy else None
    if _np is not None:
        a = _np.frombuffer(data, _np.uint8)
        out = _np.empty(len(a), _np.uint8)
        full = len(a) // SHUFFLE_BLOCK * SHUFFLE_BLOCK
        if full:
            out[:full] = a[:full].reshape(-1, 8, SHUFFLE_BLOCK // 8).transpose(0, 2, 1).reshape(-1)
        r8 = (len(a) - full) // 8 * 8
        if r8:
            out[full:full + r8] = a[full:full + r8].reshape(8, -1).T.reshape(-1)
        out[full + r8:] = a[full + r8:]
        return out.data
    data = bytes(data)
    out = bytearray(len(data))
    for b0 in range(0, len(data), SHUFFLE_BLOCK):
        blk = data[b0:b0 + SHUFFLE_BLOCK]
        m = len(blk) // 8 * 8
        lane = m // 8
        for i in range(8):
            out[b0 + i:b0 + m:8] = blk[i * lane:(i + 1) * lane]
        out[b0 + m:b0 + len(blk)] = blk[m:]
    return out


# Compress only where the link is slower than this: shuffle + LZ4 of numeric data
# runs at about 1 GB/s per core here, plain LZ4 at about 0.5 GB/s.
CODEC_BPS = 400e6


def encode_part(view: memoryview, link_bps: float | None) -> tuple[int, object]:
    """(codec, data) for one part of a chunk; ``link_bps`` None means: never compress.

    A 64 KiB sample from the middle decides: LZ4 of the bytes or of their byte
    planes, whichever is smaller, if that is at most MAX_RATIO of the sample and
    the link is slow enough for compression to pay (CODEC_BPS).
    """
    n = len(view)
    if link_bps is None or n < 2 * SAMPLE or link_bps > CODEC_BPS:
        return RAW, view
    mid = (n // 2) & ~7
    sample = bytes(view[mid: mid + SAMPLE])
    r1 = len(lz4.block.compress(sample, store_size=False)) / SAMPLE
    r8 = len(lz4.block.compress(shuffle8(sample), store_size=False)) / SAMPLE
    codec, ratio = (SHUF8_LZ4, r8) if r8 < r1 else (LZ4, r1)
    # Raw, the link moves link_bps; compressed, min(codec speed, link_bps / ratio).
    if ratio > MAX_RATIO or min(CODEC_BPS, link_bps / ratio) < 1.1 * link_bps:
        return RAW, view
    data = lz4.block.compress(shuffle8(view) if codec == SHUF8_LZ4 else view,
                              store_size=False)
    if len(data) >= n:
        return RAW, view
    return codec, data


def decode_part(codec: int, rawlen: int, data: memoryview) -> object:
    """The raw bytes of one part; raises ValueError if they are not what was announced."""
    if codec == RAW:
        if len(data) != rawlen:
            raise ValueError(f"raw part of {len(data)} bytes, {rawlen} announced")
        return data
    if codec not in (LZ4, SHUF8_LZ4):
        raise ValueError(f"unknown codec {codec}")
    try:
        out = lz4.block.decompress(data, uncompressed_size=rawlen)
    except Exception as e:  # lz4.block.LZ4BlockError
        raise ValueError(f"bad LZ4 data: {e}") from None
    if len(out) != rawlen:
        raise ValueError("LZ4 data of the wrong length")
    return unshuffle8(out) if codec == SHUF8_LZ4 else out


def segment_signed_end(mm) -> tuple[int, int]:
    """(total size, end of the part that is ever unpickled) of a segment."""
    magic, n, total = _HDR.unpack_from(mm, 0)
    if magic != shm.MAGIC or total > len(mm):
        raise shm.SegmentError("not a zray object segment")
    end = _HDR.size + _ENT.size * n
    if n:
        off, ln = _ENT.unpack_from(mm, _HDR.size)
        end = max(end, off + ln)
    return total, min(end, total)


# ============================================================ state machine
@dataclass
class Request:
    """Ask ``node``'s raylet for bytes [off, off+n) of the object."""

    node: bytes
    oid: bytes
    off: int
    n: int


@dataclass
class AskOwner:
    """Ask the object's owner where copies are (answered by ``locations``)."""

    oid: bytes
    owner: list


@dataclass
class Done:
    """The pull ended. ``local``: a copy turned out to be on this node already."""

    oid: bytes
    ok: bool
    local: bool = False
    msg: str = ""
    pull: _Pull | None = None


@dataclass
class _Pull:
    oid: bytes
    sources: list
    owner: list | None
    started: float
    total: int = -1
    sens: int = -1
    nchunks: int = -1
    pending: dict = field(default_factory=dict)  # chunk index -> sent at
    got: set = field(default_factory=set)  # arrived (being written)
    written: set = field(default_factory=set)  # in the local copy
    next_idx: int = 0
    retries: int = 0
    asks: int = 0
    asked_at: float | None = None
    wire: int = 0
    compressed: bool = False
    source_used: bytes | None = None


class Pulls:
    """Every pull a raylet has in progress. Events in, actions out; no I/O, no clock."""

    def __init__(self, node_id: bytes, chunk: int = CHUNK_BYTES, window: int = WINDOW,
                 max_inflight: int = MAX_INFLIGHT):
        self.node_id = node_id
        self.chunk_bytes = chunk
        self.window = window
        self.max_inflight = max_inflight
        self.pulls: dict[bytes, _Pull] = {}

    def _inflight(self) -> int:
        return sum(len(p.pending) for p in self.pulls.values())

    # -- events
    def start(self, oid: bytes, sources: list, owner: list | None, now: float) -> list:
        if oid in self.pulls:
            return []
        srcs = [s for s in dict.fromkeys(sources) if s and s != self.node_id]
        p = _Pull(oid, srcs, owner, now)
        self.pulls[oid] = p
        return self._begin(p, now)

    def chunk(self, oid: bytes, node: bytes, off: int, n: int, total: int, sens: int,
              now: float) -> tuple[bool, list]:
        """A chunk arrived; (write it?, actions). Report the write with ``written``."""
        p = self.pulls.get(oid)
        if p is None or total <= 0 or not 0 <= sens <= total or off < 0 or off % self.chunk_bytes:
            return False, []
        if p.total < 0:
            p.total, p.sens = total, sens
            p.nchunks = -(-total // self.chunk_bytes)
            for i in [i for i in p.pending if i >= p.nchunks]:
                del p.pending[i]
        elif (p.total, p.sens) != (total, sens):
            return False, []
        i = off // self.chunk_bytes
        if off >= total:
            p.pending.pop(i, None)  # a speculative request past the end
            return False, self._fill_all(now)
        if n != min(self.chunk_bytes, total - off) or i in p.got:
            return False, []
        p.pending.pop(i, None)
        p.got.add(i)
        p.source_used = node
        return True, self._fill_all(now)

    def written(self, oid: bytes, off: int) -> list:
        """The chunk at ``off`` is in the local copy; the pull is done with the last one."""
        p = self.pulls.get(oid)
        if p is None:
            return []
        p.written.add(off // self.chunk_bytes)
        if len(p.written) == p.nchunks:
            return self._finish(p, True)
        return []

    def missing(self, oid: bytes, node: bytes, now: float) -> list:
        """``node`` has no copy (or cannot be reached): go on with the next holder."""
        p = self.pulls.get(oid)
        if p is None or not p.sources or p.sources[0] != node:
            return []
        p.sources.pop(0)
        return self._begin(p, now)

    def node_dead(self, node: bytes, now: float) -> list:
        acts: list = []
        for p in list(self.pulls.values()):
            if p.owner and p.owner[0] == node and (p.asked_at is not None or not p.sources):
                acts += self._finish(p, False, "the object's owner died with its node")
            elif p.sources and p.sources[0] == node:
                acts += self.missing(p.oid, node, now)
            else:
                p.sources = [s for s in p.sources if s != node]
        return acts

    def locations(self, oid: bytes, nodes: list, now: float, have_local: bool) -> list:
        """The owner said where copies are (empty: none left, the object is lost)."""
        p = self.pulls.get(oid)
        if p is None or p.asked_at is None:
            return []
        p.asked_at = None
        if self.node_id in nodes and have_local:
            return self._finish(p, True, local=True)
        p.sources = [s for s in dict.fromkeys(nodes) if s and s != self.node_id]
        if not p.sources:
            return self._finish(p, False, "the owner knows no copy of the object")
        return self._begin(p, now)

    def abort(self, oid: bytes, msg: str) -> list:
        p = self.pulls.get(oid)
        return self._finish(p, False, msg) if p is not None else []

    def tick(self, now: float) -> list:
        acts: list = []
        for p in list(self.pulls.values()):
            if p.asked_at is not None:
                if now - p.asked_at > OWNER_TIMEOUT_S:
                    acts += self._finish(p, False, "the owner did not answer")
                continue
            stale = [i for i, t in p.pending.items() if now - t > CHUNK_TIMEOUT_S]
            if not stale:
                continue
            p.retries += 1
            if p.retries > MAX_CHUNK_RETRIES:
                acts += self.missing(p.oid, p.sources[0], now)
                continue
            for i in stale:
                p.pending[i] = now
                acts.append(Request(p.sources[0], p.oid, i * self.chunk_bytes, self.chunk_bytes))
        return acts

    # -- decisions
    def _begin(self, p: _Pull, now: float) -> list:
        """(Re)start from the current holder: everything not received yet."""
        p.pending.clear()
        if not p.sources:
            return self._ask_owner(p, now)
        p.retries = 0
        p.next_idx = 0
        return self._fill(p, now, self.max_inflight - self._inflight())

    def _fill(self, p: _Pull, now: float, budget: int) -> list:
        acts: list = []
        limit = p.nchunks if p.nchunks >= 0 else INITIAL_WINDOW
        while budget > 0 and len(p.pending) < self.window and p.next_idx < limit:
            i = p.next_idx
            p.next_idx += 1
            if i in p.got or i in p.pending:
                continue
            p.pending[i] = now
            budget -= 1
            acts.append(Request(p.sources[0], p.oid, i * self.chunk_bytes, self.chunk_bytes))
        return acts

    def _fill_all(self, now: float) -> list:
        acts: list = []
        budget = self.max_inflight - self._inflight()
        for p in self.pulls.values():
            if budget <= 0:
                break
            if p.sources and p.asked_at is None:
                new = self._fill(p, now, budget)
                budget -= len(new)
                acts += new
        return acts

    def _ask_owner(self, p: _Pull, now: float) -> list:
        if p.owner is None or p.asks >= MAX_OWNER_ASKS:
            return self._finish(p, False, "no reachable node holds a copy")
        p.asks += 1
        p.asked_at = now
        return [AskOwner(p.oid, p.owner)]

    def _finish(self, p: _Pull, ok: bool, msg: str = "", local: bool = False) -> list:
        self.pulls.pop(p.oid, None)
        return [Done(p.oid, ok, local, msg, p)]


# ===================================================================== shell
_malloc_tuned = False


def _tune_malloc() -> None:
    """Keep freed chunk buffers in the process's heap (glibc).

    ZeroMQ's I/O thread allocates a buffer for each incoming chunk and the loop
    frees it once written. glibc's default gives freed multi-MiB blocks back to
    the kernel at once (trim) or maps each apart (mmap threshold), so the next
    chunk faults and zeroes fresh pages: a third of the I/O thread's time in a
    pull. Fixed thresholds keep up to 128 MiB of free heap per arena for reuse.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)  # chunks (<= 8 MiB) come from the heap
    mallopt(m_trim_threshold, 128 << 20)  # a window of chunks stays mapped between pulls


class ObjectManager:
    """The raylet's transfer shell: serves chunks of local objects, runs pulls.

    It lives on the raylet's thread; ``raylet`` gives it the node's id, address,
    connections, shm prefix and peer view.
    """

    def __init__(self, raylet):
        self.r = raylet
        _tune_malloc()
        self.pulls = Pulls(raylet.node_id)
        self.waiters: dict[bytes, list] = {}  # oid -> [(ra, rid)] of PULL_OBJECT
        self.files: dict[bytes, int] = {}  # oid -> fd of the .part file being written
        self.serving: collections.OrderedDict = collections.OrderedDict()  # oid -> seg
        self.bw: dict[bytes, float] = {}  # holder node -> measured bytes/s (raw pulls)
        self.deferred: list = []  # PULL_OBJECTs that arrived before the peer view
        self.asks: dict[int, bytes] = {}  # rid of GET_OBJECT_LOCATIONS -> oid
        self._rid = 0
        self.copies: dict[bytes, list] = {}  # secondary copies made here -> owner
        self._executor = None
        self._served_at: dict[bytes, float] = {}
        self.writing: dict[bytes, int] = {}  # oid -> chunk writes in flight on the pool
        self._closing: dict[bytes, int] = {}  # fds to close once their writes are done
        self._written: collections.deque = collections.deque()  # (oid, off, error) from pool
        self._wake_sent = False
        self._wake_conn: protocol.Conn | None = None
        self.stats = collections.Counter()

    # ------------------------------------------------------------ puller
    def pull(self, h: dict) -> None:
        """PULL_OBJECT for an object that is not in this node's store."""
        oid = h["oid"]
        if "ra" in h:
            self.waiters.setdefault(oid, []).append((h["ra"], h.get("rid")))
        if not self.r.view.ready:
            self.deferred.append(h)
            return
        node = h.get("node")
        self.apply(self.pulls.start(oid, [node] if node else [], h.get("own"), time.monotonic()))

    def view_ready(self) -> None:
        pending, self.deferred = self.deferred, []
        now = time.monotonic()
        for h in pending:
            node = h.get("node")
            self.apply(self.pulls.start(h["oid"], [node] if node else [], h.get("own"), now))

    def node_dead(self, node: bytes) -> None:
        self.bw.pop(node, None)
        self.apply(self.pulls.node_dead(node, time.monotonic()))

    def tick(self, now: float) -> None:
        if self._written:
            self.on_written()  # in case a wake-up was lost
        self.apply(self.pulls.tick(now))
        for oid, t in list(self._served_at.items()):
            if now - t > SERVE_IDLE_S:  # let go of the memory of objects freed meanwhile
                self._served_at.pop(oid, None)
                self.serving.pop(oid, None)

    def on_chunk(self, h: dict, payload: list) -> None:
        oid = h["oid"]
        now = time.monotonic()
        if h.get("missing"):
            self.apply(self.pulls.missing(oid, h.get("node"), now))
            return
        parts = h.get("parts") or []
        off, n, total, sens = h.get("off", -1), h.get("n", -1), h.get("total", -1), h.get("sens", -1)
        bulk = h.get("bulk", 0)
        if len(parts) != len(payload) or sum(p[0] for p in parts) != n:
            log.warning("dropped a malformed CHUNK of %s", oid.hex())
            return
        signed_end = off + sum(p[0] for p in parts[: len(parts) - bulk])
        if bulk and signed_end < sens:
            log.warning("dropped a CHUNK of %s: unauthenticated bytes before offset %d",
                        oid.hex(), sens)
            return
        accept, acts = self.pulls.chunk(oid, h.get("node"), off, n, total, sens, now)
        if not accept:
            self.apply(acts)
            return
        self._busy()
        p = self.pulls.pulls[oid]
        p.wire += sum(len(f) for f in payload)
        raw = all(c == RAW for _, c in parts)
        p.compressed = p.compressed or not raw
        try:
            fd = self._file(oid, total)
        except OSError as e:
            self.apply(acts + self.pulls.abort(oid, f"cannot make the copy: {e}"))
            return
        if not raw:
            # Decode and write on the pool (LZ4 releases the GIL), so that several
            # chunks decode at once and this loop keeps the window full.
            self.writing[oid] = self.writing.get(oid, 0) + 1
            self._pool().submit(self._write, oid, fd, off, parts, payload)
            self.apply(acts)
            return
        # Raw bytes: ask for the next chunks first, then copy the frames straight
        # from ZeroMQ's buffers into the copy, here: a chunk's copy costs less than
        # handing it to a thread and hearing back, and the socket keeps receiving.
        self.apply(acts)
        if self.files.get(oid) != fd:
            return  # the pull ended meanwhile (aborted)
        err = None
        try:
            pos = off
            for (rawlen, _), frame in zip(parts, payload):
                if len(frame) != rawlen:
                    raise ValueError(f"raw part of {len(frame)} bytes, {rawlen} announced")
                _pwrite_all(fd, frame, pos)
                pos += rawlen
        except (OSError, ValueError) as e:
            err = str(e)
        if err:
            self.apply(self.pulls.abort(oid, f"cannot write the copy: {err}"))
        else:
            self.apply(self.pulls.written(oid, off))

    def _busy(self) -> None:
        spares = getattr(self.r, "spares", None)
        if spares is not None:
            spares.busy()

    def _write(self, oid: bytes, fd: int, off: int, parts: list, payload: list) -> None:
        """On a pool thread: one chunk into the .part file."""
        err = None
        try:
            pos = off
            for (rawlen, codec), frame in zip(parts, payload):
                _pwrite_all(fd, decode_part(codec, rawlen, frame), pos)
                pos += rawlen
        except (OSError, ValueError) as e:
            err = str(e)
        except Exception as e:  # never lose a completion
            log.exception("writing a chunk of %s failed", oid.hex())
            err = repr(e)
        self._written.append((oid, off, err))
        if not self._wake_sent:  # one wake-up until the loop has drained the deque
            self._wake_sent = True
            self._wake().send({"t": protocol.CHUNKS_WRITTEN})

    def _wake(self) -> protocol.Conn:
        # Its own connection: one from the raylet's cache could be evicted meanwhile.
        c = self._wake_conn
        if c is None:
            c = self._wake_conn = protocol.Conn(self.r.address.ipc, None)
        return c

    def on_written(self) -> None:
        """CHUNKS_WRITTEN from the pool: account the writes that finished."""
        self._wake_sent = False  # before draining: a later write sends a new wake-up
        while self._written:
            oid, off, err = self._written.popleft()
            left = self.writing.get(oid, 1) - 1
            if left:
                self.writing[oid] = left
            else:
                self.writing.pop(oid, None)
                fd = self._closing.pop(oid, None)
                if fd is not None:
                    os.close(fd)
            if err:
                self.apply(self.pulls.abort(oid, f"cannot write the copy: {err}"))
            else:
                self.apply(self.pulls.written(oid, off))

    def on_locations(self, h: dict) -> None:
        oid = self.asks.pop(h.get("rid"), None)
        if oid is None:
            return
        nodes = [n for n in h.get("nodes") or [] if n not in self.r.view.dead]
        have = shm.exists(self.r.shm_prefix + oid.hex())
        self.apply(self.pulls.locations(oid, nodes, time.monotonic(), have))

    def apply(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, Request):
                addr = self.r.view.tcp(a.node)
                if addr is None:
                    self.apply(self.pulls.missing(a.oid, a.node, time.monotonic()))
                    continue
                h = {"t": protocol.CHUNK_REQUEST, "oid": a.oid, "off": a.off, "n": a.n,
                     "ra": self.r.address.tcp}
                bps = self._link_bps(a.node)
                if bps is not None:
                    h["bw"] = int(bps)
                self.r.conns.send(addr, h)
            elif isinstance(a, AskOwner):
                try:
                    dest = protocol.Address.unpack(a.owner).for_node(self.r.node_id)
                except (ConnectionError, TypeError, IndexError):
                    self.apply(self.pulls.locations(a.oid, [], time.monotonic(), False))
                    continue
                self._rid += 1
                self.asks[self._rid] = a.oid
                ra = self.r.address.ipc if dest.startswith("ipc://") else self.r.address.tcp
                self.r.conns.send(dest, {"t": protocol.GET_OBJECT_LOCATIONS, "oid": a.oid,
                                         "ra": ra, "rid": self._rid})
            elif isinstance(a, Done):
                self._done(a)

    def _done(self, d: Done) -> None:
        oid = d.oid
        name = self.r.shm_prefix + oid.hex()
        fd = self.files.pop(oid, None)
        if fd is not None:
            if self.writing.get(oid):
                self._closing[oid] = fd  # a write of an aborted pull is still running
            else:
                os.close(fd)
        ok = d.ok
        if ok and d.local:
            ok = shm.exists(name)
        elif ok:
            p = d.pull
            try:
                if shm.exists(name):
                    shm.unlink(name + ".part")  # a copy arrived meanwhile
                else:
                    os.rename(shm.segment_path(name + ".part"), shm.segment_path(name))
            except OSError as e:
                log.warning("cannot install the copy of %s: %s", oid.hex(), e)
                ok = False
            if ok:
                log.debug("pulled %s: %d bytes (%d on the wire) in %.1f ms", oid.hex()[:12],
                          p.total, p.wire, (time.monotonic() - p.started) * 1e3)
                self.stats["pulled"] += 1
                self.stats["pulled_bytes"] += p.total
                self.stats["wire_bytes"] += p.wire
                self._seal_copy(oid, p)
        if not ok and not d.local:
            shm.unlink(name + ".part")
        if not ok:
            log.warning("pull of %s failed: %s", oid.hex(), d.msg or "copy missing")
        for ra, rid in self.waiters.pop(oid, []):
            self.r.conns.send(ra, {"t": protocol.PULL_DONE, "rid": rid, "ok": ok,
                                   "msg": d.msg})

    def _seal_copy(self, oid: bytes, p: _Pull) -> None:
        # Store accounting goes through the raylet's ordinary seal path.
        self.r.handle({"t": protocol.OBJECT_SEALED, "oid": oid, "size": p.total,
                       "secondary": True}, [])
        if p.owner is not None:
            self.copies[oid] = p.owner
            try:
                dest = protocol.Address.unpack(p.owner).for_node(self.r.node_id)
            except (ConnectionError, TypeError, IndexError):
                dest = None
            if dest:
                self.r.conns.send(dest, {"t": protocol.OBJECT_LOCATION_ADD, "oid": oid,
                                         "node": self.r.node_id,
                                         "raylet": self.r.address.pack()})
        # Measure the link on pulls that were not compressed (compression hides it).
        dt = time.monotonic() - p.started
        if p.source_used and not p.compressed and p.total >= (8 << 20) and dt > 0:
            old = self.bw.get(p.source_used)
            bps = p.total / dt
            self.bw[p.source_used] = bps if old is None else 0.5 * old + 0.5 * bps

    def _link_bps(self, node: bytes) -> float | None:
        """The holder may compress if this is not None (our estimate of the link's speed)."""
        if COMPRESSION == "never":
            return None
        if COMPRESSION == "always":
            return 1.0
        ip = self.r.view.ip.get(node, "")
        if ip.startswith("127.") or ip == self.r.node_ip and ip:
            return None  # same machine: memory speed, LZ4 would only slow it down
        return self.bw.get(node, DEFAULT_LINK_BPS)

    def _file(self, oid: bytes, total: int) -> int:
        fd = self.files.get(oid)
        if fd is None:
            path = shm.segment_path(self.r.shm_prefix + oid.hex() + ".part")
            try:
                os.unlink(path)  # a leftover of an earlier, failed pull
            except FileNotFoundError:
                pass
            spares = getattr(self.r, "spares", None)
            if spares is not None:
                spares.note(total)
            # A spare's pages exist already (tmpfs would otherwise allocate each one
            # as the copy reaches it). Chunks go in with pwrite, not through a
            # mapping: as fast as memcpy into a populated mapping here, and it
            # never zeroes a page first (a fault on a fresh page would).
            claimed = spare.take(self.r.shm_prefix, total, path)
            fd = os.open(path, os.O_RDWR if claimed else os.O_CREAT | os.O_EXCL | os.O_RDWR,
                         0o600)
            try:
                os.ftruncate(fd, total)
            except OSError:
                os.close(fd)
                os.unlink(path)
                raise
            self.files[oid] = fd
        return fd

    # ------------------------------------------------------------ holder
    def serve(self, h: dict) -> None:
        """CHUNK_REQUEST: send bytes of a local segment (idempotent, stateless)."""
        oid, ra = h["oid"], h["ra"]
        off, n = int(h.get("off", 0)), min(int(h.get("n", CHUNK_BYTES)), 64 << 20)
        reply = {"t": protocol.CHUNK, "oid": oid, "off": off, "node": self.r.node_id}
        self._busy()
        seg = self._segment(oid)
        if seg is None:
            reply["missing"] = True
            self.r.conns.send(ra, reply)
            return
        mm, total, sens = seg
        reply["total"], reply["sens"] = total, sens
        if off >= total or n <= 0:
            reply["n"], reply["parts"] = 0, []
            self.r.conns.send(ra, reply)
            return
        end = min(total, off + n)
        if _MADV_POPULATE_READ and end - off >= (1 << 20):
            # Fill in the chunk's page table here (a few pages per microsecond),
            # not fault by fault in ZeroMQ's I/O thread as the socket copies it out;
            # chunk by chunk, so that the first goes out at once.
            try:
                a = off & ~(mmap.PAGESIZE - 1)
                mm.madvise(_MADV_POPULATE_READ, a, end - a)
            except OSError:
                pass
        view = memoryview(mm)[off:end]
        cut = min(max(sens - off, 0), end - off)
        pieces = [(p, b) for p, b in ((view[:cut], False), (view[cut:], True)) if len(p)]
        reply["n"] = end - off
        self.stats["served_bytes"] += end - off
        bps = h.get("bw")
        if bps is not None and bps <= CODEC_BPS and end - off >= 2 * SAMPLE:
            # Compression may pay: encode on the pool's threads (LZ4 and numpy release
            # the GIL), so that several chunks compress at once and this loop goes on.
            self._pool().submit(self._encode_send, ra, reply, pieces, bps)
        else:
            self._encode_send(ra, reply, pieces, None)

    def _encode_send(self, ra: str, reply: dict, pieces: list, bps: float | None) -> None:
        try:
            parts, frames, bulk = [], [], 0
            for piece, is_bulk in pieces:
                codec, data = encode_part(piece, bps)
                parts.append([len(piece), codec])
                frames.append(data)
                bulk += is_bulk
            reply["parts"] = parts
            self.r.conns.send(ra, reply, frames, bulk=bulk)  # Conn.send is thread-safe
        except Exception:
            log.exception("cannot send a chunk of %s", reply["oid"].hex())

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2),
                                                thread_name_prefix="zray-encode")
        return self._executor

    def _segment(self, oid: bytes):
        seg = self.serving.get(oid)
        if seg is not None:
            self.serving.move_to_end(oid)
            self._served_at[oid] = time.monotonic()
            return seg
        path = shm.segment_path(self.r.shm_prefix + oid.hex())
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            if not self._restore(oid):
                return None
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                return None
        try:
            size = os.fstat(fd).st_size
            if size < _HDR.size:
                return None
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            total, sens = segment_signed_end(mm)
        except (OSError, ValueError, shm.SegmentError) as e:
            log.warning("cannot serve %s: %s", oid.hex(), e)
            return None
        finally:
            os.close(fd)
        seg = (mm, total, sens)
        self.serving[oid] = seg
        self._served_at[oid] = time.monotonic()
        while len(self.serving) > 8:
            old, _ = self.serving.popitem(last=False)  # mappings live on while sends use them
            self._served_at.pop(old, None)
        return seg

    def _restore(self, oid: bytes) -> bool:
        """A local object spilled to disk: bring it back to serve it (synchronously)."""
        store = getattr(self.r, "store", None)
        if store is None or not store.contains(oid):
            return False
        try:
            return any(type(a).__name__ == "Ready" for a in self.r.store_apply(store.get(oid)))
        except Exception:
            log.exception("cannot restore %s to serve it", oid.hex())
            return False

    # ------------------------------------------------------------ frees
    def freed(self, oids: list) -> None:
        for oid in oids:
            self.serving.pop(oid, None)
            self._served_at.pop(oid, None)
            self.copies.pop(oid, None)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._wake_conn is not None:
            self._wake_conn.close()
        for fd in [*self.files.values(), *self._closing.values()]:
            try:
                os.close(fd)
            except OSError:
                pass
        self.files.clear()
        self._closing.clear()
        self.serving.clear()


def _pwrite_all(fd: int, data, pos: int) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        k = os.pwrite(fd, mv, pos)
        if k <= 0:
            raise OSError("short write")
        mv = mv[k:]
        pos += k
