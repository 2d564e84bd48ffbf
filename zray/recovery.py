"""What an owner does about other nodes: where its objects' copies are, and node death.

These functions are part of the CoreWorker (``cw``); they run on its I/O thread
with ``cw.lock`` held.

Object locations (the object directory) live with each object's owner, not in
the GCS: the owner records the node that made a stored value (``Entry.node``)
and every node that pulled a copy since (``Entry.locs``, reported by the
pulling raylet with OBJECT_LOCATION_ADD). A raylet that finds no copy where it
was told to look asks the owner (GET_OBJECT_LOCATIONS); the owner answers with
the live locations, and if the object is being rebuilt, once it is.

When a node dies (its raylet relays the GCS's "dead" event to every local
client as PUBLISH ch=node ev=dead), an owner:

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

import logging

from zray import exceptions as exc
from zray import ids, protocol

log = logging.getLogger("zray.recovery")

PENDING, READY, FAILED = 0, 1, 2


def raylet_for(cw, node: bytes) -> str:
    """The address of ``node``'s raylet if known; else our own raylet (which forwards)."""
    if node == cw.node_id:
        return cw.raylet_ipc
    return cw.raylet_addrs.get(node) or cw.raylet_ipc


def learn_raylet(cw, node: bytes, packed: list | None) -> None:
    if node and packed and node != cw.node_id and len(packed) > 2 and packed[2]:
        cw.raylet_addrs[node] = packed[2]


def free_copies(cw, oid: bytes, e) -> None:
    """Tell every node that holds a copy of a freed value to drop it."""
    nodes = [e.node] if e.node is not None else []
    nodes += [n for n in (e.locs or ()) if n != e.node]
    for node in nodes:
        if node in cw.dead_nodes:
            continue
        cw.conns.send(raylet_for(cw, node), {"t": protocol.FREE_OBJECTS, "oids": [oid],
                                             "node": node})


# ------------------------------------------------------------------ locations
def location_added(cw, h: dict) -> None:
    """OBJECT_LOCATION_ADD: a raylet pulled a copy of a value we own."""
    oid, node = h["oid"], h["node"]
    learn_raylet(cw, node, h.get("raylet"))
    e = cw.objects.get(oid)
    if e is None or not e.owned or e.state != READY:
        # Freed (or failed) while the copy was on its way: drop it at once.
        packed = h.get("raylet")
        if packed:
            dest = protocol.Address.unpack(packed).for_node(cw.node_id)
            cw.conns.send(dest, {"t": protocol.FREE_OBJECTS, "oids": [oid]})
        return
    if node != e.node:
        if e.locs is None:
            e.locs = set()
        e.locs.add(node)


def get_locations(cw, h: dict) -> None:
    """GET_OBJECT_LOCATIONS from a raylet whose pull found no copy."""
    oid = h["oid"]
    e = cw.objects.get(oid)
    if e is not None and e.owned and e.state == PENDING:
        # Being made or rebuilt: answer when it is ready.
        if e.callbacks is None:
            e.callbacks = []
        e.callbacks.append(lambda: get_locations(cw, h))
        return
    nodes: list = []
    if e is not None and e.owned and e.state == READY and e.node is not None:
        nodes = [n for n in [e.node, *(e.locs or ())] if n not in cw.dead_nodes]
    cw.conns.send(h["ra"], {"t": protocol.OBJECT_LOCATIONS_REPLY, "rid": h.get("rid"),
                            "oid": oid, "nodes": nodes})


# -------------------------------------------------------------------- lineage
def keep_lineage(cw, t) -> bool:
    """At a task's end: keep its spec and argument pins if a stored return may need a rerun."""
    if t.gen or t.cancelled or t.retries == 0:
        return False
    for oid in t.oids:
        e = cw.objects.get(oid)
        if e is not None and e.state == READY and e.node is not None:
            cw.lineage[t.tid] = t
            return True
    return False


def release_lineage(cw, e) -> None:
    """A value was freed: drop its task's lineage once no return of that task lives."""
    tid = e.task_id
    t = cw.lineage.get(tid) if tid is not None else None
    if t is None or t.state != "done":
        return
    if any(o in cw.objects for o in t.oids):
        return
    del cw.lineage[tid]
    pins, t.arg_pins = t.arg_pins, []
    t.args = None
    for aoid in pins:
        ae = cw.objects.get(aoid)
        if ae is not None:
            ae.pins -= 1
            cw._maybe_release(aoid, ae)


def _rerun(cw, t) -> None:
    if t.retries > 0:
        t.retries -= 1
    cw.lineage.pop(t.tid, None)
    t.state = "waiting"
    t.worker = None
    cw.tasks[t.tid] = t
    log.info("re-running %s to rebuild its lost return value(s)", t.fname)
    cw._resolve_deps(t)


# ----------------------------------------------------------------- node death
def node_died(cw, node: bytes, raylet: list | None) -> None:
    if node in cw.dead_nodes or node == cw.node_id:
        return
    cw.dead_nodes.add(node)
    tcp = raylet[2] if raylet and len(raylet) > 2 else cw.raylet_addrs.get(node)
    cw.raylet_addrs.pop(node, None)
    # 1. Workers leased there died with it: like WORKER_DIED for each.
    for ks in cw.keys.values():
        for wid, w in list(ks.workers.items()):
            if w.node == node:
                del ks.workers[wid]
                w.dead = True
                for t in list(w.inflight.values()):
                    cw._task_lost(t, "the node died")
                w.inflight.clear()
    # 2. Lease requests that were waiting at its raylet: ask again (locally).
    if tcp:
        for rid, dest in list(cw.lease_dest.items()):
            if dest == tcp:
                del cw.lease_dest[rid]
                ks = cw.lease_reqs.pop(rid, None)
                if ks is not None:
                    ks.pending_leases.pop(rid, None)
        cw.conns.drop(tcp)
    # 3. Values stored there.
    rerun: dict = {}
    for oid, e in list(cw.objects.items()):
        if e.locs:
            e.locs.discard(node)
        if not e.owned:
            if e.state == PENDING and e.owner and e.owner[0] == node:
                cw._set_failed_local(oid, e, exc.OwnerDiedError(oid.hex(), e.owner))
            continue
        if e.state != READY or e.node != node:
            continue
        if e.locs:
            e.node = e.locs.pop()  # a copy pulled earlier becomes the primary
            continue
        t = cw.lineage.get(e.task_id) if e.task_id is not None else None
        if t is not None and t.retries != 0:
            e.state, e.node, e.size = PENDING, None, 0
            rerun[t.tid] = t
        elif e.task_id is None or ids.index_of(oid) == ids.PUT_INDEX:
            cw._set_failed_local(oid, e, exc.ObjectLostError(oid.hex(), str(cw.address)))
        else:
            cw._set_failed_local(oid, e, exc.ObjectReconstructionFailedMaxAttemptsExceededError(
                oid.hex(), str(cw.address)))
    for t in rerun.values():
        _rerun(cw, t)
    for ks in list(cw.keys.values()):
        cw._dispatch(ks)
