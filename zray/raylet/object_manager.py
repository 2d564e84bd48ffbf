"""Moving objects between nodes: the raylet's transfer shell (state machine: raylet/pulls.py,
chunk encodings: raylet/chunk_codec.py).

A reader whose object lives on another node asks its own raylet (PULL_OBJECT);
that raylet pulls the bytes of the holder's shared-memory segment from the
holder's raylet over tcp and writes them into a segment of its own::

    puller raylet                                     holder raylet
    CHUNK_REQUEST {oid, off, n, ra, bw, tok}  ──────►  reads its segment (mmap, fd)
                                              ◄──────  CHUNK {oid, node, off, n, total, sens,
                                                              parts: [[len, codec], ...], bulk,
                                                              tok, via}  + a frame per part
                                              ◄──────  CHUNK {oid, node, off, missing: true}
    bulk plane (raylet/bulk.py), for a last part of codec BULK:
    "ZRB1" + tok  ─────────────────────────────────►  sendfile(len bytes of the segment)

- Chunks are ``CHUNK_BYTES`` (4 MiB) of the segment, ``BULK_CHUNK_BYTES`` (16
  MiB) between raylets of one machine that use the bulk plane; up to a window
  per pull (8 or 4) and ``MAX_INFLIGHT`` x 4 MiB in all are requested at once.
  The size is not known before the first answer, so a pull starts with a small
  speculative window (the holder answers ``n: 0`` past the end). Requests are
  idempotent: a chunk that does not come back within ``CHUNK_TIMEOUT_S`` is
  asked for again, then from the next holder; when no holder is left the raylet
  asks the object's owner where copies are (GET_OBJECT_LOCATIONS; the owner
  answers once a lost object is rebuilt).
- Each chunk is sent raw or LZ4-compressed, decided per chunk by the holder from
  a 64 KiB sample: compression is used when the puller allows it for that link
  (not on loopback, where the wire is faster than LZ4), the sample shrinks to at
  most ``MAX_RATIO`` and compresses faster than the link's measured bandwidth. A
  byte-shuffle filter (8-byte lanes, as blosc does) is tried too: it is what
  makes a numpy arange or other numeric arrays compress well.
- Authentication: tcp traffic between raylets is CURVE (zray/curve.py), keyed by
  the cluster secret. The bytes that are ever unpickled (the segment's header,
  frame table and pickle stream: everything before ``sens``) always travel over
  ZeroMQ; raw out-of-band buffer bytes after ``sens`` travel as ``bulk`` frames
  (see docs/PROTOCOL.md, "Bulk frames") or, when the puller sent a token and the
  holder has a bulk plane, over that plane (raylet/bulk.py). The puller
  checks that no bulk part starts before ``sens`` and that a bulk-plane part
  comes with a token it issued for that chunk and holder.
- A bulk fetch that fails (refused, reset, stalled ``bulk.IO_TIMEOUT_S``) makes
  the chunk be asked for again plainly, over ZeroMQ (``Pulls.chunk_failed``),
  and keeps that holder off the plane for ``BULK_BACKOFF_S`` (doubling while it
  keeps failing). A chunk counts as written only once all its bytes landed.

Where the time goes (100 MB over loopback, 2 cores, bulk plane): the holder
spends ~15 ms of CPU (sendfile: the socket references the segment's pages, the
kernel looks each one up), the puller ~40 ms: its one copy (~20 ms: the
destination is not in the cache), filling in and later dropping the copy's page
table (~6 ms), the kernel's checks on copies to user memory (~4 ms) and its
loop's Python (~8 ms, per chunk: hence 16 MiB chunks). Raw ZeroMQ, for
comparison, costs each side ~15 ms: its receiver copies into the same warm 4
MiB buffer again and again. The copy goes into a spare where it can
(objstore/spare.py: pages that exist, recycled or made while idle), through a
writable mapping; into a fresh file with splice (page allocation without the
zeroing a fault would do). Without the bulk plane (compressed chunks, holders
without one) the loop pwrites raw frames straight from ZeroMQ's buffers after
asking for the next chunks, and compressed chunks are decoded and written on a
thread pool; the holder fills in each chunk's page table before ZeroMQ sends it
(MADV_POPULATE_READ), and glibc keeps freed chunk buffers (_tune_malloc).

The pulled copy is written to ``<prefix><oid>.part``, renamed into place when
complete, sealed in the local store as a secondary copy and reported to the
owner (OBJECT_LOCATION_ADD), which records it as a second location.
"""

