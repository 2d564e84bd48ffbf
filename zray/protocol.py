"""The wire protocol: every message type, and the only code that builds frames.

A message is a ZeroMQ multipart message sent by a DEALER to a peer's inbound
ROUTER (all traffic is one-way; a reply is a new message to the requester's
inbound address)::

    [header, payload_0, ..., payload_n]

- ``header``: msgpack map; key ``t`` is the message type (an int below), the
  other keys are that type's fields (see docs/PROTOCOL.md).
- payload frames: pickled values and their out-of-band buffers.

ipc sockets live in the owner-only session directory. tcp sockets are CURVE
(zray/curve.py): only holders of the cluster secret finish the handshake, and
every frame is authenticated and encrypted under per-connection keys.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

import msgpack
import zmq

from zray import curve
from zray.util.logs import RateLimited

log = logging.getLogger("zray.protocol")

MAX_HEADER = 64 << 20  # a header larger than this is malformed


# A message's header (a msgpack map; "t" is its type) and its payload frames (bytes,
# memoryviews or zmq.Frames): the types the state machines' event methods take.
Header = dict[str, Any]
Frames = list[Any]


class ProtocolError(Exception):
    """A malformed, unauthenticated or unknown message (it is dropped and logged)."""


# --- message types ---------------------------------------------------------
# Registration and membership
REGISTER_CLIENT = 1  # worker/driver -> raylet
REGISTER_CLIENT_REPLY = 2
REGISTER_NODE = 3  # raylet -> gcs
REGISTER_NODE_REPLY = 4
HEARTBEAT = 5  # raylet -> gcs (carries available resources)
UNREGISTER_NODE = 6
# Leases (raylet scheduler)
REQUEST_LEASE = 10
LEASE_GRANTED = 11
LEASE_SPILLBACK = 12
LEASE_FAILED = 13
RETURN_LEASE = 14
CANCEL_LEASE_REQUEST = 15
WORKER_BLOCKED = 16
WORKER_UNBLOCKED = 17
WORKER_DIED = 18  # raylet -> lease holder
WORKER_EXITING = 19  # worker -> raylet (max_calls reached, clean exit)
# Tasks (core worker to core worker, no raylet on the path)
PUSH_TASK = 20
TASK_REPLY = 21
GENERATOR_ITEM = 22
CANCEL_TASK = 23
TASKS_RETURNED = 24  # worker -> owner: queued tasks it will not start (pipelining)
REMOTE_CANCEL = 25  # borrower -> owner: zray.cancel() on a ref it borrowed
# Objects
GET_OBJECT = 30  # borrower -> owner: send me the value / location when ready
OBJECT_VALUE = 31
ADD_BORROWER = 32
REMOVE_BORROWER = 33
OBJECT_SEALED = 34  # core worker -> raylet: a new object in this node's store
FREE_OBJECTS = 35  # owner -> raylet
PULL_OBJECT = 36  # core worker -> raylet: make a local copy
PULL_DONE = 37
CHUNK_REQUEST = 38  # raylet -> raylet
CHUNK = 39
CHUNKS_WRITTEN = 52  # raylet's writer threads -> the raylet itself (ipc): copies landed
CREATE_OBJECT = 53  # core worker -> raylet (request): reserve room before writing a segment
CREATE_OBJECT_REPLY = 54
# GCS
KV_PUT = 40
KV_GET = 41
KV_REPLY = 42
GET_NODES = 43
NODES_REPLY = 44
SUBSCRIBE = 45
PUBLISH = 46
OBJECT_LOCATION_ADD = 47
GET_OBJECT_LOCATIONS = 49
OBJECT_LOCATIONS_REPLY = 50
# Logs
LOG_LINES = 60
# Control
SHUTDOWN = 70
PING = 71
PONG = 72
# Actors (docs/PROTOCOL.md, "Actors"): creation and placement through the GCS,
# calls straight from caller to the actor's worker as PUSH_TASK with an "aid".
REGISTER_ACTOR = 80  # owner -> gcs (request): spec + constructor args
REGISTER_ACTOR_REPLY = 81
CREATE_ACTOR = 82  # gcs -> leased worker: run the constructor
ACTOR_CREATED = 83  # actor worker -> gcs: constructor finished (ok or error)
SUBSCRIBE_ACTOR = 84  # caller -> gcs: send me this actor's state now and on change
ACTOR_STATE = 85  # gcs -> subscriber
GET_ACTOR = 86  # any -> gcs (request): by name, or list named actors
ACTOR_INFO = 87
KILL_ACTOR = 88  # any -> gcs (request): zray.kill
ACTOR_EXITING = 89  # actor worker -> gcs (request): intended exit (__ray_terminate__)
ACTOR_ACK = 90  # gcs -> requester: reply to KILL_ACTOR / ACTOR_EXITING / JOB_FINISHED
KILL_WORKER = 91  # gcs -> raylet: SIGKILL one of your workers (a killed actor)
CLIENT_DIED = 92  # raylet -> gcs: a driver or worker process ended (owners of actors)
JOB_FINISHED = 93  # driver -> gcs (request): zray.shutdown(); its actors end

NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int) and k != "MAX_HEADER"}


# --- values of fields --------------------------------------------------------
# Actor states (ACTOR_STATE "st"; Ray's names): PENDING_CREATION -> ALIVE ->
# (RESTARTING -> ALIVE)* -> DEAD.
ACTOR_PENDING = "PENDING_CREATION"
ACTOR_ALIVE = "ALIVE"
ACTOR_RESTARTING = "RESTARTING"
ACTOR_DEAD = "DEAD"
# Why an actor died (ACTOR_STATE "kind"; the caller turns it into an exception).
DIED_CREATION_ERROR = "creation_error"  # __init__ raised: payload carries the RayTaskError
DIED_WORKER = "worker_died"
DIED_NODE = "node_died"
DIED_KILLED = "killed"  # zray.kill
DIED_EXITED = "exited"  # __ray_terminate__ / exit_actor / handle out of scope
DIED_OWNER = "owner_died"
DIED_UNSCHEDULABLE = "unschedulable"


def strategy_wire(s: Any) -> dict | None:
    """A scheduling strategy as REQUEST_LEASE's ``strat`` field (None: the default).

    Tasks and actors both use this, so a strategy means the same on either path.
    """
    if s is None or s == "DEFAULT":
        return None
    if isinstance(s, str):
        return {"kind": s}
    h = {"kind": type(s).__name__, "node": getattr(s, "node_id", None),
         "soft": bool(getattr(s, "soft", False))}
    if getattr(s, "_spill_on_unavailable", False):
        h["spill"] = True
    return h


# --- headers built in several places ---------------------------------------------
# (a header is a plain dict; these name the fields a message always has)
def task_reply(tid: bytes, rets: list, **extra: Any) -> Header:
    """TASK_REPLY: ``rets`` descriptors; extra: ``err gen_n contained exiting dt``."""
    return {"t": TASK_REPLY, "tid": tid, "rets": rets, **extra}


def generator_item(tid: bytes, i: int, ret: list) -> Header:
    """GENERATOR_ITEM ``i`` of a streaming task; ``ret``: its descriptor."""
    return {"t": GENERATOR_ITEM, "tid": tid, "i": i, "ret": ret}


def lease_failed(lrid: int, msg: str, kind: str | None = None) -> Header:
    """LEASE_FAILED: with ``kind`` (an exception's name) the request failed; without,
    it is a warning only and the request stays."""
    if kind is None:
        return {"t": LEASE_FAILED, "lrid": lrid, "warn": True, "msg": msg}
    return {"t": LEASE_FAILED, "lrid": lrid, "kind": kind, "msg": msg}


def actor_ack(rid: int, ok: bool = True, **extra: Any) -> Header:
    """ACTOR_ACK: the GCS's answer to KILL_ACTOR, ACTOR_EXITING, JOB_FINISHED, a failed
    ACTOR_CREATED."""
    return {"t": ACTOR_ACK, "rid": rid, "ok": ok, **extra}


def pull_done(rid: int, ok: bool, **extra: Any) -> Header:
    """PULL_DONE; extra: ``msg full path``."""
    return {"t": PULL_DONE, "rid": rid, "ok": ok, **extra}


def publish(ch: str, ev: str, **fields: Any) -> Header:
    """PUBLISH on channel ``ch`` ("node", "gcs") of event ``ev``."""
    return {"t": PUBLISH, "ch": ch, "ev": ev, **fields}


def encode(header: dict, payload: list | tuple = (), bulk: int = 0) -> list:
    """Build the frames of one message (``bulk``: how many trailing payload frames are
    raw object bytes, never unpickled; the header says so)."""
    if bulk:
        header["bulk"] = bulk
    return [msgpack.packb(header, use_bin_type=True), *payload]


def decode(frames: list) -> tuple[dict, list]:
    """Parse ``[header, *payload]``.

    ``frames`` may hold ``zmq.Frame`` objects (zero-copy receive) or bytes.
    Raises ProtocolError for anything malformed.
    """
    if not frames:
        raise ProtocolError("empty message")
    hf = frames[0]
    h = hf.bytes if isinstance(hf, zmq.Frame) else hf
    if len(h) > MAX_HEADER:
        raise ProtocolError(f"header of {len(h)} bytes")
    payload = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames[1:]]
    try:
        header = msgpack.unpackb(h, raw=False)
    except Exception as e:  # msgpack raises several types
        raise ProtocolError(f"undecodable header: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), int):
        raise ProtocolError("header is not a map with an int type")
    bulk = header.get("bulk", 0)
    if not isinstance(bulk, int) or bulk < 0 or bulk > len(payload):
        raise ProtocolError("bad bulk count")
    return header, payload


def _reset_ctx_after_fork() -> None:
    global _ctx
    _ctx = None


_ctx: zmq.Context | None = None
_ctx_lock = threading.Lock()


def context() -> zmq.Context:
    """The process's ZeroMQ context (recreated in a forked child)."""
    global _ctx
    with _ctx_lock:
        if _ctx is None:
            _ctx = zmq.Context()
        return _ctx


import os as _os  # noqa: E402

_os.register_at_fork(after_in_child=_reset_ctx_after_fork)

SEND_TIMEOUT_MS = 30_000
# Messages a tcp ROUTER queues per peer before it stops reading that peer's socket
# (backpressure, never a drop: ROUTERs only drop on send, and ours never send).
TCP_RCVHWM = 10_000
COPY_MAX = 65536  # frames above this are sent without a copy
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
# pyzmq's Python-level send/recv wrappers cost ~5 us per frame in flag and type
# handling; the hot path calls the Cython methods underneath directly.
_socket_base: Any = zmq.Socket.__mro__[1]
_raw_send = _socket_base.send
_raw_recv = _socket_base.recv


def send_frames(sock: zmq.Socket, frames: list) -> None:
    last = len(frames) - 1
    for i, f in enumerate(frames):
        big = not isinstance(f, bytes) and memoryview(f).nbytes > COPY_MAX or \
            isinstance(f, bytes) and len(f) > COPY_MAX
        _raw_send(sock, f, _SNDMORE if i < last else 0, not big, False)


def recv_frames(sock: zmq.Socket, copy: bool) -> list:
    """One multipart message (raises zmq.Again if none is waiting).

    Frames are received as ``zmq.Frame``s even for ``copy``: a Frame knows if more
    follow, where asking the socket (RCVMORE) costs an enum lookup per frame.
    """
    f = _raw_recv(sock, _NOBLOCK, False, False)
    if copy:
        parts = [f.bytes]
        while f.more:
            f = _raw_recv(sock, 0, False, False)
            parts.append(f.bytes)
        return parts
    parts = [f]
    while f.more:
        f = _raw_recv(sock, 0, False, False)
        parts.append(f)
    return parts


class Conn:
    """An outbound connection (DEALER) to one peer's inbound ROUTER.

    Any thread may send: a lock serialises use of the socket. Nothing is ever
    received on it, so no other thread touches it.
    """

    __slots__ = ("addr", "key", "sock", "lock", "closed")

    def __init__(self, addr: str, key: bytes | None, identity: bytes | None = None):
        self.addr = addr
        # CURVE only for what leaves the machine's owner-only ipc sockets.
        self.key = key if addr.startswith("tcp://") else None
        s = context().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)  # never drop or block on a slow peer: memory-bound
        s.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if identity:
            s.setsockopt(zmq.IDENTITY, identity)
        if self.key is not None:
            curve.make_client(s, self.key)
        s.connect(addr)
        self.sock = s
        self.lock = threading.Lock()
        self.closed = False

    def send(self, header: dict, payload: list | tuple = (), bulk: int = 0) -> bool:
        frames = encode(header, payload, bulk)
        with self.lock:
            if self.closed:
                return False
            try:
                send_frames(self.sock, frames)
                return True
            except zmq.Again:
                log.warning("send to %s timed out: %s dropped", self.addr, NAMES.get(header["t"]))
                return False
            except zmq.ZMQError as e:
                log.warning("send to %s failed: %s", self.addr, e)
                return False

    def close(self, linger_ms: int = 0) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.sock.close(linger=linger_ms)


