"""The bulk data plane: raw object bytes between raylets over plain TCP.

Over ZeroMQ a pulled chunk is copied three times (into the holder's socket, out
of the puller's socket into a ZeroMQ buffer, from that buffer into shared
memory). Here the holder sends straight from the segment's file (``sendfile``:
the socket takes references to the page-cache pages, no copy on loopback) and
the puller receives straight into its copy, so the bytes are copied once, by
the puller's kernel: into a writable mapping of the copy when its pages exist
already (a spare: ``recv_into`` with MSG_WAITALL, page table filled in first with
MADV_POPULATE_WRITE), else into the file with ``splice`` through a pipe (which
allocates a fresh file's pages without zeroing them first). All of it runs on
threads that release the GIL; neither raylet's event loop waits on a socket.

Control stays on ZeroMQ and stays authenticated (docs/PROTOCOL.md, "Bulk plane")::

    puller loop     CHUNK_REQUEST {.., tok}  ──ZeroMQ──►  holder loop: offer(tok, fd, off, n)
                    ◄──ZeroMQ──  CHUNK {.., parts: [.., [n, BULK]], tok, via: port}
    puller thread   "ZRB1" + tok  ──TCP──►  holder thread: token offered? sendfile n bytes
                    ◄──TCP──  n raw bytes (the connection then serves the next token)

- Nothing received here is ever unpickled. The holder reads 20 bytes (magic and
  a token) and sends only what an authenticated request asked for under that
  token: 16 random bytes the puller chose and sent in a MAC'd CHUNK_REQUEST,
  good once and for ``TOKEN_TTL_S``. A connection presenting anything else is
  logged and closed. The puller writes what it receives only into the byte range
  the MAC'd CHUNK header announced, which lies after the segment's pickle stream
  (raw out-of-band buffer bytes, as with ``bulk`` frames).
- Every wait has a timeout (``IO_TIMEOUT_S`` without progress, as kernel socket
  timeouts, so splice/sendfile/recv give up too). A failed fetch is reported as
  an error; the object manager asks for that chunk again over ZeroMQ.
- A puller keeps up to ``conns`` connections per holder, one thread each, reused
  while busy and closed after ``IDLE_S`` idle (holders close theirs later). A
  thread sends the next job's token before it receives the current job's bytes,
  so the holder goes from one job to the next without waiting for a round trip.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import logging
import mmap
import os
import socket
import struct
import threading
import time

from zray import config
from zray.util.logs import RateLimited

log = logging.getLogger("zray.bulk")

MAGIC = b"ZRB1"
TOKEN_BYTES = 16
# A connection that makes no progress this long is broken (ZRAY_TRANSFER_BULK_TIMEOUT_S).
IO_TIMEOUT_S = config.env_number("ZRAY_TRANSFER_BULK_TIMEOUT_S", 10.0)
CONNECT_TIMEOUT_S = min(5.0, IO_TIMEOUT_S)
TOKEN_TTL_S = 30.0  # an offer nobody fetched is dropped after this
IDLE_S = 20.0  # a puller's idle connection is closed after this (a holder's after 3x)
MAX_SERVED_CONNS = 64  # connections a holder serves at once
MAX_FETCH_THREADS = 32  # a puller's connections (threads) to all holders at once
PIPE_BYTES = 1 << 20
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23 if os.uname().sysname == "Linux" else 0)
_F_SETPIPE_SZ = 1031
_SEND_MAX = 1 << 30


def _timeouts(s: socket.socket, rcv: float, snd: float) -> None:
    """Blocking socket whose recv/send (and splice/sendfile) give up after these many seconds."""
    s.setblocking(True)
    for opt, t in ((socket.SO_RCVTIMEO, rcv), (socket.SO_SNDTIMEO, snd)):
        s.setsockopt(socket.SOL_SOCKET, opt, struct.pack("ll", int(t), int(t % 1 * 1e6)))


def _recv_exact(s: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or None at a clean end of stream before the first byte."""
    buf = bytearray()
    while len(buf) < n:
        b = s.recv(n - len(buf))
        if not b:
            if not buf:
                return None
            raise EOFError("connection closed mid-message")
        buf += b
    return bytes(buf)


