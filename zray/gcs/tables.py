"""The GCS's tables as a plain state machine: nodes, KV (functions, jobs), subscribers,
and the actor table (gcs/actor_table.py).

Events go in one way, ``GcsTables.handle(event) -> instructions``; nothing here
touches a socket, the clock or the disk:

- events: ``Message`` (one inbound message, with the time it was handled),
  ``Tick`` (the shell's timer), ``Restore`` (the rows a restarted GCS read back);
- instructions: ``Send`` (a message), ``DropConn`` (close a connection),
  ``Persist`` (write or delete one row of the durable copy), ``Stop``.

The shell (gcs/server.py) writes every ``Persist`` of a batch in one SQLite
transaction before it sends that batch's messages, so what a client was told is
on disk when it hears it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zray import protocol
from zray.gcs import actor_table
from zray.gcs.instructions import (  # noqa: F401  (the shell takes them from here too)
    DropConn,
    Persist,
    Send,
    Stop,
    pack,
    unpack,
)


# --------------------------------------------------------------- events
@dataclass
class Message:
    h: dict[Any, Any]
    payload: list[Any]
    now: float


@dataclass
class Tick:
    now: float


@dataclass
class Restore:
    """The durable rows of a GCS that ran before on this session: (table, key, value)."""

    rows: list[Any]
    now: float


@dataclass
class NodeInfo:
    node_id: bytes
    addr: list[Any]
    ip: str
    total: dict[Any, Any]
    avail: dict[Any, Any]
    is_head: bool
    session: str
    shm: str
    store: int
    pid: int
    hostname: str
    reply_to: str
    alive: bool = True
    last_seen: float = 0.0
    death_reason: str = ""

    def public(self) -> dict[str, Any]:
        return {
            "NodeID": self.node_id.hex(),
            "Alive": self.alive,
            "NodeManagerAddress": self.ip,
            "NodeManagerHostname": self.hostname,
            "NodeManagerPort": int(self.addr[2].rsplit(":", 1)[1]) if self.addr[2] else 0,
            "NodeName": self.ip,
            "Resources": dict(self.total) if self.alive else {},
            "AvailableResources": dict(self.avail) if self.alive else {},
            "ObjectStoreSocketName": self.shm,
            "RayletSocketName": self.addr[1],
            "ObjectManagerPort": 0,
            "MetricsExportPort": 0,
            "IsHead": self.is_head,
            "alive": self.alive,
            "DeathReason": self.death_reason,
            "Labels": {},
            "raylet_addr": self.addr,
            "session_dir": self.session,
            "pid": self.pid,
            "object_store_memory": self.store,
        }

    def row(self) -> Persist:
        d = dict(self.__dict__)
        d.pop("last_seen")  # a clock reading of the process that wrote it: meaningless later
        return Persist("node", self.node_id, pack(d))


def _kv_key(ns: str, key: bytes) -> bytes:
    return ns.encode() + b"\0" + key


class GcsTables:
    def __init__(self, node_death_s: float, gcs_address: str = "", session: str = ""):
        self.node_death_s = node_death_s
        self.nodes: dict[bytes, NodeInfo] = {}
        self.kv: dict[tuple[str, bytes], bytes] = {}
        self.subscribers: dict[str, str] = {}  # address -> channel
        self.gcs_address = gcs_address  # host:port
        self.session = session
        self.ident: dict[Any, Any] = {}  # gcs_start, gcs_pid, gcs_id: told to raylets at registration
        self.actors = actor_table.ActorTable(self.nodes, "tcp://" + gcs_address)
        self._actor_messages = actor_table.MESSAGES
        self._handlers: dict[int, Callable[[Message], list[Any]]] = {  # type -> instructions
            protocol.HEARTBEAT: lambda m: self.heartbeat(m.h, m.now),
            protocol.KV_GET: lambda m: self.kv_get(m.h),
            protocol.KV_PUT: lambda m: self.kv_put(m.h, m.payload),
            protocol.GET_NODES: lambda m: self.get_nodes(m.h),
            protocol.REGISTER_NODE: lambda m: self.register_node(m.h, m.now),
            protocol.UNREGISTER_NODE: lambda m: self.unregister_node(m.h["node"]),
            protocol.SUBSCRIBE: lambda m: self.subscribe(m.h["ra"], m.h.get("ch", "node")),
            protocol.PING: lambda m: self.ping(m.h),
            protocol.SHUTDOWN: lambda m: [Stop()],
        }

    # ------------------------------------------------------------ dispatch
    def handle(self, ev: Message | Tick | Restore) -> list[Any]:
        if isinstance(ev, Message):
            t = ev.h["t"]
            if t in self._actor_messages:
                return self.actors.handle(ev.h, ev.payload)
            fn = self._handlers.get(t)
            if fn is None:
                raise ValueError(f"unexpected message {protocol.NAMES.get(t, t)}")
            return fn(ev)
        if isinstance(ev, Tick):
            return self.tick(ev.now)
        if isinstance(ev, Restore):
            return self.restore(ev.rows, ev.now)
        raise TypeError(f"not a GCS event: {ev!r}")

    # --------------------------------------------------------------- nodes
    def _node_event(self, event: str, node: bytes) -> list[Any]:
        if event == "dead":
            return self.actors.node_dead(node)
        return self.actors.node_added(node)

    def _publish(self, event: str, info: NodeInfo) -> list[Any]:
        h = protocol.publish("node", event, node=info.public())
        return [Send(dest, dict(h)) for dest in self.subscribers]

    def register_node(self, h: dict[Any, Any], now: float) -> list[Any]:
        info = NodeInfo(h["node"], h["addr"], h["ip"], dict(h["res"]), dict(h["res"]),
                        bool(h.get("head")), h.get("session", ""), h.get("shm", ""),
                        int(h.get("store", 0)), int(h.get("pid", 0)), h.get("hostname", ""),
                        h["ra"], last_seen=now)
        self.nodes[info.node_id] = info
        acts: list[Any] = [info.row(),
                      Send(h["ra"], {"t": protocol.REGISTER_NODE_REPLY, "ok": True,
                                     "gcs_address": self.gcs_address, **self.ident})]
        if "workers" in h:  # what still runs there: actors whose worker is gone are lost
            acts += self.actors.node_workers(info.node_id, set(h["workers"]))
        return acts + self._publish("added", info) + self._node_event("added", info.node_id)

    def heartbeat(self, h: dict[Any, Any], now: float) -> list[Any]:
        info = self.nodes.get(h["node"])
        if info is None or not info.alive:
            return []
        info.last_seen = now
        changed = info.avail != h["avail"]
        info.avail = dict(h["avail"])
        return self._publish("resources", info) if changed else []

    def unregister_node(self, node: bytes, reason: str = "stopped") -> list[Any]:
        info = self.nodes.get(node)
        if info is None or not info.alive:
            return []
        info.alive = False
        info.death_reason = reason
        self.subscribers.pop(info.reply_to, None)  # its raylet's subscription ends with it
        return [info.row()] + self._publish("dead", info) + self._node_event("dead", node)

    def tick(self, now: float) -> list[Any]:
        acts: list[Any] = []
        for info in list(self.nodes.values()):
            if info.alive and now - info.last_seen > self.node_death_s:
                acts += self.unregister_node(info.node_id, "missed heartbeats")
        return acts + self.actors.tick(now)

    def get_nodes(self, h: dict[Any, Any]) -> list[Any]:
        return [Send(h["ra"], {"t": protocol.NODES_REPLY, "rid": h["rid"],
                               "nodes": self.nodes_view(), "gcs_address": self.gcs_address})]

    def nodes_view(self) -> list[dict[str, Any]]:
        return [n.public() for n in self.nodes.values()]

    def subscribe(self, dest: str, channel: str) -> list[Any]:
        self.subscribers[dest] = channel
        return [Send(dest, protocol.publish("node", "snapshot",
                                            nodes=[n.public() for n in self.nodes.values()]))]

    def ping(self, h: dict[Any, Any]) -> list[Any]:
        if "ra" not in h:
            return []
        return [Send(h["ra"], {"t": protocol.PONG, "rid": h.get("rid"),
                               "gcs_address": self.gcs_address, "session": self.session,
                               "gcs_start": self.ident.get("gcs_start")})]

    # ------------------------------------------------------------------ KV
    def kv_put(self, h: dict[Any, Any], payload: list[Any]) -> list[Any]:
        ns, key = h["ns"], h["k"]
        value = bytes(payload[0]) if payload else b""
        ok = h.get("overwrite", True) or (ns, key) not in self.kv
        acts: list[Any] = []
        if ok:
            self.kv[(ns, key)] = value
            acts.append(Persist("kv", _kv_key(ns, key), value))
        if "ra" in h:
            acts.append(Send(h["ra"], {"t": protocol.KV_REPLY, "rid": h["rid"], "ok": ok}))
        return acts

    def kv_get(self, h: dict[Any, Any]) -> list[Any]:
        v = self.kv.get((h["ns"], h["k"]))
        return [Send(h["ra"], {"t": protocol.KV_REPLY, "rid": h["rid"], "found": v is not None},
                     [v] if v is not None else [])]

    # ------------------------------------------------------------- restore
    def restore(self, rows: list[Any], now: float) -> list[Any]:
        """Rebuild the tables from the durable rows of an earlier GCS on this session.

        Nodes that were alive get ``node_death_s`` from now to register again (their
        raylets retry every second); those that do not are dead, as after missed
        heartbeats, and their actors are restarted or die.
        """
        actor_rows, lrid = [], 0
        for table, key, value in rows:
            if table == "kv":
                ns, _, k = bytes(key).partition(b"\0")
                self.kv[(ns.decode(), k)] = bytes(value)
            elif table == "node":
                info = NodeInfo(**unpack(value))
                info.last_seen = now
                self.nodes[info.node_id] = info
            elif table == "actor":
                actor_rows.append(value)
            elif table == "meta" and bytes(key) == b"lrid":
                lrid = unpack(value)
        return self.actors.restore(actor_rows, lrid)