from __future__ import annotations

import collections
import logging
import mmap
import os
import threading
import time

from zray import config, protocol
from zray.objstore import shm
from zray.objstore import store as ostore
from zray.raylet import bulk as bulkplane
from zray.raylet import pulls as pl
from zray.raylet.chunk_codec import (
    _HDR,
    BULK,
    CODEC_BPS,
    RAW,
    SAMPLE,
    decode_part,
    encode_part,
    segment_signed_end,
)
from zray.raylet.pulls import CHUNK_BYTES, AskOwner, Done, Pull, Pulls, Request

log = logging.getLogger("zray.object_manager")


class StoreFullError(OSError):
    """No room for a pulled copy in this node's object store (raylet/store_room.py)."""


def _env_int(name: str, default: int) -> int:
    return config.env_number("ZRAY_" + name, default)


SERVE_IDLE_S = 5.0  # a served object's mapping is dropped after this long unused
# "auto": compress where the link is slower than LZ4; "always"; "never".
COMPRESSION = os.environ.get("ZRAY_TRANSFER_COMPRESSION", "auto")
DEFAULT_LINK_BPS = 125e6  # assumed for a non-loopback link until measured (1 Gbit/s)
# Raw bytes after the pickle stream go over the bulk plane (raylet/bulk.py) unless "0".
BULK_PLANE = os.environ.get("ZRAY_TRANSFER_BULK", "1") != "0"
BULK_CONNS = _env_int("TRANSFER_BULK_CONNS", 3)  # bulk connections per holder
BULK_CHUNK_BYTES = _env_int("TRANSFER_BULK_CHUNK_BYTES", 16 << 20)  # same-machine bulk pulls
BULK_WINDOW = _env_int("TRANSFER_BULK_WINDOW", 4)
BULK_MAP = os.environ.get("ZRAY_TRANSFER_BULK_MAP", "1") != "0"  # receive into spares' mappings
# After a failed bulk fetch from a node its chunks go over ZeroMQ for a while: 5 s,
# doubled at each further failure up to 5 min, reset by a fetch that works.
BULK_BACKOFF_S = 5.0
BULK_BACKOFF_MAX_S = 300.0

_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if os.uname().sysname == "Linux" else 0)


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