# ===================================================================== holder
class BulkServer:
    """A holder's listener: serves offered byte ranges of its segments to token holders."""

    def __init__(self, host: str):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._offers: dict[bytes, tuple[int, int, int, float]] = {}  # tok -> fd, off, n, at
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stop = False
        self.dead = False  # the listener failed: offer nothing more
        self.refused = 0
        # Anyone who can reach the port can cause these lines: rate-limited.
        self._refusals = RateLimited(log, "bulk connection refusals")
        self.served_bytes = 0
        self._thread = threading.Thread(target=self._accept_loop, name="zray-bulk-accept",
                                        daemon=True)
        self._thread.start()

    def offer(self, tok: bytes, fd: int, off: int, n: int) -> None:
        """Bytes [off, off+n) of the file ``fd`` go to whoever presents ``tok`` (once).

        The server owns ``fd`` from now on (closes it once the offer is taken or expires).
        """
        with self._lock:
            old = self._offers.pop(tok, None)
            self._offers[tok] = (fd, off, n, time.monotonic())
        if old is not None:
            os.close(old[0])

    def purge(self, now: float) -> None:
        """Drop offers older than TOKEN_TTL_S (their fetcher never came)."""
        self._refusals.tick()
        with self._lock:
            old = [t for t, o in self._offers.items() if now - o[3] > TOKEN_TTL_S]
            fds = [self._offers.pop(t)[0] for t in old]
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.sock.close()
        self._thread.join(timeout=2)
        with self._lock:
            conns, self._conns = list(self._conns), set()
            fds = [o[0] for o in self._offers.values()]
            self._offers.clear()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)  # its thread sees the end and closes it
            except OSError:
                pass
        for fd in fds:
            os.close(fd)

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                c, peer = self.sock.accept()
            except OSError as e:
                if self._stop:
                    return
                if e.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSOCK):
                    self.dead = True  # the listener is gone: chunks go over ZeroMQ
                    log.warning("the bulk listener failed (%s): chunks go over ZeroMQ", e)
                    return
                time.sleep(0.05)  # e.g. EMFILE: do not spin
                continue
            with self._lock:
                full = len(self._conns) >= MAX_SERVED_CONNS
                if not full:
                    self._conns.add(c)
            if full:
                self._refusals.warning("refused a bulk connection from %s: %d open already",
                                       peer, MAX_SERVED_CONNS)
                c.close()
                continue
            threading.Thread(target=self._serve, args=(c, peer), name="zray-bulk-serve",
                             daemon=True).start()

    def _serve(self, c: socket.socket, peer) -> None:
        where = f"{peer[0]}:{peer[1]}"
        try:
            # A fetcher sends its first token at once; later ones may follow a pause.
            _timeouts(c, IO_TIMEOUT_S, IO_TIMEOUT_S)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = True
            while not self._stop:
                hello = _recv_exact(c, len(MAGIC) + TOKEN_BYTES)
                if hello is None:
                    return  # the puller closed an idle connection
                tok = hello[len(MAGIC):]
                with self._lock:
                    o = self._offers.pop(tok, None) if hello[:len(MAGIC)] == MAGIC else None
                if o is None:
                    self.refused += 1
                    self._refusals.warning("refused a bulk connection from %s: %s", where,
                                           "unknown token" if hello[:len(MAGIC)] == MAGIC else "bad magic")
                    return
                fd, off, n, _ = o
                try:
                    self._send(c, fd, off, n)
                finally:
                    os.close(fd)
                if first:
                    first = False
                    _timeouts(c, 3 * IDLE_S, IO_TIMEOUT_S)
        except (OSError, EOFError) as e:
            if not self._stop:
                self._refusals.info("bulk connection from %s ended: %s", where,
                                    e or type(e).__name__)
        finally:
            with self._lock:
                self._conns.discard(c)
            c.close()

    def _send(self, c: socket.socket, fd: int, off: int, n: int) -> None:
        out = c.fileno()
        try:
            while n:
                k = os.sendfile(out, fd, off, min(n, _SEND_MAX))
                if k == 0:
                    raise EOFError("the segment is shorter than offered")
                off += k
                n -= k
                self.served_bytes += k
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS) or n == 0:
                raise
            mv = memoryview(os.pread(fd, n, off))  # sendfile unsupported here: plain send
            c.sendall(mv)
            self.served_bytes += n


