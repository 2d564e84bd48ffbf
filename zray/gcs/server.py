"""The GCS's I/O shell: one thread, one event loop around GcsTables."""

from __future__ import annotations

import logging
import os
import time

import zmq

from zray import config, process, protocol
from zray.gcs import actor_table
from zray.gcs.tables import GcsTables, Send

log = logging.getLogger("zray.gcs")


class GcsServer:
    def __init__(self, session_dir: str, host: str, port: int, secret: bytes):
        self.session_dir = session_dir
        self.tables = GcsTables(config.NODE_DEATH_S)
        self.inbound = protocol.Inbound(os.path.join(session_dir, "sockets", "gcs"), host, secret,
                                        tcp_port=port, max_msg=64 << 20)
        self.tables.gcs_address = self.inbound.tcp_addr[len("tcp://"):]
        # Who we are, for raylets watching us: this process (a pidfd where they share our
        # machine) and this incarnation (a restarted GCS on the same address is another).
        self.tables.ident = {"gcs_start": os.urandom(8), "gcs_pid": os.getpid(),
                             "gcs_id": list(process.identity(os.getpid()) or ())}
        self.conns = protocol.Connections(secret)
        self.actors = actor_table.ActorTable(self.tables.nodes, self.inbound.tcp_addr)
        self.tables.node_hooks.append(
            lambda ev, node: self.actors.node_dead(node) if ev == "dead"
            else self.actors.node_added(node))
        self.running = True
        with open(os.path.join(session_dir, "gcs_address"), "w") as f:
            f.write(self.tables.gcs_address)

    def apply(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, Send):
                self.conns.send(a.dest, a.header, a.payload)
            elif isinstance(a, actor_table.DropConn):
                self.conns.drop(a.dest)

    def handle(self, h: dict, payload: list) -> None:
        t = h["t"]
        tb = self.tables
        now = time.monotonic()
        if t == protocol.HEARTBEAT:
            self.apply(tb.heartbeat(h, now))
        elif t == protocol.KV_GET:
            v = tb.kv_get(h["ns"], h["k"])
            self.conns.send(h["ra"], {"t": protocol.KV_REPLY, "rid": h["rid"], "found": v is not None},
                            [v] if v is not None else [])
        elif t == protocol.KV_PUT:
            ok = tb.kv_put(h["ns"], h["k"], bytes(payload[0]) if payload else b"",
                           h.get("overwrite", True))
            if "ra" in h:
                self.conns.send(h["ra"], {"t": protocol.KV_REPLY, "rid": h["rid"], "ok": ok})
        elif t == protocol.GET_NODES:
            self.conns.send(h["ra"], {"t": protocol.NODES_REPLY, "rid": h["rid"],
                                      "nodes": tb.nodes_view(),
                                      "gcs_address": tb.gcs_address})
        elif t == protocol.REGISTER_NODE:
            self.apply(tb.register_node(h, now))
        elif t == protocol.UNREGISTER_NODE:
            self.apply(tb.unregister_node(h["node"]))
        elif t == protocol.SUBSCRIBE:
            self.apply(tb.subscribe(h["ra"], h.get("ch", "node")))
        elif t == protocol.PING:
            if "ra" in h:
                self.conns.send(h["ra"], {"t": protocol.PONG, "rid": h.get("rid"),
                                          "gcs_address": tb.gcs_address,
                                          "session": self.session_dir,
                                          "gcs_start": tb.ident["gcs_start"]})
        elif t in actor_table.MESSAGES:
            self.apply(self.actors.handle(h, payload))
        elif t == protocol.SHUTDOWN:
            self.running = False
        else:
            log.warning("unexpected message %s", protocol.NAMES.get(t, t))

    def run(self) -> None:
        poller = zmq.Poller()
        self.inbound.register(poller)
        last = 0.0
        while self.running:
            ready = dict(poller.poll(100))
            if ready:
                self.inbound.drain(ready, self.handle)
            now = time.monotonic()
            if now - last > 0.1:
                last = now
                self.apply(self.tables.tick(now))
                self.apply(self.actors.tick(now))
        self.inbound.close()
        self.conns.close()
        try:
            os.unlink(os.path.join(self.session_dir, "sockets", "gcs"))
        except OSError:
            pass