class Inbound:
    """A process's inbound ROUTER sockets: ipc (trusted) and optionally tcp (CURVE).

    ``socks`` lists ``(socket, None)`` pairs (the second item is a left-over of the
    per-message MAC that CURVE replaced; callers pass it back to ``recv_one``)."""

    def __init__(self, ipc_path: str | None, tcp_host: str | None, key: bytes | None,
                 tcp_port: int = 0, max_msg: int = 1 << 30, copy: bool = False):
        self.key = key
        # copy=True suits small messages (bytes are cheaper than Frames);
        # copy=False lets bulk data be written to shm straight from ZeroMQ's buffer.
        self.copy = copy
        self.refused = RateLimited(log, "malformed messages")
        self.socks: list[tuple[zmq.Socket, None]] = []
        self.ipc_addr = self.tcp_addr = ""  # "": not listening there
        ctx = context()
        if ipc_path:
            s = ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.bind("ipc://" + ipc_path)
            self.ipc_addr = "ipc://" + ipc_path
            self.socks.append((s, None))
        if tcp_host:
            if key is None:
                raise ValueError("a tcp listener needs the cluster secret")
            s = ctx.socket(zmq.ROUTER)
            s.setsockopt(zmq.LINGER, 0)
            # Per peer: a peer that sends faster than we drain waits in its own queue.
            s.setsockopt(zmq.RCVHWM, TCP_RCVHWM)
            s.setsockopt(zmq.MAXMSGSIZE, max_msg)
            curve.make_server(s, ctx, key)
            if tcp_port:
                s.bind(f"tcp://{tcp_host}:{tcp_port}")
                port = tcp_port
            else:
                port = s.bind_to_random_port(f"tcp://{tcp_host}")
            self.tcp_addr = f"tcp://{tcp_host}:{port}"
            curve.watch(s, ctx, self.tcp_addr)
            self.socks.append((s, None))

    def register(self, poller: zmq.Poller) -> None:
        for s, _ in self.socks:
            poller.register(s, zmq.POLLIN)

    def drain(self, ready: dict, handler, max_batch: int = 1000) -> int:
        """Receive what is waiting on the ready sockets and hand each message to handler."""
        n = 0
        for s, key in self.socks:
            if s not in ready:
                continue
            for _ in range(max_batch):
                if not self.recv_one(s, key, handler):
                    break
                n += 1
        return n

    def recv_one(self, sock: zmq.Socket, key: None, handler) -> bool:
        """Receive and handle one message from ``sock`` (False: none was waiting).

        ``key`` is the second item of ``sock``'s pair in ``socks`` (unused).

        For a thread that polls between messages (CoreWorker's leader): poll says
        whether more wait, cheaper than the zmq.Again that ends drain()'s loop.
        """
        try:
            frames = recv_frames(sock, self.copy)
        except zmq.Again:
            return False
        if self.refused.suppressed:
            self.refused.tick()
        try:
            header, payload = decode(frames[1:])
        except ProtocolError as e:
            self.refused.warning("dropped a malformed message: %s", e)
            return True
        try:
            handler(header, payload)
        except Exception:
            log.exception("handler failed on %s; message dropped",
                          NAMES.get(header.get("t", -1), header.get("t")))
        return True

    def close(self) -> None:
        for s, _ in self.socks:
            s.close(linger=0)
        self.socks = []


