"""What an owner does about other nodes: where its objects' copies are, and node death.

Object locations (the object directory) live with each object's owner, not in
the GCS: the owner records the node that made a stored value (``Entry.node``)
and every node that pulled a copy since (``Entry.locs``, reported by the
pulling raylet with OBJECT_LOCATION_ADD). A raylet that finds no copy where it
was told to look asks the owner (GET_OBJECT_LOCATIONS); the owner answers with
the live locations, and if the object is being rebuilt, once it is.

When a node dies (``NodeDied``: its raylet relays the GCS's "dead" event to
every local client as PUBLISH ch=node ev=dead), an owner:

- treats every worker leased on that node as dead: tasks running there are
  retried within ``max_retries`` (else WorkerCrashedError);
- asks its local raylet again for leases it had requested from that node;
- for each value it owns that was stored only there: re-runs the task that made
  it if that task has retries left (lineage: the task's spec and arguments are
  kept while a stored return of it lives), otherwise fails the value with an
  ``ObjectLostError`` subclass, so that ``get`` raises instead of hanging;
- fails pending values it borrows from owners that lived on that node
  (``OwnerDiedError``).
"""

from __future__ import annotations

from typing import Any

import zray.exceptions as exc  # (not "from zray import": that loads zray.api)
from zray import ids
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.base import OwnerBase
from zray.owner.state import PENDING, READY, Entry, Task


class LineageMixin(OwnerBase):
    """The Owner's handlers for object locations, lineage and node death."""

    def raylet_for(self, node: bytes) -> str | None:
        """The address of ``node``'s raylet if known; else None: our own raylet (it forwards)."""
        if node == self.node_id:
            return None
        return self.raylet_addrs.get(node)

    def _learn_raylet(self, node: bytes, packed: list[Any] | None) -> None:
        if node and packed and node != self.node_id and len(packed) > 2 and packed[2]:
            self.raylet_addrs[node] = packed[2]

    def _free_copies(self, oid: bytes, e: Entry) -> None:
        """Tell every node that holds a copy of a freed value to drop it."""
        nodes = [e.node] if e.node is not None else []
        nodes += [n for n in (e.locs or ()) if n != e.node]
        for node in nodes:
            if node in self.dead_nodes:
                continue
            self.out.append(ins.FreeObjects(self.raylet_for(node), [oid], node))

    # -------------------------------------------------------------- locations
    def _on_location_added(self, a: ev.LocationAdded) -> None:
        oid, node = a.oid, a.node
        self._learn_raylet(node, a.raylet)
        e = self.objects.get(oid)
        if e is None or not e.owned or e.state != READY:
            # Freed (or failed) while the copy was on its way: drop it at once.
            if a.raylet:
                self.out.append(ins.FreeObjects(a.raylet, [oid]))
            return
        if node != e.node:
            if e.locs is None:
                e.locs = set()
            e.locs.add(node)

    def _on_get_locations(self, q: ev.GetLocations) -> None:
        e = self.objects.get(q.oid)
        if e is not None and e.owned and e.state == PENDING:
            # Being made or rebuilt: answer when it is ready.
            if e.loc_waiters is None:
                e.loc_waiters = []
            e.loc_waiters.append(q)
            return
        nodes: list[Any] = []
        if e is not None and e.owned and e.state == READY and e.node is not None:
            nodes = [n for n in [e.node, *(e.locs or ())] if n not in self.dead_nodes]
        self.out.append(ins.LocationsReply(q.ra, q.rid, q.oid, nodes))

    # ---------------------------------------------------------------- lineage
    def _keep_lineage(self, t: Task) -> bool:
        """At a task's end: keep its spec and argument pins if a stored return may need a rerun."""
        if t.gen or t.cancelled or t.retries == 0 or t.actor is not None:
            return False
        for oid in t.oids:
            e = self.objects.get(oid)
            if e is not None and e.state == READY and e.node is not None:
                self.lineage[t.tid] = t
                return True
        return False

    def _release_lineage(self, e: Entry) -> None:
        """A value was freed: drop its task's lineage once no return of that task lives."""
        tid = e.task_id
        if tid is None:
            return
        t = self.lineage.get(tid)
        if t is None or t.state != "done":
            return
        if any(o in self.objects for o in t.oids):
            return
        del self.lineage[tid]
        pins, t.arg_pins = t.arg_pins, []
        t.args = []
        for aoid in pins:
            ae = self.objects.get(aoid)
            if ae is not None:
                ae.pins -= 1
                self._maybe_release(aoid, ae)

    def _rerun(self, t: Task) -> None:
        if t.retries > 0:
            t.retries -= 1
        self.lineage.pop(t.tid, None)
        t.state = "waiting"
        t.worker = None
        self.tasks[t.tid] = t
        self._resolve_deps(t)

    # ------------------------------------------------------------- node death
    def _on_node_died(self, d: ev.NodeDied) -> None:
        node = d.node
        if node in self.dead_nodes or node == self.node_id:
            return
        self.dead_nodes.add(node)
        tcp = d.raylet_tcp or self.raylet_addrs.get(node)
        self.raylet_addrs.pop(node, None)
        # 1. Workers leased there died with it: like WorkerDied for each.
        for ks in self.keys.values():
            for wid, w in list(ks.workers.items()):
                if w.node == node:
                    del ks.workers[wid]
                    w.dead = True
                    for t in list(w.inflight.values()):
                        self._task_lost(t)
                    w.inflight.clear()
        # 2. Lease requests that were waiting at its raylet: ask again (locally).
        if tcp:
            for rid, dest in list(self.lease_dest.items()):
                if dest == tcp:
                    self._lease_answered(rid)
            self.out.append(ins.DropConnection(tcp))
        # 3. Values stored there.
        rerun: dict[Any, Any] = {}
        for oid, e in list(self.objects.items()):
            if e.locs:
                e.locs.discard(node)
            if not e.owned:
                if e.state == PENDING and e.owner and e.owner[0] == node:
                    self._set_failed(oid, e, exc.OwnerDiedError(oid.hex(), e.owner))
                continue
            if e.state != READY or e.node != node:
                continue
            if e.locs:
                e.node = e.locs.pop()  # a copy pulled earlier becomes the primary
                continue
            lt = self.lineage.get(e.task_id) if e.task_id is not None else None
            if lt is not None and lt.retries != 0:
                e.state, e.node, e.size = PENDING, None, 0
                rerun[lt.tid] = lt
            elif e.task_id is None or ids.index_of(oid) == ids.PUT_INDEX:
                self._set_failed(oid, e, exc.ObjectLostError(oid.hex(), self.me_str))
            else:
                self._set_failed(oid, e, exc.ObjectReconstructionFailedMaxAttemptsExceededError(
                    oid.hex(), self.me_str))
        for t in rerun.values():
            self._rerun(t)
        for ks in list(self.keys.values()):
            self._dispatch(ks)
