"""A small, short-lived GCS client for the CLI: ping and GET_NODES, no driver registration.

Same machine as the GCS: requests go to the GCS's ipc socket and replies come
back on an ipc socket in the session's owner-only ``sockets`` directory. From
elsewhere: tcp both ways, authenticated with the cluster secret; the reply
socket listens on the address of ours that routes to the GCS.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time

import zmq
from zray_cli import netutil

from zray import protocol


class GcsUnreachable(ConnectionError):
    pass


class GcsClient:
    def __init__(self, secret: bytes, *, gcs_tcp: str | None = None,
                 session_dir: str | None = None):
        """gcs_tcp: 'host:port'. With a session_dir holding the GCS's ipc socket, use that."""
        ipc_gcs = os.path.join(session_dir, "sockets", "gcs") if session_dir else None
        self._rid = itertools.count(1)
        if ipc_gcs and os.path.exists(ipc_gcs):
            self.dest = "ipc://" + ipc_gcs
            path = os.path.join(session_dir, "sockets", f"cli-{os.getpid()}-{secrets.token_hex(3)}")
            self.inbound = protocol.Inbound(path, None, None)
            self._ipc_path = path
        elif gcs_tcp:
            host, _ = netutil.parse_address(gcs_tcp)
            self.dest = "tcp://" + gcs_tcp
            self.inbound = protocol.Inbound(None, netutil.ip_toward(host), secret)
            self._ipc_path = None
        else:
            raise GcsUnreachable("no GCS address and no local GCS socket")
        self.reply_to = self.inbound.ipc_addr or self.inbound.tcp_addr
        self.conns = protocol.Connections(secret)
        self.poller = zmq.Poller()
        self.inbound.register(self.poller)

    def request(self, header: dict, timeout: float, retry_every: float = 0.5) -> dict:
        """Send header (re-sent every retry_every s: the GCS handlers are idempotent) and
        return the reply's header; GcsUnreachable after timeout seconds."""
        deadline = time.monotonic() + timeout
        rids: set = set()
        got: list = []
        while True:
            rid = next(self._rid)
            rids.add(rid)
            self.conns.send(self.dest, {**header, "ra": self.reply_to, "rid": rid})
            resend = time.monotonic() + retry_every
            while time.monotonic() < min(resend, deadline):
                ready = dict(self.poller.poll(50))
                if ready:
                    self.inbound.drain(ready, lambda h, p: got.append(h))
                for h in got:
                    if h.get("rid") in rids:
                        return h
                got.clear()
            if time.monotonic() >= deadline:
                raise GcsUnreachable(f"the GCS at {self.dest[len('tcp://'):] if self.dest.startswith('tcp') else self.dest} "
                                     f"did not answer within {timeout:g} s")

    def ping(self, timeout: float) -> dict:
        return self.request({"t": protocol.PING}, timeout)

    def nodes(self, timeout: float = 10.0) -> list[dict]:
        return self.request({"t": protocol.GET_NODES}, timeout)["nodes"]

    def close(self) -> None:
        self.conns.close()
        self.inbound.close()
        if self._ipc_path:
            try:
                os.unlink(self._ipc_path)
            except OSError:
                pass

    def __enter__(self) -> GcsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
