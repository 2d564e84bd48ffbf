"""A raylet's view of the other nodes, kept fresh from the GCS's node channel.

The raylet subscribes to the GCS (SUBSCRIBE, channel "node") once it has
registered; the GCS answers with a snapshot and then publishes every join,
death and change of available resources. ``PeerView.update`` folds one such
PUBLISH message into the view and says which nodes just died. No I/O here.
"""

from __future__ import annotations


class PeerView:
    def __init__(self, node_id: bytes):
        self.node_id = node_id
        self.addr: dict[bytes, list] = {}  # alive peer -> packed raylet Address
        self.res: dict[bytes, tuple[dict, dict]] = {}  # alive peer -> (total, available)
        self.ip: dict[bytes, str] = {}
        self.dead: set[bytes] = set()
        self.ready = False  # the first snapshot has arrived

    def update(self, h: dict) -> tuple[set[bytes], list[tuple[bytes, list]]]:
        """Apply one PUBLISH; return (nodes reported on, [(dead node, its raylet address)])."""
        ev = h.get("ev")
        if ev == "snapshot":
            self.ready = True
            nodes = h.get("nodes") or []
        else:
            n = h.get("node")
            nodes = [n] if isinstance(n, dict) else []
        changed: set[bytes] = set()
        died: list[tuple[bytes, list]] = []
        for n in nodes:
            try:
                nid = bytes.fromhex(n["NodeID"])
            except (KeyError, TypeError, ValueError):
                continue
            if nid == self.node_id:
                continue
            if n.get("Alive"):
                if nid in self.dead:
                    continue  # a late report from a node already declared dead
                self.addr[nid] = n.get("raylet_addr")
                self.res[nid] = (dict(n.get("Resources") or {}),
                                 dict(n.get("AvailableResources") or {}))
                self.ip[nid] = n.get("NodeManagerAddress", "")
                changed.add(nid)
            else:
                if nid in self.addr:
                    died.append((nid, self.addr[nid]))
                self.addr.pop(nid, None)
                self.res.pop(nid, None)
                self.dead.add(nid)
                changed.add(nid)
        return changed, died

    def tcp(self, node: bytes) -> str | None:
        a = self.addr.get(node)
        return a[2] if a else None