# ===================================================================== puller
class _Fetch:
    __slots__ = ("tok", "fd", "off", "n", "tag", "mm")

    def __init__(self, tok: bytes, fd: int, off: int, n: int, tag, mm):
        self.tok, self.fd, self.off, self.n, self.tag, self.mm = tok, fd, off, n, tag, mm


class _Peer:
    def __init__(self, addr: tuple[str, int], lock: threading.Lock):
        self.addr = addr
        self.jobs: collections.deque[_Fetch] = collections.deque()
        self.cond = threading.Condition(lock)
        self.threads = 0
        self.idle = 0


class BulkClients:
    """A puller's connections to holders; ``done(tag, error)`` is called on a pool thread."""

    def __init__(self, done, conns: int = 3):
        self.done = done
        self.conns = conns
        self._peers: dict[tuple[str, int], _Peer] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._socks: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.received_bytes = 0

    def fetch(self, host: str, port: int, tok: bytes, fd: int, off: int, n: int, tag,
              mm=None) -> None:
        """Present ``tok`` to the holder at host:port and write the ``n`` bytes it sends into
        the file ``fd`` at ``off``: through ``mm`` if given (a writable shared mapping of
        the file whose pages exist already: a spare), else with splice. ``fd`` and ``mm``
        must stay open until ``done`` is called."""
        with self._lock:
            if self._stop:
                raise OSError("the bulk plane is closed")
            peer = self._peers.get((host, port))
            if peer is None:
                if len(self._threads) >= MAX_FETCH_THREADS:
                    raise OSError(f"{MAX_FETCH_THREADS} bulk connections open already")
                peer = self._peers[(host, port)] = _Peer((host, port), self._lock)
            peer.jobs.append(_Fetch(tok, fd, off, n, tag, mm))
            if peer.idle >= len(peer.jobs):
                peer.cond.notify()
            elif peer.threads < self.conns and len(self._threads) < MAX_FETCH_THREADS:
                peer.threads += 1
                t = threading.Thread(target=self._run, args=(peer,), name="zray-bulk-fetch",
                                     daemon=True)
                self._threads.add(t)
                t.start()
            # else: a busy thread takes it when it is done with its job

    def close(self) -> None:
        with self._lock:
            self._stop = True
            socks = list(self._socks)
            jobs = [j for p in self._peers.values() for j in p.jobs]
            for p in self._peers.values():
                p.jobs.clear()
                p.cond.notify_all()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for j in jobs:
            self.done(j.tag, "the bulk plane closed")
        deadline = time.monotonic() + 2  # the fetches in progress stop writing
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def _next(self, peer: _Peer, wait: bool = True) -> _Fetch | None:
        """The peer's next job; None when idle for IDLE_S (the thread then ends) or, with
        ``wait`` False, at once if there is none."""
        with self._lock:
            if not wait:
                return peer.jobs.popleft() if peer.jobs and not self._stop else None
            deadline = time.monotonic() + IDLE_S
            while not peer.jobs and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                peer.idle += 1
                peer.cond.wait(left)
                peer.idle -= 1
            if peer.jobs and not self._stop:
                return peer.jobs.popleft()
            peer.threads -= 1
            if not peer.threads and not peer.jobs:
                self._peers.pop(peer.addr, None)
            return None

    def _run(self, peer: _Peer) -> None:
        """One connection's thread. Tokens go out one job ahead of the bytes being
        received, so the holder starts on the next job as soon as it is done with the
        last: the connection streams without a round trip between jobs."""
        conn: socket.socket | None = None
        pipe = _pipe()
        sent: collections.deque[_Fetch] = collections.deque()  # token out, bytes not in
        try:
            while True:
                job = sent[0] if sent else self._next(peer)
                if job is None:
                    return
                try:
                    if conn is None:
                        conn = self._connect(peer.addr)
                    if not sent:
                        conn.sendall(MAGIC + job.tok)
                        sent.append(job)
                    ahead = self._next(peer, wait=False)
                    if ahead is not None:
                        sent.append(ahead)
                        conn.sendall(MAGIC + ahead.tok)
                    pipe = self._receive(conn, job, pipe)
                    sent.popleft()
                    self.received_bytes += job.n
                except Exception as e:  # every job whose token went out fails with it
                    if isinstance(e, (OSError, EOFError)):
                        err = f"bulk fetch from {peer.addr[0]}:{peer.addr[1]}: " \
                              f"{e or type(e).__name__}"
                    else:
                        log.exception("bulk fetch failed")
                        err = repr(e)
                    if conn is not None:
                        self._drop(conn)
                        conn = None
                    if not sent or sent[0] is not job:
                        sent.appendleft(job)
                    while sent:
                        self.done(sent.popleft().tag, err)
                    continue
                self.done(job.tag, None)
        finally:
            if conn is not None:
                self._drop(conn)
            if pipe is not None:
                os.close(pipe[0])
                os.close(pipe[1])
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _connect(self, addr: tuple[str, int]) -> socket.socket:
        s = socket.create_connection(addr, timeout=CONNECT_TIMEOUT_S)
        try:
            _timeouts(s, IO_TIMEOUT_S, IO_TIMEOUT_S)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            s.close()
            raise
        with self._lock:
            if self._stop:
                s.close()
                raise OSError("the bulk plane is closed")
            self._socks.add(s)
        return s

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        s.close()

    def _receive(self, s: socket.socket, job: _Fetch, pipe):
        """The job's bytes from ``s`` into its file; returns the pipe to use next time."""
        off, left = job.off, job.n
        if job.mm is not None:
            # Straight into the mapping: one copy, no page-cache write path per page
            # (nor the file's lock, which writers of one file would queue on).
            if _MADV_POPULATE_WRITE:
                try:  # the page table in one go, not fault by fault inside recv
                    a = off & ~(mmap.PAGESIZE - 1)
                    job.mm.madvise(_MADV_POPULATE_WRITE, a, off + left - a)
                except OSError:
                    pass
            with memoryview(job.mm) as whole, whole[off:off + left] as dest:
                got = 0
                while got < left:
                    # MSG_WAITALL: one call (GIL released) for the whole range, unless
                    # the timeout or the end of the stream cuts it short.
                    k = s.recv_into(dest[got:], left - got, socket.MSG_WAITALL)
                    if k == 0:
                        raise EOFError("the holder closed the connection")
                    got += k
            return pipe
        if pipe is not None:
            r, w = pipe
            try:
                while left:
                    k = os.splice(s.fileno(), w, min(PIPE_BYTES, left))
                    if k == 0:
                        raise EOFError("the holder closed the connection")
                    while k:
                        m = os.splice(r, job.fd, k, offset_dst=off)
                        if m == 0:
                            raise OSError(errno.EIO, "short write")
                        k -= m
                        off += m
                        left -= m
                return pipe
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS) or left != job.n:
                    raise
                os.close(r)
                os.close(w)
                pipe = None  # no splice from this socket: receive and write
        buf = memoryview(bytearray(min(PIPE_BYTES, left)))
        while left:
            k = s.recv_into(buf, min(len(buf), left))
            if k == 0:
                raise EOFError("the holder closed the connection")
            pos = 0
            while pos < k:
                pos += os.pwrite(job.fd, buf[pos:k], off + pos)
            off += k
            left -= k
        return None


def _pipe() -> tuple[int, int] | None:
    if not hasattr(os, "splice"):
        return None
    try:
        r, w = os.pipe()
    except OSError:
        return None  # receive and write instead
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe still works (more calls per chunk)
    return r, w
