"""The GCS's tables as a plain state machine: nodes, KV, jobs, subscribers.

Every event method takes what it needs (time included) and returns a list of
``Send(dest, header, payload)`` actions; the server shell does the sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zray import protocol


@dataclass
class Send:
    dest: str
    header: dict
    payload: list = field(default_factory=list)


@dataclass
class NodeInfo:
    node_id: bytes
    addr: list
    ip: str
    total: dict
    avail: dict
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

    def public(self) -> dict:
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


class GcsTables:
    def __init__(self, node_death_s: float):
        self.node_death_s = node_death_s
        self.nodes: dict[bytes, NodeInfo] = {}
        self.kv: dict[tuple[str, bytes], bytes] = {}
        self.subscribers: dict[str, str] = {}  # address -> channel
        self.gcs_address = ""
        self.ident: dict = {}  # gcs_start, gcs_pid, gcs_id: told to raylets at registration
        # Other tables' reactions to membership: fn(event "added"|"dead", node id) -> actions
        self.node_hooks: list = []

    def _node_event(self, event: str, node: bytes) -> list:
        acts: list = []
        for hook in self.node_hooks:
            acts += hook(event, node)
        return acts

    def _publish(self, event: str, info: NodeInfo) -> list:
        h = {"t": protocol.PUBLISH, "ch": "node", "ev": event, "node": info.public()}
        return [Send(dest, dict(h)) for dest in self.subscribers]

    def register_node(self, h: dict, now: float) -> list:
        info = NodeInfo(h["node"], h["addr"], h["ip"], dict(h["res"]), dict(h["res"]),
                        bool(h.get("head")), h.get("session", ""), h.get("shm", ""),
                        int(h.get("store", 0)), int(h.get("pid", 0)), h.get("hostname", ""),
                        h["ra"], last_seen=now)
        self.nodes[info.node_id] = info
        acts = [Send(h["ra"], {"t": protocol.REGISTER_NODE_REPLY, "ok": True,
                               "gcs_address": self.gcs_address, **self.ident})]
        return acts + self._publish("added", info) + self._node_event("added", info.node_id)

    def heartbeat(self, h: dict, now: float) -> list:
        info = self.nodes.get(h["node"])
        if info is None or not info.alive:
            return []
        info.last_seen = now
        changed = info.avail != h["avail"]
        info.avail = dict(h["avail"])
        return self._publish("resources", info) if changed else []

    def unregister_node(self, node: bytes, reason: str = "stopped") -> list:
        info = self.nodes.get(node)
        if info is None or not info.alive:
            return []
        info.alive = False
        info.death_reason = reason
        self.subscribers.pop(info.reply_to, None)  # its raylet's subscription ends with it
        return self._publish("dead", info) + self._node_event("dead", node)

    def tick(self, now: float) -> list:
        acts: list = []
        for info in self.nodes.values():
            if info.alive and now - info.last_seen > self.node_death_s:
                acts += self.unregister_node(info.node_id, "missed heartbeats")
        return acts

    def kv_put(self, ns: str, key: bytes, value: bytes, overwrite: bool = True) -> bool:
        if not overwrite and (ns, key) in self.kv:
            return False
        self.kv[(ns, key)] = value
        return True

    def kv_get(self, ns: str, key: bytes) -> bytes | None:
        return self.kv.get((ns, key))

    def subscribe(self, dest: str, channel: str) -> list:
        self.subscribers[dest] = channel
        return [Send(dest, {"t": protocol.PUBLISH, "ch": "node", "ev": "snapshot",
                            "nodes": [n.public() for n in self.nodes.values()]})]

    def nodes_view(self) -> list[dict[str, Any]]:
        return [n.public() for n in self.nodes.values()]