class Address:
    """Where a process listens: its ipc address (same node) and tcp address (other nodes)."""

    __slots__ = ("node_id", "ipc", "tcp")

    def __init__(self, node_id: bytes, ipc: str | None, tcp: str | None):
        self.node_id = node_id
        self.ipc = ipc
        self.tcp = tcp

    def pack(self) -> list:
        return [self.node_id, self.ipc, self.tcp]

    @classmethod
    def unpack(cls, v: Any) -> Address:
        return cls(v[0], v[1], v[2])

    def for_node(self, node_id: bytes) -> str:
        if node_id == self.node_id and self.ipc:
            return self.ipc
        if self.tcp is None:
            raise ConnectionError(f"{self.ipc} is not reachable from another node")
        return self.tcp

    def __repr__(self) -> str:
        return f"Address({self.ipc or self.tcp})"


class Connections:
    """A cache of outbound connections keyed by address string."""

    def __init__(self, key: bytes | None, max_conns: int = 1024):
        self.key = key
        self._conns: collections.OrderedDict[str, Conn] = collections.OrderedDict()
        self._lock = threading.Lock()
        # Servers answer many short-lived clients (CLI calls, pings): keep the
        # most recently used connections and close the oldest beyond this.
        self.max_conns = max_conns

    def get(self, addr: str) -> Conn:
        c = self._conns.get(addr)
        if c is None:
            with self._lock:
                c = self._conns.get(addr)
                if c is None:
                    c = Conn(addr, self.key)
                    self._conns[addr] = c
                    while len(self._conns) > self.max_conns:
                        _, old = self._conns.popitem(last=False)
                        old.close(linger_ms=100)
        elif len(self._conns) > self.max_conns // 2:
            with self._lock:
                if addr in self._conns:
                    self._conns.move_to_end(addr)
        return c

    def send(self, addr: str, header: dict, payload: list | tuple = (), bulk: int = 0) -> bool:
        return self.get(addr).send(header, payload, bulk)

    def drop(self, addr: str) -> None:
        with self._lock:
            c = self._conns.pop(addr, None)
        if c:
            c.close()

    def close(self, linger_ms: int = 0) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), collections.OrderedDict()
        for c in conns:
            c.close(linger_ms)
