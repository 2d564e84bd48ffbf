"""CURVE on every tcp socket: only holders of the cluster secret get a session.

Every process derives one CURVE keypair from the cluster secret (BLAKE2b keyed by the
secret). A tcp ROUTER is a CURVE server with that keypair; a tcp DEALER is a CURVE client
that uses it both as its own key and as the server's. A peer without the secret cannot
build a valid HELLO (it needs the server's public key, which is never sent in clear) nor
a vouch (it needs the client secret key), so libzmq drops it during the handshake,
before any frame of a message is read or buffered. Once in, CurveZMQ boxes every frame
(the MORE flag inside the box) under per-connection transient keys with a strictly
increasing nonce: frames cannot be read, changed, reordered, dropped mid-message or
replayed, and a recorded stream replayed on a new connection fails at INITIATE (its
cookie belongs to a server transient key that no longer exists).

A ZAP handler (one thread per ZeroMQ context) also checks the client's long-term public
key against the one derived from the secret: the client proves it holds the secret key,
not only that it knows the server's public key. ZAP runs once per connection, not per
message. The same thread watches every CURVE server's monitor and logs failed
handshakes (rate-limited: anyone who reaches the port can cause them).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import threading

import zmq
import zmq.utils.monitor
from zmq.utils import z85

from zray.util.logs import RateLimited

log = logging.getLogger("zray.curve")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# An unauthenticated connection that has not finished its handshake by then is closed.
HANDSHAKE_MS = 10_000
_monitor_ids = itertools.count()


@functools.lru_cache(maxsize=8)
def keypair(secret: bytes) -> tuple[bytes, bytes]:
    """The cluster's CURVE keypair (Z85 public, Z85 secret), derived from the secret."""
    sk = hashlib.blake2b(b"curve keypair", key=secret, digest_size=32,
                         person=b"zray-curve-v1").digest()
    sk85 = z85.encode(sk)
    return zmq.curve_public(sk85), sk85


def _domain(public: bytes) -> bytes:
    # Names the keypair without revealing it (the public key is never sent in clear).
    return b"zray-" + hashlib.blake2b(public, digest_size=8).hexdigest().encode()


_FAILED: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "not a CURVE client of this cluster (protocol)",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "not a cluster member (authentication)",
}


class _AuthThread:
    """One thread per context: answers libzmq's ZAP requests (CURVE clients with our key
    only) and logs failed handshakes on our CURVE servers (rate-limited)."""

    def __init__(self, ctx: zmq.Context):
        self.ctx = ctx
        self.allowed: dict[bytes, bytes] = {}  # ZAP domain -> raw client public key
        self.sock = ctx.socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)
        self.refused = 0
        self._new_monitors: list[tuple[str, str]] = []  # (inproc endpoint, listener address)
        self._lock = threading.Lock()
        # Per listener: a flood at one port must not hide refusals at another.
        self.logs: dict[str, RateLimited] = {}
        t = threading.Thread(target=self._run, name="zray-auth", daemon=True)
        t.start()

    def watch(self, sock: zmq.Socket, where: str) -> None:
        """Log failed handshakes on ``sock`` (a CURVE server; call after bind)."""
        # A fresh name each time: a closed socket's monitor endpoint may linger a while.
        ep = f"inproc://zray-monitor-{next(_monitor_ids)}"
        try:
            sock.monitor(ep, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                         | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        except zmq.ZMQError as e:  # only the log of refused peers is lost, not the refusal
            log.warning("cannot watch %s for refused peers: %s", where, e)
            return
        with self._lock:
            self._new_monitors.append((ep, where))

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        monitors: dict[zmq.Socket, str] = {}
        try:
            while True:
                if self._new_monitors:
                    with self._lock:
                        new, self._new_monitors = self._new_monitors, []
                    for ep, where in new:
                        m = self.ctx.socket(zmq.PAIR)
                        m.setsockopt(zmq.LINGER, 0)
                        m.connect(ep)
                        monitors[m] = where
                        self.logs.setdefault(where, RateLimited(log, f"refused tcp peers on {where}"))
                        poller.register(m, zmq.POLLIN)
                for rl in self.logs.values():
                    rl.tick()
                ready = dict(poller.poll(500))
                if self.sock in ready:
                    msg = self.sock.recv_multipart()
                    self.sock.send_multipart(self._answer(msg))
                for m in [m for m in ready if m in monitors]:
                    self._event(m, monitors, poller)
        except zmq.ContextTerminated:
            pass
        except Exception:  # never take the cluster's authentication down silently
            log.exception("the CURVE authentication thread failed")
        for m in monitors:
            m.close(linger=0)
        self.sock.close(linger=0)

    def _event(self, m: zmq.Socket, monitors: dict, poller: zmq.Poller) -> None:
        try:
            ev = zmq.utils.monitor.recv_monitor_message(m, zmq.NOBLOCK)
        except zmq.Again:
            return
        if ev["event"] == zmq.EVENT_MONITOR_STOPPED:
            poller.unregister(m)
            where = monitors.pop(m, None)
            m.close(linger=0)
            if where is not None and where not in monitors.values():
                rl = self.logs.pop(where, None)
                if rl is not None:
                    rl.tick(rl.start + rl.period)  # report what it suppressed before it goes
            return
        what = _FAILED.get(ev["event"])
        if what:
            where = monitors[m]
            rl = self.logs.setdefault(where, RateLimited(log, f"refused tcp peers on {where}"))
            rl.warning("refused a tcp peer on %s: %s", where, what)

    def _answer(self, msg: list[bytes]) -> list[bytes]:
        if len(msg) < 6:  # libzmq never sends this; answer anyway so REP stays in step
            return [b"1.0", msg[1] if len(msg) > 1 else b"", b"400", b"malformed", b"", b""]
        version, rid, domain, _addr, _identity, mech, *creds = msg
        want = self.allowed.get(domain)
        ok = mech == b"CURVE" and want is not None and len(creds) == 1 and creds[0] == want
        if ok:
            return [version, rid, b"200", b"OK", b"zray", b""]
        self.refused += 1
        return [version, rid, b"400", b"not a cluster member", b"", b""]


_zap: _AuthThread | None = None
_zap_ctx: zmq.Context | None = None
_zap_lock = threading.Lock()


def _zap_for(ctx: zmq.Context) -> _AuthThread:
    global _zap, _zap_ctx
    with _zap_lock:
        if _zap is None or _zap_ctx is not ctx:  # a forked child has a new context
            _zap, _zap_ctx = _AuthThread(ctx), ctx
        return _zap


def make_server(sock: zmq.Socket, ctx: zmq.Context, secret: bytes) -> None:
    """Make ``sock`` (a tcp ROUTER, before bind) a CURVE server for the cluster's key.

    After the bind, ``watch(sock, address)`` logs the peers it refuses."""
    pub, sec = keypair(secret)
    domain = _domain(pub)
    _zap_for(ctx).allowed[domain] = z85.decode(pub)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain)
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, sec)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pub)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)


def watch(sock: zmq.Socket, ctx: zmq.Context, where: str) -> None:
    """Log (rate-limited) the handshakes that fail on ``sock``, a bound CURVE server."""
    _zap_for(ctx).watch(sock, where)


def make_client(sock: zmq.Socket, secret: bytes) -> None:
    """Make ``sock`` (a tcp DEALER, before connect) a CURVE client of the cluster's key."""
    pub, sec = keypair(secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, pub)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, pub)
    sock.setsockopt(zmq.CURVE_SECRETKEY, sec)
