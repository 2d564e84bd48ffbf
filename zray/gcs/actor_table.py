"""The GCS's actor table: a plain state machine (no sockets, no clock of its own).

The GCS creates, places and restarts every actor: it is the *lease holder* of
each actor's worker. The owner registers the actor (``REGISTER_ACTOR``: spec
and constructor arguments); the table asks a raylet for a lease (the owner's
node first; raylets spill the request to a peer that fits), sends the granted
worker ``CREATE_ACTOR``, and publishes the actor's state to subscribers when
the constructor is done. The worker stays dedicated to the actor until it dies.
Calls never pass through here: callers learn the actor's address from
``ACTOR_STATE`` and push to it directly.

States (Ray's names): PENDING_CREATION -> ALIVE -> (RESTARTING -> ALIVE)* -> DEAD.

Each event method returns a list of instructions (gcs/instructions.py): ``Send``,
``DropConn``, and ``Persist("actor", aid, record)`` for every record the event
changed (a record notes its own changes: ``ActorRecord.__setattr__``), so that a
restarted GCS finds every actor as it was (``restore``).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Concatenate, ParamSpec, Union

from zray import protocol
from zray.gcs.instructions import DropConn, Persist, Send, pack, unpack
from zray.protocol import Frames, Header

P = ParamSpec("P")
# What the event methods return, for the GCS's shell (gcs/server.py) to carry out.
Action = Union[Send, DropConn, Persist]

# States and death causes are wire values (protocol.py): callers read them too.
PENDING = protocol.ACTOR_PENDING
ALIVE = protocol.ACTOR_ALIVE
RESTARTING = protocol.ACTOR_RESTARTING
DEAD = protocol.ACTOR_DEAD
CREATION_ERROR = protocol.DIED_CREATION_ERROR
WORKER_DIED = protocol.DIED_WORKER
NODE_DIED = protocol.DIED_NODE
KILLED = protocol.DIED_KILLED
EXITED = protocol.DIED_EXITED
OWNER_DIED = protocol.DIED_OWNER
UNSCHEDULABLE = protocol.DIED_UNSCHEDULABLE

# Dead actors remembered (so that late callers learn the cause); older ones are forgotten.
MAX_DEAD = 10_000

MESSAGES = {
    protocol.REGISTER_ACTOR, protocol.ACTOR_CREATED, protocol.SUBSCRIBE_ACTOR,
    protocol.GET_ACTOR, protocol.KILL_ACTOR, protocol.ACTOR_EXITING, protocol.CLIENT_DIED,
    protocol.JOB_FINISHED, protocol.LEASE_GRANTED, protocol.LEASE_SPILLBACK,
    protocol.LEASE_FAILED, protocol.WORKER_DIED,
}


@dataclass
class ActorRecord:
    aid: bytes
    name: str | None
    ns: str | None
    detached: bool
    owner: list[Any]  # packed address of the owner (driver or worker)
    owner_wid: bytes
    drv: list[Any]  # packed address of the job's driver
    job: bytes
    spec: dict[str, Any]  # fn, cls, res, hold, strat, max_restarts, max_concurrency, async, meta
    args: list[Any]  # argument descriptors (see docs/PROTOCOL.md)
    kw: list[Any]
    payload: Frames  # argument frames (kept for restarts)
    state: str = PENDING
    num_restarts: int = 0
    # Where it runs (set at LEASE_GRANTED)
    wid: bytes | None = None
    addr: list[Any] | None = None
    node: bytes | None = None
    lease: int | None = None
    raylet: list[Any] | None = None
    res: dict[str, float] = field(default_factory=dict)
    pid: int = 0
    # A lease request in flight
    lrid: int | None = None
    lease_dest: str | None = None
    lease_node: bytes | None = None
    unplaced: bool = False  # no node was alive to ask: retried on tick / node added
    kill_restart: bool = False  # zray.kill(no_restart=False) in progress
    subscribers: dict[str, Any] = field(default_factory=dict)  # reply address -> (wid, node)
    death_kind: str = ""
    death_msg: str = ""
    death_frames: Frames = field(default_factory=list)
    # The owning table's set of changed records (not persisted; None until adopted).
    dirty: set[bytes] | None = field(default=None, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__.get("dirty")
        if d is not None and self.__dict__.get(name, d) is not value:
            d.add(self.aid)
        object.__setattr__(self, name, value)

    def touch(self) -> None:
        """A change inside a field (the subscribers dict) that __setattr__ cannot see."""
        if self.dirty is not None:
            self.dirty.add(self.aid)

    def row(self) -> bytes:
        return pack({f.name: getattr(self, f.name) for f in fields(self) if f.name != "dirty"})

    @property
    def max_restarts(self) -> int:
        return int(self.spec.get("max_restarts", 0))

    def can_restart(self) -> bool:
        return self.max_restarts == -1 or self.num_restarts < self.max_restarts


def _persisting(
        fn: Callable[Concatenate[ActorTable, P], list[Action]],
) -> Callable[Concatenate[ActorTable, P], list[Action]]:
    """An entry point: its instructions end with a Persist per record it changed."""

    @functools.wraps(fn)
    def run(self: ActorTable, /, *a: P.args, **kw: P.kwargs) -> list[Action]:
        acts = fn(self, *a, **kw)
        if self._dirty or self._forgotten:
            acts += self._rows()
        return acts

    return run


class ActorTable:
    """Every actor of the cluster, and its name per namespace."""

    def __init__(self, nodes: dict[bytes, Any], gcs_addr: str):
        self.nodes = nodes  # GcsTables.nodes: node id -> NodeInfo (read only)
        self.gcs_addr = gcs_addr  # where raylets and workers answer us (tcp)
        self.actors: dict[bytes, ActorRecord] = {}
        self.names: dict[tuple[str, str], bytes] = {}
        self.by_worker: dict[bytes, bytes] = {}  # worker id -> actor id
        self.leases: dict[int, bytes] = {}  # lease request id -> actor id
        self.unplaced: set[bytes] = set()  # no node was alive to ask when they were placed
        self.dead: collections.deque[bytes] = collections.deque()
        self._lrid = 0
        self._dirty: set[bytes] = set()  # records changed by the event being handled
        self._forgotten: set[bytes] = set()  # records dropped (MAX_DEAD)
        self._lrid_saved = 0

    def _adopt(self, rec: ActorRecord) -> None:
        self.actors[rec.aid] = rec
        rec.dirty = self._dirty

    def _rows(self) -> list[Action]:
        acts: list[Action] = []
        for aid in self._dirty:
            rec = self.actors.get(aid)
            if rec is not None:
                acts.append(Persist("actor", aid, rec.row()))
        for aid in self._forgotten:
            if aid not in self.actors:
                acts.append(Persist("actor", aid, None))
        if self._lrid != self._lrid_saved:  # a restarted GCS never reuses a lease request id
            self._lrid_saved = self._lrid
            acts.append(Persist("meta", b"lrid", pack(self._lrid)))
        self._dirty.clear()
        self._forgotten.clear()
        return acts

    # ------------------------------------------------------------ dispatch
    @_persisting
    def handle(self, h: Header, payload: Frames) -> list[Action]:
        t = h["t"]
        if t == protocol.REGISTER_ACTOR:
            return self.register(h, payload)
        if t == protocol.ACTOR_CREATED:
            return self.actor_created(h, payload)
        if t == protocol.SUBSCRIBE_ACTOR:
            return self.subscribe(h)
        if t == protocol.GET_ACTOR:
            return self.get_actor(h)
        if t == protocol.KILL_ACTOR:
            return self.kill(h)
        if t == protocol.ACTOR_EXITING:
            return self.actor_exiting(h)
        if t == protocol.CLIENT_DIED:
            return self.client_died(h.get("wid"), h.get("addr"))
        if t == protocol.JOB_FINISHED:
            acts = self.client_died(h.get("wid"), h.get("addr"), job=h.get("job"))
            return acts + [Send(h["ra"], protocol.actor_ack(h["rid"]))]
        if t == protocol.LEASE_GRANTED:
            return self.lease_granted(h)
        if t == protocol.LEASE_SPILLBACK:
            return self.lease_spillback(h)
        if t == protocol.LEASE_FAILED:
            return self.lease_failed(h)
        if t == protocol.WORKER_DIED:
            return self.worker_died(h.get("wid"), h.get("lease"), h.get("reason", ""))
        return []

    # ---------------------------------------------------------- creation
    def register(self, h: Header, payload: Frames) -> list[Action]:
        reply = {"t": protocol.REGISTER_ACTOR_REPLY, "rid": h["rid"], "ok": True}
        aid = h["aid"]
        name, ns = h.get("name"), h.get("ns")
        if aid in self.actors:  # a retried request: answer it again
            return [Send(h["ra"], reply)]
        if name:
            other = self.names.get((ns or "", name))
            if other is not None:
                o = self.actors[other]
                if h.get("gie"):
                    reply.update({"existing": o.aid, "meta": o.spec.get("meta"),
                                  "detached": o.detached})
                    return [Send(h["ra"], reply)]
                reply.update({"ok": False, "err": "name", "msg": (
                    f"The name {name} (namespace={ns}) is already taken. Please use a "
                    f"different name or get the existing actor using "
                    f"zray.get_actor({name!r}, namespace={ns!r})")})
                return [Send(h["ra"], reply)]
        rec = ActorRecord(aid, name or None, ns, bool(h.get("detached")), h["owner"],
                          h.get("owner_wid", b""), h.get("drv") or h["owner"],
                          h.get("job", b""), dict(h["spec"]), list(h.get("args") or []),
                          list(h.get("kw") or []), [bytes(f) for f in payload])
        self._adopt(rec)
        rec.touch()
        if name:
            self.names[(ns or "", name)] = aid
        if h.get("sub"):
            rec.subscribers[h["sub"]] = (rec.owner_wid, rec.owner[0])
        return [Send(h["ra"], reply)] + self._schedule(rec)

    def _pick_raylet(self, rec: ActorRecord) -> Any:
        """The raylet asked first: the node the strategy names, else the owner's, else any."""
        strat = rec.spec.get("strat") or {}
        prefer = []
        node = strat.get("node") if isinstance(strat, dict) else None
        if isinstance(node, str):
            try:
                node = bytes.fromhex(node)
            except ValueError:
                node = None
        if node:
            prefer.append(node)
        prefer.append(rec.owner[0] if rec.owner else None)
        for n in prefer:
            info = self.nodes.get(n)
            if info is not None and info.alive:
                return info
        alive = [i for i in self.nodes.values() if i.alive]
        if not alive:
            return None
        heads = [i for i in alive if i.is_head]
        return (heads or alive)[0]

    def _schedule(self, rec: ActorRecord, info: Any = None, spilled: bool = False) -> list[Action]:
        info = info or self._pick_raylet(rec)
        if info is None:
            rec.unplaced = True
            self.unplaced.add(rec.aid)
            return []
        rec.unplaced = False
        self.unplaced.discard(rec.aid)
        self._lrid += 1
        rec.lrid = self._lrid
        self.leases[rec.lrid] = rec.aid
        rec.lease_dest = _raylet_addr(info.addr)
        rec.lease_node = info.node_id
        h = {"t": protocol.REQUEST_LEASE, "lrid": rec.lrid, "ra": self.gcs_addr,
             "res": rec.spec.get("res") or {}, "hold": rec.spec.get("hold") or {},
             "own": rec.owner, "actor": rec.aid, "rt": rec.can_restart()}
        if rec.spec.get("strat"):
            h["strat"] = rec.spec["strat"]
        # Always say it: a raylet takes a request from a tcp address for a spilled one.
        h["spilled"] = spilled
        return [Send(rec.lease_dest, h)]

    def lease_granted(self, h: Header) -> list[Action]:
        aid = self.leases.pop(h["lrid"], None)
        rec = self.actors.get(aid) if aid is not None else None
        if aid is None or rec is None or rec.lrid != h["lrid"] or rec.state == DEAD:
            # Nobody wants it any more: give the worker back.
            return [Send(_raylet_addr(h["raylet"]), {"t": protocol.RETURN_LEASE,
                                                     "lease": h["lease"], "exit": False})]
        rec.lrid = rec.lease_dest = rec.lease_node = None
        rec.wid, rec.addr, rec.node = h["wid"], h["waddr"], h["node"]
        rec.lease, rec.raylet, rec.res = h["lease"], h["raylet"], h.get("res") or {}
        self.by_worker[h["wid"]] = aid
        ch = {"t": protocol.CREATE_ACTOR, "aid": aid, "inc": rec.num_restarts,
              "ra": self.gcs_addr, "spec": rec.spec, "args": rec.args, "kw": rec.kw,
              "own": rec.owner, "drv": rec.drv, "job": rec.job, "res": rec.res,
              "name": rec.name, "ns": rec.ns}
        return [Send(_worker_addr(rec.addr), ch, list(rec.payload))]

    def lease_spillback(self, h: Header) -> list[Action]:
        aid = self.leases.pop(h["lrid"], None)
        rec = self.actors.get(aid) if aid is not None else None
        if rec is None or rec.lrid != h["lrid"] or rec.state == DEAD:
            return []
        node = h["raylet"][0]
        info = self.nodes.get(node)
        if info is None or not info.alive:
            return self._schedule(rec)
        return self._schedule(rec, info, spilled=True)

    def lease_failed(self, h: Header) -> list[Action]:
        if h.get("warn"):
            # Infeasible for now: it stays queued at the raylet; the owner prints why.
            rec = self.actors.get(self.leases.get(h["lrid"], b""))
            if rec is None or not rec.owner:
                return []
            return [Send(_worker_addr(rec.owner), protocol.lease_failed(
                0, f"The actor {rec.spec.get('cls', '')} ({rec.aid.hex()}) cannot be "
                   f"placed yet: {h.get('msg', '')}"))]
        aid = self.leases.pop(h["lrid"], None)
        rec = self.actors.get(aid) if aid is not None else None
        if rec is None or rec.lrid != h["lrid"] or rec.state == DEAD:
            return []
        rec.lrid = rec.lease_dest = rec.lease_node = None
        return self._set_dead(rec, UNSCHEDULABLE, h.get("msg") or "the actor cannot be scheduled")

    def actor_created(self, h: Header, payload: Frames) -> list[Action]:
        rec = self.actors.get(h["aid"])
        # A failed constructor asks (rid): its worker exits only once we know the cause.
        acts: list[Action] = [Send(h["ra"], protocol.actor_ack(h["rid"]))] if "rid" in h else []
        if (rec is None or rec.state == DEAD or rec.wid != h.get("wid")
                or h.get("inc") != rec.num_restarts):
            return acts  # stale: an earlier incarnation, or killed meanwhile
        if not h.get("ok"):
            # Ray: an exception in __init__ is not retried; the actor is dead.
            return acts + self._set_dead(rec, CREATION_ERROR,
                                         h.get("msg") or "the actor's constructor raised",
                                         [bytes(f) for f in payload], kill_worker=False)
        rec.state = ALIVE
        rec.pid = int(h.get("pid", 0))
        return self._publish(rec)

    # ------------------------------------------------------------- queries
    def subscribe(self, h: Header) -> list[Action]:
        rec = self.actors.get(h["aid"])
        if rec is None:
            return [Send(h["ra"], {"t": protocol.ACTOR_STATE, "aid": h["aid"], "st": DEAD,
                                   "kind": "unknown", "msg": "The actor is not known to the "
                                   "cluster (it never existed, or the GCS lost it)."})]
        if rec.state != DEAD:
            rec.subscribers[h["ra"]] = (h.get("wid"), h.get("node"))
            rec.touch()
        return [Send(h["ra"], self._state_header(rec), list(rec.death_frames))]

    def get_actor(self, h: Header) -> list[Action]:
        reply: Header = {"t": protocol.ACTOR_INFO, "rid": h["rid"]}
        if h.get("list"):
            out = []
            for (ns, name), _aid in sorted(self.names.items()):
                if h.get("all") or ns == (h.get("ns") or ""):
                    out.append({"name": name, "namespace": ns})
            reply["actors"] = out
            return [Send(h["ra"], reply)]
        aid = self.names.get((h.get("ns") or "", h.get("name") or ""))
        if aid is None and h.get("aid") is not None:
            aid = h["aid"] if h["aid"] in self.actors else None
        if aid is None:
            reply["found"] = False
            return [Send(h["ra"], reply)]
        rec = self.actors[aid]
        reply.update({"found": True, "aid": aid, "meta": rec.spec.get("meta"),
                      "st": rec.state, "detached": rec.detached})
        return [Send(h["ra"], reply)]

    # ------------------------------------------------------------- ending
    def kill(self, h: Header) -> list[Action]:
        rec = self.actors.get(h["aid"])
        acts = self._kill(rec, bool(h.get("no_restart", True)))
        if "rid" in h:
            ack = protocol.actor_ack(h["rid"], rec is not None)
            if rec is not None:  # the caller applies the outcome at once
                ack["state"] = self._state_header(rec)
            acts.append(Send(h["ra"], ack))
        return acts

    def _kill(self, rec: ActorRecord | None, no_restart: bool) -> list[Action]:
        if rec is None or rec.state == DEAD:
            return []
        if no_restart or not rec.can_restart():
            return self._set_dead(rec, KILLED, "The actor is dead because it was killed by `ray.kill` (zray.kill).")
        if rec.wid is None:
            return []  # not running yet: it is being (re)started anyway
        # Restart after the kill: the worker's death (WORKER_DIED) triggers it.
        rec.kill_restart = True
        return self._kill_worker(rec)

    def actor_exiting(self, h: Header) -> list[Action]:
        rec = self.actors.get(h["aid"])
        acts: list[Action] = [Send(h["ra"], protocol.actor_ack(h["rid"]))]
        if rec is None or rec.state == DEAD or rec.wid != h.get("wid"):
            return acts
        return acts + self._set_dead(rec, EXITED, h.get("msg") or (
            "The actor is dead because it exited intentionally (exit_actor() or "
            "__ray_terminate__)."),
            kill_worker=False)

    def worker_died(self, wid: bytes | None, lease: int | None, reason: str) -> list[Action]:
        aid = self.by_worker.pop(wid, None) if wid is not None else None
        rec = self.actors.get(aid) if aid is not None else None
        if rec is None or rec.wid != wid:
            return []
        acts: list[Action] = [DropConn(_worker_addr(rec.addr))] if rec.addr else []
        rec.wid = rec.addr = rec.node = rec.lease = rec.raylet = None
        if rec.state == DEAD:
            return acts
        return acts + self._lost(rec, WORKER_DIED, "The actor is dead because its worker "
                                 "process has died unexpectedly" + (f" ({reason})." if reason else "."))

    def _lost(self, rec: ActorRecord, kind: str, msg: str) -> list[Action]:
        """The actor's process is gone: restart it if its budget allows, else it is dead."""
        killed = rec.kill_restart
        rec.kill_restart = False
        if rec.can_restart():
            rec.num_restarts += 1
            rec.state = RESTARTING
            return self._publish(rec) + self._schedule(rec)
        if killed:
            kind, msg = KILLED, "The actor is dead because it was killed by `ray.kill` (zray.kill)."
        return self._set_dead(rec, kind, msg, kill_worker=False)

    def client_died(self, wid: bytes | None, addr: str | None, job: bytes | None = None) -> list[Action]:
        """A driver or worker ended: the actors it owns (or its job's, for a driver) die."""
        acts: list[Action] = []
        gone: set[str] = set()  # subscribers' reply addresses
        for rec in list(self.actors.values()):
            for ra, (swid, _) in list(rec.subscribers.items()):
                if ra == addr or (wid is not None and swid == wid):
                    del rec.subscribers[ra]
                    rec.touch()
                    gone.add(ra)
            if rec.state == DEAD or rec.detached:
                continue
            owned = (wid is not None and rec.owner_wid == wid) or (
                addr is not None and rec.owner[1] == addr)
            of_job = (addr is not None and rec.drv and rec.drv[1] == addr) or (
                job is not None and rec.job == job)
            if owned or of_job:
                acts += self._set_dead(rec, OWNER_DIED, (
                    "The actor is dead because its owner has died or its job has "
                    "finished; non-detached actors share their owner's fate."))
        return acts + [DropConn(ra) for ra in gone]

    @_persisting
    def node_added(self, node: bytes) -> list[Action]:
        return self._place_unplaced()

    def _place_unplaced(self) -> list[Action]:
        acts: list[Action] = []
        for aid in list(self.unplaced):
            rec = self.actors.get(aid)
            if rec is None or rec.state not in (PENDING, RESTARTING):
                self.unplaced.discard(aid)
                continue
            acts += self._schedule(rec)
        return acts

    @_persisting
    def node_dead(self, node: bytes) -> list[Action]:
        acts: list[Action] = []
        for rec in list(self.actors.values()):
            for ra, (_, snode) in list(rec.subscribers.items()):
                if snode == node:
                    del rec.subscribers[ra]
                    rec.touch()
                    acts.append(DropConn(ra))
            if rec.state == DEAD:
                continue
            if not rec.detached and (rec.owner[0] == node or (rec.drv and rec.drv[0] == node)):
                acts += self._set_dead(rec, OWNER_DIED, (
                    "The actor is dead because its owner has died (its node died); "
                    "non-detached actors share their owner's fate."))
                continue
            if rec.node == node:
                if rec.wid is not None:
                    self.by_worker.pop(rec.wid, None)
                if rec.addr:
                    acts.append(DropConn(_worker_addr(rec.addr)))
                rec.wid = rec.addr = rec.node = rec.lease = rec.raylet = None
                acts += self._lost(rec, NODE_DIED, f"The actor is dead because its node {node.hex()} has died.")
            elif rec.lease_node == node and rec.lrid is not None:
                self.leases.pop(rec.lrid, None)
                rec.lrid = None
                acts += self._schedule(rec)
        return acts

    @_persisting
    def tick(self, now: float) -> list[Action]:
        return self._place_unplaced() if self.unplaced else []

    # ------------------------------------------------------------- restart
    @_persisting
    def node_workers(self, node: bytes, alive: set[bytes]) -> list[Action]:
        """A raylet (re-)registered naming its live workers and drivers: what the GCS missed
        while it was away. An actor of that node whose worker is not among them died; a
        non-detached actor whose owner was there and is gone shares its owner's fate."""
        acts: list[Action] = []
        gone_owners: set[bytes] = set()
        for rec in list(self.actors.values()):
            if rec.state == DEAD:
                continue
            if rec.node == node and rec.wid is not None and rec.wid not in alive:
                acts += self.worker_died(rec.wid, rec.lease, "it exited while the GCS was down")
            if not rec.detached and rec.owner and rec.owner[0] == node and \
                    rec.owner_wid not in alive:
                gone_owners.add(rec.owner_wid)
        for wid in gone_owners:
            acts += self.client_died(wid, None)
        return acts

    def restore(self, rows: list[bytes], lrid: int = 0) -> list[Action]:
        """Rebuild from the rows a GCS of this session wrote (``ActorRecord.row``).

        Lease requests in flight keep their ids (the raylet answers to the same GCS
        address); actors waiting for a node are placed once nodes register again.
        """
        self._lrid = self._lrid_saved = lrid
        for value in rows:
            d = unpack(value)
            d["subscribers"] = {k: tuple(v) for k, v in d["subscribers"].items()}
            rec = ActorRecord(**d)
            self._adopt(rec)
            if rec.state == DEAD:
                self.dead.append(rec.aid)
                continue
            if rec.name:
                self.names[(rec.ns or "", rec.name)] = rec.aid
            if rec.wid is not None:
                self.by_worker[rec.wid] = rec.aid
            if rec.lrid is not None:
                self.leases[rec.lrid] = rec.aid
                self._lrid = max(self._lrid, rec.lrid)
            elif rec.wid is None:
                rec.unplaced = True
                self.unplaced.add(rec.aid)
        self._dirty.clear()
        return []

    # ------------------------------------------------------------- helpers
    def _kill_worker(self, rec: ActorRecord) -> list[Action]:
        if rec.wid is None or rec.node is None:
            return []
        info = self.nodes.get(rec.node)
        if info is None or not info.alive:
            return []
        return [Send(_raylet_addr(info.addr), {"t": protocol.KILL_WORKER, "wid": rec.wid})]

    def _set_dead(self, rec: ActorRecord, kind: str, msg: str, frames: Frames | None = None,
                  kill_worker: bool = True) -> list[Action]:
        acts: list[Action] = []
        if kill_worker:
            acts += self._kill_worker(rec)
        if rec.lrid is not None:
            self.leases.pop(rec.lrid, None)
            if rec.lease_dest:
                acts.append(Send(rec.lease_dest, {"t": protocol.CANCEL_LEASE_REQUEST,
                                                  "ra": self.gcs_addr, "lrid": rec.lrid}))
            rec.lrid = rec.lease_dest = rec.lease_node = None
        rec.state = DEAD
        rec.unplaced = False
        self.unplaced.discard(rec.aid)
        self.dead.append(rec.aid)
        while len(self.dead) > MAX_DEAD:
            old = self.actors.get(self.dead.popleft())
            if old is not None and old.state == DEAD:
                del self.actors[old.aid]
                self._forgotten.add(old.aid)
                if old.wid is not None and self.by_worker.get(old.wid) == old.aid:
                    del self.by_worker[old.wid]
        rec.death_kind, rec.death_msg = kind, msg
        rec.death_frames = frames or []
        if rec.name and self.names.get((rec.ns or "", rec.name)) == rec.aid:
            del self.names[(rec.ns or "", rec.name)]
        rec.payload = []  # the constructor's arguments are no longer needed
        acts += self._publish(rec)
        rec.subscribers.clear()
        return acts

    def _state_header(self, rec: ActorRecord) -> Header:
        h = {"t": protocol.ACTOR_STATE, "aid": rec.aid, "st": rec.state,
             "inc": rec.num_restarts, "cls": rec.spec.get("cls", ""), "name": rec.name,
             "ns": rec.ns, "restartable": rec.max_restarts != 0}
        if rec.state == ALIVE:
            h.update({"addr": rec.addr, "node": rec.node, "pid": rec.pid})
        elif rec.state == DEAD:
            h.update({"kind": rec.death_kind, "msg": rec.death_msg, "pid": rec.pid})
        return h

    def _publish(self, rec: ActorRecord) -> list[Action]:
        h = self._state_header(rec)
        return [Send(ra, dict(h), list(rec.death_frames)) for ra in rec.subscribers]

    def view(self) -> list[dict[str, Any]]:
        """A summary of every actor (for debugging and the state API)."""
        return [{"actor_id": r.aid.hex(), "class_name": r.spec.get("cls", ""),
                 "state": r.state, "name": r.name or "", "namespace": r.ns or "",
                 "num_restarts": r.num_restarts, "node_id": r.node.hex() if r.node else "",
                 "pid": r.pid, "detached": r.detached, "death_cause": r.death_msg}
                for r in self.actors.values()]


def _raylet_addr(packed: list[Any]) -> str:
    # The GCS talks to raylets and workers over tcp (it is on no node of theirs).
    return str(packed[2] or packed[1])


_worker_addr = _raylet_addr