class _Part:
    """The .part file a pull writes into, and the writes still running into it."""

    __slots__ = ("fd", "mm", "jobs", "ended")

    def __init__(self, fd: int, mm=None):
        self.fd = fd
        self.mm = mm  # a writable mapping, if the file's pages exist (a spare)
        self.jobs = 0  # pool writes and bulk fetches in flight
        self.ended = False  # the pull is over: close when jobs reaches 0

    def release(self) -> None:
        self.jobs -= 1
        if self.ended and not self.jobs:
            self.close()

    def end(self) -> None:
        self.ended = True
        if not self.jobs:
            self.close()

    def close(self) -> None:
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a view into it still lives: the GC unmaps it
                pass
            self.mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Served:
    """A local segment being served: read-only mapping (signed parts), fd (bulk plane)."""

    __slots__ = ("mm", "total", "sens", "fd")

    def __init__(self, mm, total: int, sens: int, fd: int):
        self.mm, self.total, self.sens, self.fd = mm, total, sens, fd

    def close(self) -> None:
        # The mapping lives on while sends use it; the fd (and its shared lock) goes
        # now: the bulk plane holds duplicates of it for offers still open.
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _host(tcp_addr: str | None) -> str | None:
    """The host of a ``tcp://host:port`` address."""
    if not tcp_addr or not tcp_addr.startswith("tcp://"):
        return None
    return tcp_addr[len("tcp://"):].rsplit(":", 1)[0].strip("[]")


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
        self.files: dict[bytes, _Part] = {}  # oid -> the .part file being written
        self._full: set[bytes] = set()  # pulls that failed for want of room
        self.serving: collections.OrderedDict = collections.OrderedDict()  # oid -> _Served
        self.bw: dict[bytes, float] = {}  # holder node -> measured bytes/s (raw pulls)
        self.deferred: list = []  # PULL_OBJECTs that arrived before the peer view
        self.asks: dict[int, bytes] = {}  # rid of GET_OBJECT_LOCATIONS -> oid
        self._rid = 0
        self.copies: dict[bytes, list] = {}  # secondary copies made here -> owner
        self._executor = None
        self._served_at: dict[bytes, float] = {}
        # (oid, off, error, part, holder node of a bulk fetch or None) from pool threads
        # and bulk fetches
        self._written: collections.deque = collections.deque()
        self._wake_sent = False
        self._wake_conn: protocol.Conn | None = None
        self._wake_lock = threading.Lock()
        self.stats = collections.Counter()
        # The bulk plane (raylet/bulk.py): a listener for holders' sends, fetchers for pulls.
        self.bulk_server: bulkplane.BulkServer | None = None
        self.bulk_clients: bulkplane.BulkClients | None = None
        self._toks: dict[bytes, tuple[bytes, int, bytes, float]] = {}  # tok -> oid, off, node, at
        self._bulk_off: dict[bytes, float] = {}  # node -> no bulk fetches from it until then
        self._bulk_fails: dict[bytes, int] = {}  # node -> failed fetches in a row
        host = _host(getattr(raylet.address, "tcp", None))
        if BULK_PLANE and host:
            try:
                self.bulk_server = bulkplane.BulkServer(host)
            except OSError as e:
                log.warning("no bulk plane (chunks go over ZeroMQ): %s", e)
            self.bulk_clients = bulkplane.BulkClients(self._fetched, BULK_CONNS)

    # ------------------------------------------------------------ puller
    def pull(self, h: dict) -> None:
        """PULL_OBJECT for an object that is not in this node's store."""
        oid = h["oid"]
        if "ra" in h:
            self.waiters.setdefault(oid, []).append((h["ra"], h.get("rid")))
        if not self.r.view.ready:
            self.deferred.append(h)
            return
        self._start(h, time.monotonic())

    def view_ready(self) -> None:
        pending, self.deferred = self.deferred, []
        now = time.monotonic()
        for h in pending:
            self._start(h, now)

    def _start(self, h: dict, now: float) -> None:
        node = h.get("node")
        chunk = window = None
        if node and self.bulk_clients is not None and self._bulk_off.get(node, 0) <= now \
                and self._link_bps(node) is None:
            # Same machine, over the bulk plane: bytes go straight into the copy, so a
            # chunk's size costs no buffer; bigger chunks cost fewer messages.
            chunk, window = BULK_CHUNK_BYTES, BULK_WINDOW
        self.apply(self.pulls.handle(pl.Start(h["oid"], [node] if node else [], h.get("own"), now,
                                    chunk, window)))

    def node_dead(self, node: bytes) -> None:
        self.bw.pop(node, None)
        self._bulk_off.pop(node, None)
        self._bulk_fails.pop(node, None)
        self.apply(self.pulls.handle(pl.NodeDead(node, time.monotonic())))

    def tick(self, now: float) -> None:
        if self._written:
            self.on_written()  # in case a wake-up was lost
        self.apply(self.pulls.handle(pl.Tick(now)))
        for oid, t in list(self._served_at.items()):
            if now - t > SERVE_IDLE_S:  # let go of the memory of objects freed meanwhile
                self._served_at.pop(oid, None)
                seg = self.serving.pop(oid, None)
                if seg is not None:
                    seg.close()
        if self.bulk_server is not None:
            self.bulk_server.purge(now)
        for tok in [t for t, v in self._toks.items() if now - v[3] > bulkplane.TOKEN_TTL_S]:
            del self._toks[tok]

    def drop_served(self) -> int:
        """Let go of every cached served segment (their locks keep them from spilling)."""
        n = len(self.serving)
        while self.serving:
            _, seg = self.serving.popitem()
            seg.close()
        self._served_at.clear()
        return n

    def on_chunk(self, h: dict, payload: list) -> None:
        oid = h["oid"]
        now = time.monotonic()
        if h.get("missing"):
            self.apply(self.pulls.handle(pl.Missing(oid, h.get("node"), now)))
            return
        parts = h.get("parts") or []
        off, n, total, sens = h.get("off", -1), h.get("n", -1), h.get("total", -1), h.get("sens", -1)
        bulk = h.get("bulk", 0)
        # A last part of codec BULK has no frame: it comes over the bulk plane.
        via = 1 if parts and parts[-1][1] == BULK else 0
        if len(parts) != len(payload) + via or sum(p[0] for p in parts) != n \
                or any(c == BULK for _, c in parts[:len(parts) - 1]):
            log.warning("dropped a malformed CHUNK of %s", oid.hex())
            return
        signed_end = off + sum(p[0] for p in parts[: len(parts) - via - bulk])
        if (bulk or via) and signed_end < sens:
            log.warning("dropped a CHUNK of %s: unauthenticated bytes before offset %d",
                        oid.hex(), sens)
            return
        fetch = None
        if via:
            tok, port = h.get("tok"), h.get("via")
            mine = self._toks.pop(tok, None) if isinstance(tok, bytes) else None
            host = _host(self.r.view.tcp(h.get("node")))
            if mine is None or mine[:3] != (oid, off, h.get("node")) or host is None \
                    or not isinstance(port, int) or not 0 < port < 65536 \
                    or self.bulk_clients is None:
                log.warning("dropped a CHUNK of %s: bulk part without a valid token", oid.hex())
                return
            fetch = (host, port, tok, off + sum(p[0] for p in parts[:-1]), parts[-1][0])
        acts = self.pulls.handle(pl.ChunkArrived(oid, h.get("node"), off, n, total, sens, now))
        if not acts or not isinstance(acts[0], pl.Accept):
            self.apply(acts)
            return
        acts = acts[1:]
        self._busy()
        p = self.pulls.pulls[oid]
        p.wire += sum(len(f) for f in payload) + (fetch[4] if fetch else 0)
        p.bulk += fetch[4] if fetch else 0
        raw = all(c in (RAW, BULK) for _, c in parts)
        p.compressed = p.compressed or not raw
        try:
            part = self._file(oid, total)
        except StoreFullError as e:
            self._full.add(oid)
            self.apply(acts + self.pulls.handle(pl.Abort(oid, str(e))))
            return
        except OSError as e:
            self.apply(acts + self.pulls.handle(pl.Abort(oid, f"cannot make the copy: {e}")))
            return
        if not raw and fetch is None:
            # Decode and write on the pool (LZ4 releases the GIL), so that several
            # chunks decode at once and this loop keeps the window full.
            part.jobs += 1
            self._pool().submit(self._write, oid, part, off, parts, payload)
            self.apply(acts)
            return
        # Frames: ask for the next chunks first, then copy them straight from
        # ZeroMQ's buffers into the copy, here: a chunk's copy costs less than
        # handing it to a thread and hearing back, and the socket keeps receiving.
        # (With a bulk part these are only the small signed bytes before it.)
        self.apply(acts)
        if self.files.get(oid) is not part:
            return  # the pull ended meanwhile (aborted)
        err = _write_parts(part.fd, off, parts, payload)
        if err:
            self.apply(self.pulls.handle(pl.Abort(oid, f"cannot write the copy: {err}")))
            return
        if fetch is None:
            self.apply(self.pulls.handle(pl.ChunkWritten(oid, off)))
            return
        host, port, tok, pos, ln = fetch
        part.jobs += 1
        try:
            self.bulk_clients.fetch(host, port, tok, part.fd, pos, ln,
                                    (oid, off, part, h.get("node")), part.mm)
        except OSError as e:
            part.release()
            self.apply(self.pulls.handle(pl.ChunkFailed(oid, off, now)))
            log.warning("bulk fetch of %s not started: %s", oid.hex(), e)

    def _busy(self) -> None:
        spares = getattr(self.r, "spares", None)
        if spares is not None:
            spares.busy()

    def _write(self, oid: bytes, part: _Part, off: int, parts: list, payload: list) -> None:
        """On a pool thread: one chunk into the .part file."""
        try:
            err = _write_parts(part.fd, off, parts, payload)
        except Exception as e:  # never lose a completion
            log.exception("writing a chunk of %s failed", oid.hex())
            err = repr(e)
        self._report(oid, off, err, part, None)

    def _fetched(self, tag, err: str | None) -> None:
        """On a bulk fetch thread: a chunk's bulk part landed (or did not)."""
        oid, off, part, node = tag
        self._report(oid, off, err, part, node)

    def _report(self, oid: bytes, off: int, err: str | None, part: _Part,
                node: bytes | None) -> None:
        self._written.append((oid, off, err, part, node))
        if not self._wake_sent:  # one wake-up until the loop has drained the deque
            self._wake_sent = True
            self._wake().send({"t": protocol.CHUNKS_WRITTEN})

    def _wake(self) -> protocol.Conn:
        # Its own connection: one from the raylet's cache could be evicted meanwhile.
        c = self._wake_conn
        if c is None:
            with self._wake_lock:  # pool threads and bulk fetchers may race to make it
                c = self._wake_conn
                if c is None:
                    c = self._wake_conn = protocol.Conn(self.r.address.ipc, None)
        return c

    def on_written(self) -> None:
        """CHUNKS_WRITTEN from the pool or the bulk plane: account the writes that finished."""
        self._wake_sent = False  # before draining: a later write sends a new wake-up
        now = time.monotonic()
        while self._written:
            oid, off, err, part, node = self._written.popleft()
            part.release()
            if self.files.get(oid) is not part:
                continue  # that pull is over (a new one may have started since)
            if err and node is not None:
                # Ask for the chunk again over ZeroMQ; give the plane a rest with that node.
                log.warning("bulk fetch of %s failed (%s): chunk at %d asked again over ZeroMQ",
                            oid.hex()[:12], err, off)
                self.stats["bulk_failed"] += 1
                k = self._bulk_fails[node] = self._bulk_fails.get(node, 0) + 1
                self._bulk_off[node] = now + min(BULK_BACKOFF_S * 2 ** (k - 1), BULK_BACKOFF_MAX_S)
                self.apply(self.pulls.handle(pl.ChunkFailed(oid, off, now)))
            elif err:
                self.apply(self.pulls.handle(pl.Abort(oid, f"cannot write the copy: {err}")))
            else:
                if node is not None:
                    self._bulk_fails.pop(node, None)
                self.apply(self.pulls.handle(pl.ChunkWritten(oid, off)))

    def on_locations(self, h: dict) -> None:
        oid = self.asks.pop(h.get("rid"), None)
        if oid is None:
            return
        named = h.get("nodes") or []
        nodes = [n for n in named if n not in self.r.view.dead]
        have = shm.exists(self.r.shm_prefix + oid.hex())
        self.apply(self.pulls.handle(pl.Locations(oid, nodes, time.monotonic(), have,
                                        len(named) - len(nodes))))

    def apply(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, Request):
                addr = self.r.view.tcp(a.node)
                if addr is None:
                    self.apply(self.pulls.handle(pl.Missing(a.oid, a.node, time.monotonic())))
                    continue
                h = {"t": protocol.CHUNK_REQUEST, "oid": a.oid, "off": a.off, "n": a.n,
                     "ra": self.r.address.tcp}
                bps = self._link_bps(a.node)
                if bps is not None:
                    h["bw"] = int(bps)
                if not a.plain and self.bulk_clients is not None and \
                        self._bulk_off.get(a.node, 0) <= time.monotonic():
                    tok = os.urandom(bulkplane.TOKEN_BYTES)
                    self._toks[tok] = (a.oid, a.off, a.node, time.monotonic())
                    h["tok"] = tok
                self.r.conns.send(addr, h)
            elif isinstance(a, AskOwner):
                try:
                    dest = protocol.Address.unpack(a.owner).for_node(self.r.node_id)
                except (ConnectionError, TypeError, IndexError):
                    self.apply(self.pulls.handle(pl.Locations(a.oid, [], time.monotonic(), False)))
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
        part = self.files.pop(oid, None)
        into = "a spare's mapping" if part is not None and part.mm is not None else "a new file"
        if part is not None:
            part.end()  # closed now, or by the last write or fetch still running into it
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
                log.debug("pulled %s: %d bytes (%d on the wire, %d on the bulk plane) into %s"
                          " in %.1f ms", oid.hex()[:12], p.total, p.wire, p.bulk, into,
                          (time.monotonic() - p.started) * 1e3)
                self.stats["pulled"] += 1
                self.stats["pulled_bytes"] += p.total
                self.stats["wire_bytes"] += p.wire
                self._seal_copy(oid, p)
        if not ok and not d.local:
            shm.unlink(name + ".part")
            room = getattr(self.r, "room", None)
            if room is not None:
                room.cancel(oid)  # its reservation, if the copy had started
        if not ok:
            log.warning("pull of %s failed: %s", oid.hex(), d.msg or "copy missing")
        full = oid in self._full
        self._full.discard(oid)
        for ra, rid in self.waiters.pop(oid, []):
            self.r.conns.send(ra, protocol.pull_done(rid, ok, msg=d.msg, full=full and not ok))

    def _seal_copy(self, oid: bytes, p: Pull) -> None:
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

    def _file(self, oid: bytes, total: int) -> _Part:
        part = self.files.get(oid)
        if part is None:
            path = shm.segment_path(self.r.shm_prefix + oid.hex() + ".part")
            try:
                os.unlink(path)  # a leftover of an earlier, failed pull
            except FileNotFoundError:
                pass
            spares = getattr(self.r, "spares", None)
            if spares is not None:
                spares.note(total)
            # A spare's pages exist already (tmpfs would otherwise allocate each one
            # as the copy reaches it): bulk bytes go into a mapping of it, the
            # cheapest way in. A fresh file gets pwrite and splice only: they
            # allocate its pages without zeroing them first (a fault would), and a
            # full /dev/shm is an error, not a SIGBUS.
            room = getattr(self.r, "room", None)
            if room is not None:  # the hard limit: room first (raylet/store_room.py)
                why: list[str] = []
                room.reserve(oid, total, why.append, wait=False)
                if why[0]:
                    raise StoreFullError(why[0])
            # Claimed or created, checked to be ours and locked as shm.create does.
            try:
                fd, claimed = shm.open_for_write(self.r.shm_prefix, total, path)
            except BaseException:
                if room is not None:
                    room.cancel(oid)
                raise
            mm = None
            try:
                os.ftruncate(fd, total)
                if claimed and BULK_MAP:
                    mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
            except OSError:
                os.close(fd)
                os.unlink(path)
                if room is not None:
                    room.cancel(oid)
                raise
            part = self.files[oid] = _Part(fd, mm)
        return part

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
        total, sens = seg.total, seg.sens
        reply["total"], reply["sens"] = total, sens
        if off >= total or n <= 0:
            reply["n"], reply["parts"] = 0, []
            self.r.conns.send(ra, reply)
            return
        end = min(total, off + n)
        cut = min(max(sens - off, 0), end - off)
        tok = h.get("tok")
        if not (isinstance(tok, bytes) and len(tok) == bulkplane.TOKEN_BYTES
                and self.bulk_server is not None and not self.bulk_server.dead
                and seg.fd >= 0 and cut < end - off):
            tok = None
        mapped_end = end if tok is None else off + cut  # what goes out of the mapping
        if _MADV_POPULATE_READ and mapped_end - off >= (1 << 20):
            # Fill in the page table of what goes out of the mapping here (a few pages
            # per microsecond), not fault by fault in ZeroMQ's I/O thread as the socket
            # copies it out; chunk by chunk, so that the first goes out at once.
            try:
                a = off & ~(mmap.PAGESIZE - 1)
                seg.mm.madvise(_MADV_POPULATE_READ, a, mapped_end - a)
            except OSError:
                pass
        # The bulk plane gets its own fd (the cached one may be closed by a free meanwhile).
        bulk_fd = os.dup(seg.fd) if tok is not None else -1
        view = memoryview(seg.mm)[off:end]
        # (piece, offset in the segment, is after the pickle stream)
        pieces = [(p, o, b) for p, o, b in ((view[:cut], off, False),
                                            (view[cut:], off + cut, True)) if len(p)]
        reply["n"] = end - off
        self.stats["served_bytes"] += end - off
        bps = h.get("bw")
        if bps is not None and bps <= CODEC_BPS and end - off >= 2 * SAMPLE:
            # Compression may pay: encode on the pool's threads (LZ4 and numpy release
            # the GIL), so that several chunks compress at once and this loop goes on.
            self._pool().submit(self._encode_send, ra, reply, pieces, bps, tok, bulk_fd)
        else:
            self._encode_send(ra, reply, pieces, None, tok, bulk_fd)

    def _encode_send(self, ra: str, reply: dict, pieces: list, bps: float | None,
                     tok: bytes | None, bulk_fd: int) -> None:
        try:
            parts, frames, bulk = [], [], 0
            for piece, pos, is_bulk in pieces:
                codec, data = encode_part(piece, bps)
                if is_bulk and codec == RAW and bulk_fd >= 0:
                    # Raw bytes after the pickle stream: the puller fetches them over
                    # the bulk plane with its token (sendfile from the segment's file).
                    self.bulk_server.offer(tok, bulk_fd, pos, len(piece))
                    bulk_fd = -1  # the offer owns it now
                    parts.append([len(piece), BULK])
                    reply["tok"], reply["via"] = tok, self.bulk_server.port
                    self.stats["bulk_offered_bytes"] += len(piece)
                    continue
                parts.append([len(piece), codec])
                frames.append(data)
                bulk += is_bulk
            reply["parts"] = parts
            self.r.conns.send(ra, reply, frames, bulk=bulk)  # Conn.send is thread-safe
        except Exception:
            log.exception("cannot send a chunk of %s", reply["oid"].hex())
        finally:
            if bulk_fd >= 0:
                os.close(bulk_fd)

    def _pool(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2),
                                                thread_name_prefix="zray-encode")
        return self._executor

    def _segment(self, oid: bytes) -> _Served | None:
        seg = self.serving.get(oid)
        if seg is not None:
            self.serving.move_to_end(oid)
            self._served_at[oid] = time.monotonic()
            return seg
        room = getattr(self.r, "room", None)
        path = (room.fallback.get(oid) if room is not None else None) or \
            shm.segment_path(self.r.shm_prefix + oid.hex())  # (or its file on disk)
        try:
            fd = shm.open_shared(path)  # locked while mapped: never recycled under a send
        except OSError:
            if not self._restore(oid):
                return None
            try:
                fd = shm.open_shared(path)
            except OSError:
                return None
        try:
            size = os.fstat(fd).st_size
            if size < _HDR.size:
                os.close(fd)
                return None
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            total, sens = segment_signed_end(mm)
        except (OSError, ValueError, shm.SegmentError) as e:
            log.warning("cannot serve %s: %s", oid.hex(), e)
            os.close(fd)
            return None
        # The fd stays open (with its shared lock) while the segment is served: the
        # bulk plane sends from it.
        seg = _Served(mm, total, sens, fd)
        self.serving[oid] = seg
        self._served_at[oid] = time.monotonic()
        while len(self.serving) > 8:
            old, oseg = self.serving.popitem(last=False)  # mappings live on while sends use them
            self._served_at.pop(old, None)
            oseg.close()
        return seg

    def _restore(self, oid: bytes) -> bool:
        """A local object spilled to disk: bring it back to serve it (synchronously)."""
        store = getattr(self.r, "store", None)
        if store is None or not store.contains(oid):
            return False
        if store.is_spilled(oid):  # only if it has room now (raylet/store_room.py)
            why: list[str] = []
            self.r.room.reserve(oid, store.size_of(oid), why.append, wait=False)
            if why[0]:
                log.warning("cannot restore %s to serve it: %s", oid.hex(), why[0])
                return False
            store.handle(ostore.Unreserve(oid))  # the restore counts its own bytes
        try:
            acts = self.r.store_apply(store.handle(ostore.Get(oid)))
            return any(isinstance(a, ostore.Ready) for a in acts)
        except Exception:
            log.exception("cannot restore %s to serve it", oid.hex())
            return False

    # ------------------------------------------------------------ frees
    def freed(self, oids: list) -> None:
        for oid in oids:
            seg = self.serving.pop(oid, None)
            if seg is not None:
                seg.close()
            self._served_at.pop(oid, None)
            self.copies.pop(oid, None)

    def close(self) -> None:
        if self.bulk_server is not None:
            self.bulk_server.close()
        if self.bulk_clients is not None:
            self.bulk_clients.close()  # waits a little for fetches to stop writing
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._wake_conn is not None:
            self._wake_conn.close()
        for part in self.files.values():
            part.end()
        self.files.clear()
        for seg in self.serving.values():
            seg.close()
        self.serving.clear()


def _write_parts(fd: int, off: int, parts: list, payload: list) -> str | None:
    """Decode a chunk's parts into the file at ``off``; the error, or None."""
    try:
        pos = off
        for (rawlen, codec), frame in zip(parts, payload):
            _pwrite_all(fd, decode_part(codec, rawlen, frame), pos)
            pos += rawlen
    except (OSError, ValueError) as e:
        return str(e)
    return None


def _pwrite_all(fd: int, data, pos: int) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        k = os.pwrite(fd, mv, pos)
        if k <= 0:
            raise OSError("short write")
        mv = mv[k:]
        pos += k
