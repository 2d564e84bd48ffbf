"""The raylet's local scheduler and worker-pool bookkeeping: a plain state machine.

Events come in one way, ``handle(event)``, as values with everything they need
(time included); it returns a list of actions for the raylet's I/O shell to carry
out. No sockets, processes or clocks here, so unit tests drive it directly.

A *lease* is a worker granted to one owner together with resources; the owner
then pushes tasks straight to that worker until it returns the lease.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any, Union

EPS = 1e-9
# Hybrid policy: pack onto the local node until its busiest requested resource is
# this full, then prefer the least-used node (Ray's spread threshold).
SPREAD_THRESHOLD = 0.5
# Hard affinity to a node this raylet has never heard of fails after this long
# (it may be a node whose join has not reached us yet).
AFFINITY_GRACE_S = 2.0
# After this many workers in a row died before registering, hold new starts for
# START_BACKOFF_S, doubling with each further failure up to START_BACKOFF_MAX_S.
START_FAILURES_BEFORE_BACKOFF = 3
START_BACKOFF_S = 0.5
START_BACKOFF_MAX_S = 30.0
LOCAL, WAIT = "local", "wait"  # placements (or a peer's node id, or a Fail)
Res = dict[str, float]  # resource name -> amount


@dataclass
class LeaseRequest:
    lrid: int
    ra: str  # where to send the answer
    res: Res
    strategy: dict[str, Any] | None = None
    arrived: float = 0.0
    warned: bool = False
    # Spilled here by a peer (the requester is on another node): run it here if
    # this node can at all, never forward it again (no ping-pong on stale views).
    remote: bool = False
    # Placed here with room, waiting only for a worker: stays here (placement is not
    # made again on every event, which would move it around with the round robin).
    sticky: bool = False
    # What the lease holds once granted, if not ``res`` (an actor needs 1 CPU to be
    # placed but holds none while it lives, as in Ray).
    hold: Res | None = None
    # Its work can be retried (a task with retries left, an actor that may restart): the
    # memory monitor kills such workers first.
    retriable: bool = True


@dataclass
class Lease:
    lease_id: int
    wid: bytes
    ra: str
    res: Res
    gpu_ids: list[int] = field(default_factory=list)
    blocked: bool = False
    retriable: bool = True


# --- actions ---------------------------------------------------------------
@dataclass
class Grant:
    req: LeaseRequest
    wid: bytes
    lease_id: int
    res: Res


@dataclass
class StartWorkers:
    n: int


@dataclass
class Warn:
    req: LeaseRequest
    msg: str


@dataclass
class Fail:
    req: LeaseRequest
    kind: str
    msg: str


@dataclass
class StartsHeld:
    """Workers keep dying before they register: no new ones for ``seconds`` (logged)."""

    failures: int
    seconds: float


@dataclass
class Spill:
    req: LeaseRequest
    node: bytes


@dataclass
class NotifyWorkerDied:
    ra: str
    wid: bytes
    lease_id: int
    reason: str
    oom: bool = False  # killed by the memory monitor; reason is its message


@dataclass
class KillWorker:
    wid: bytes


Action = Union[Grant, StartWorkers, StartsHeld, Warn, Fail, Spill, NotifyWorkerDied, KillWorker]


# --- events ----------------------------------------------------------------
@dataclass
class LeaseRequested:
    """REQUEST_LEASE from an owner (or spilled here by a peer)."""

    req: LeaseRequest


@dataclass
class RequestCancelled:
    """CANCEL_LEASE_REQUEST: the owner no longer wants request ``lrid``."""

    ra: str
    lrid: int


@dataclass
class WorkersStarting:
    """The raylet started ``n`` worker processes that have not registered yet."""

    n: int


@dataclass
class WorkerRegistered:
    wid: bytes


@dataclass
class WorkerStartFailed:
    pass


@dataclass
class LeaseReturned:
    lease_id: int
    exiting: bool  # the worker exits after this lease (max_calls reached)


@dataclass
class WorkerExited:
    """A worker process ended (crash, kill or clean exit; ``oom``: the memory
    monitor's message if it killed the worker)."""

    wid: bytes
    oom: str | None = None


@dataclass
class OwnerDied:
    """A driver or worker that may hold leases or requests is gone."""

    ra: str


@dataclass
class WorkerBlocked:
    wid: bytes


@dataclass
class WorkerUnblocked:
    wid: bytes


@dataclass
class PeersChanged:
    """The GCS's view of the other nodes: alive ones (total, available), dead ones if
    known; ``updated``, the peers a fresh report came for (None: all of them)."""

    peers: dict[bytes, tuple[Res, Res]]
    dead: set[bytes] | None = None
    updated: set[bytes] | None = None


@dataclass
class Tick:
    now: float
    warn_after: float  # warn about a request no node can ever fit after this long


Event = Union[LeaseRequested, RequestCancelled, WorkersStarting, WorkerRegistered,
              WorkerStartFailed, LeaseReturned, WorkerExited, OwnerDied, WorkerBlocked,
              WorkerUnblocked, PeersChanged, Tick]


# Where a request goes: LOCAL (queue here), WAIT, a peer's node id (spill), or a Fail.
Placement = Union[str, bytes, Fail]


def fits(need: Res, have: Res) -> bool:
    for k, v in need.items():
        if v > have.get(k, 0.0) + EPS:
            return False
    return True


class NodeScheduler:
    """Resources, lease queue, leases and idle workers of one node."""

    def __init__(self, total: Res, max_idle_workers: int | None = None):
        self.total = {k: float(v) for k, v in total.items() if v}
        self.avail = dict(self.total)
        self.gpu_free = list(range(int(self.total.get("GPU", 0))))
        self.queue: collections.OrderedDict[tuple[str, int], LeaseRequest] = collections.OrderedDict()
        self.leases: dict[int, Lease] = {}
        self.by_worker: dict[bytes, int] = {}
        self.idle: list[bytes] = []  # registered workers with no lease (LIFO: warm first)
        self.starting = 0
        # Workers that die before registering (a broken environment, a crash at import)
        # must not be restarted in a tight loop: back off after a few in a row.
        self.start_failures = 0
        self.starts_held_until = 0.0
        self.now = 0.0  # from the last Tick
        self.workers: set[bytes] = set()
        self._next_lease = 0
        self.max_idle = max_idle_workers or max(int(self.total.get("CPU", 1)), 1)
        # Peers' resources from the GCS: node id -> (total, available)
        self.peers: dict[bytes, tuple[Res, Res]] = {}
        self.node_id = b""  # set by the raylet
        self.dead_peers: set[bytes] = set()
        self.peers_ready = False  # the GCS's first snapshot has arrived
        self._rr = 0
        # What we spilled to each peer and its next report may not show yet: counted
        # against its available resources until that report, or two ticks at most.
        self.reserved: dict[bytes, Res] = {}
        self._reserved_old: dict[bytes, Res] = {}

    # -- events
    def handle(self, event: Event) -> list[Action]:
        """Take one event; return the actions it calls for (the only way in)."""
        match event:
            case LeaseRequested(req):
                return self._request(req)
            case RequestCancelled(ra, lrid):
                self.queue.pop((ra, lrid), None)
                return []
            case WorkersStarting(n):
                self.starting += n
                return []
            case WorkerRegistered(wid):
                return self._worker_registered(wid)
            case WorkerStartFailed():
                return self._worker_start_failed()
            case LeaseReturned(lease_id, exiting):
                return self._lease_returned(lease_id, exiting)
            case WorkerExited(wid, oom):
                return self._worker_exited(wid, oom)
            case OwnerDied(ra):
                return self._owner_died(ra)
            case WorkerBlocked(wid):
                return self._blocked(wid)
            case WorkerUnblocked(wid):
                return self._unblocked(wid)
            case PeersChanged(peers, dead, updated):
                return self._peers_changed(peers, dead, updated)
            case Tick(now, warn_after):
                return self._tick(now, warn_after)
        raise TypeError(f"not a scheduler event: {event!r}")

    def _request(self, req: LeaseRequest) -> list[Action]:
        self.queue[(req.ra, req.lrid)] = req
        return self.dispatch()

    def _worker_registered(self, wid: bytes) -> list[Action]:
        self.starting = max(0, self.starting - 1)
        self.start_failures = 0
        self.workers.add(wid)
        self.idle.append(wid)
        return self.dispatch()

    def _worker_start_failed(self) -> list[Action]:
        self.starting = max(0, self.starting - 1)
        self.start_failures += 1
        acts: list[Action] = []
        if self.start_failures >= START_FAILURES_BEFORE_BACKOFF:
            over = self.start_failures - START_FAILURES_BEFORE_BACKOFF
            seconds = min(START_BACKOFF_S * 2 ** min(over, 16), START_BACKOFF_MAX_S)
            self.starts_held_until = self.now + seconds
            acts.append(StartsHeld(self.start_failures, seconds))
        return acts + self.dispatch()

    def _lease_returned(self, lease_id: int, exiting: bool) -> list[Action]:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        self._release(lease)
        self.by_worker.pop(lease.wid, None)
        acts: list[Action] = []
        if exiting:
            acts.append(KillWorker(lease.wid))
        elif lease.wid in self.workers:
            self.idle.append(lease.wid)
        return acts + self.dispatch()

    def _worker_exited(self, wid: bytes, oom: str | None) -> list[Action]:
        acts: list[Action] = []
        if wid not in self.workers:
            # Died before it registered.
            return self._worker_start_failed()
        self.workers.discard(wid)
        if wid in self.idle:
            self.idle.remove(wid)
        lid = self.by_worker.pop(wid, None)
        if lid is not None:
            lease = self.leases.pop(lid)
            self._release(lease)
            acts.append(NotifyWorkerDied(lease.ra, wid, lid, oom or "the worker process died",
                                         oom is not None))
        return acts + self.dispatch()

    def _owner_died(self, ra: str) -> list[Action]:
        """A driver or worker that held leases is gone: its leases and requests end.

        Its leased workers may be running its tasks; nobody wants their results,
        so they are killed (Ray's fate sharing) and the pool replaces them.
        """
        for key in [k for k, r in self.queue.items() if r.ra == ra]:
            del self.queue[key]
        acts: list[Action] = []
        for lid, lease in list(self.leases.items()):
            if lease.ra == ra:
                del self.leases[lid]
                self._release(lease)
                self.by_worker.pop(lease.wid, None)
                acts.append(KillWorker(lease.wid))
        return acts + self.dispatch()

    def _blocked(self, wid: bytes) -> list[Action]:
        lid = self.by_worker.get(wid)
        lease = self.leases.get(lid) if lid is not None else None
        if lease is None or lease.blocked:
            return []
        lease.blocked = True
        # Give back the CPU while the worker waits in get(): nested tasks need it.
        cpu = lease.res.get("CPU", 0)
        if cpu:
            self.avail["CPU"] = self.avail.get("CPU", 0) + cpu
        return self.dispatch()

    def _unblocked(self, wid: bytes) -> list[Action]:
        lid = self.by_worker.get(wid)
        lease = self.leases.get(lid) if lid is not None else None
        if lease is None or not lease.blocked:
            return []
        lease.blocked = False
        cpu = lease.res.get("CPU", 0)
        if cpu:
            self.avail["CPU"] = self.avail.get("CPU", 0) - cpu  # may go negative for a while
        return []

    def _peers_changed(self, peers: dict[bytes, tuple[Res, Res]], dead: set[bytes] | None,
                       updated: set[bytes] | None) -> list[Action]:
        self.peers = peers
        if dead is not None:
            self.dead_peers = set(dead)
        for node in list(self.reserved) + list(self._reserved_old):
            if updated is None or node in updated or node not in peers:
                self.reserved.pop(node, None)
                self._reserved_old.pop(node, None)
        self.peers_ready = True
        return self.dispatch()

    def _tick(self, now: float, warn_after: float) -> list[Action]:
        acts: list[Action] = []
        held = self.now < self.starts_held_until
        self.now = now
        if held and now >= self.starts_held_until:
            acts += self.dispatch()
        if self.reserved or self._reserved_old:
            self._reserved_old, self.reserved = self.reserved, {}
            acts += self.dispatch()
        for key, req in list(self.queue.items()):
            aff, soft = self._affinity(req)
            if (aff is not None and not soft and self.peers_ready and aff != self.node_id
                    and aff not in self.peers and now - req.arrived > AFFINITY_GRACE_S):
                del self.queue[key]
                acts.append(Fail(req, "TaskUnschedulableError", _no_node_msg(aff, False)))
        for req in self.queue.values():
            if not req.warned and now - req.arrived > warn_after and not self._feasible_anywhere(req):
                req.warned = True
                acts.append(Warn(req, (
                    f"The following resource request cannot be scheduled right now: {req.res}. "
                    "No node in the cluster has these resources; the task stays pending until "
                    "one joins.")))
        return acts

    # -- decisions
    def _feasible_anywhere(self, req: LeaseRequest) -> bool:
        if fits(req.res, self.total):
            return True
        return any(fits(req.res, t) for t, _ in self.peers.values())

    def _affinity(self, req: LeaseRequest) -> tuple[bytes | None, bool]:
        s = req.strategy
        if s and s.get("kind") == "NodeAffinitySchedulingStrategy":
            node = s.get("node")
            if isinstance(node, str):
                try:
                    node = bytes.fromhex(node)
                except ValueError:
                    node = b"?"  # never a node: unknown
            return node, bool(s.get("soft"))
        return None, False

    def dispatch(self, local_node: bytes | None = None) -> list[Action]:
        acts: list[Action] = []
        want_workers = 0
        # Local resources as this pass has promised them (requests placed here
        # that wait for a worker count as taken, so the next one looks elsewhere).
        avail = dict(self.avail)
        for key, req in list(self.queue.items()):
            where: Placement
            if req.sticky and fits(req.res, avail):
                where = LOCAL
            else:
                req.sticky = False
                where = self._place(req, avail)
            if where is WAIT:
                continue
            if isinstance(where, Fail):
                del self.queue[key]
                acts.append(where)
                continue
            if isinstance(where, bytes):  # a peer's node id
                del self.queue[key]
                self._reserve_peer(where, req.res)
                acts.append(Spill(req, where))
                continue
            if not fits(req.res, avail):
                continue
            if not self.idle:
                # Waiting for a worker: its placement resources stay promised.
                for k, v in req.res.items():
                    avail[k] = avail.get(k, 0.0) - v
                want_workers += 1
                req.sticky = True
                continue
            wid = self.idle.pop()
            del self.queue[key]
            # Granted: only what the lease holds is taken (an actor placed with 1 CPU holds
            # none), so the next request in this pass sees the same room self.avail does.
            for k, v in (req.res if req.hold is None else req.hold).items():
                avail[k] = avail.get(k, 0.0) - v
            acts.append(self._grant(req, wid))
        short = want_workers - self.starting
        if short > 0 and self.now >= self.starts_held_until:
            self.starting += short
            acts.append(StartWorkers(short))
        return acts

    # -- placement
    def _place(self, req: LeaseRequest, avail: Res) -> Placement:
        """LOCAL (queue here), WAIT, a peer's node id (spill there), or a Fail."""
        res = req.res
        aff, soft = self._affinity(req)
        if aff is not None:
            # Ray's semantics: an alive node that could fit the task gets it, and the task
            # waits there while it is busy, unless soft with _spill_on_unavailable.
            spill = soft and bool((req.strategy or {}).get("spill"))
            if aff == self.node_id:
                if fits(res, self.total) and (not spill or fits(res, avail)):
                    return LOCAL
                if not soft:
                    return Fail(req, "TaskUnschedulableError", (
                        f"The node {aff.hex()} named by a hard NodeAffinitySchedulingStrategy "
                        f"does not have the resources {res}."))
            elif aff in self.peers:
                total, pavail = self.peers[aff][0], self._peer_avail(aff)
                if fits(res, total) and (not spill or fits(res, pavail)):
                    return aff
                if not soft:
                    return Fail(req, "TaskUnschedulableError", (
                        f"The node {aff.hex()} named by a hard NodeAffinitySchedulingStrategy "
                        f"does not have the resources {res}."))
            elif not soft:
                if aff in self.dead_peers:
                    return Fail(req, "TaskUnschedulableError", _no_node_msg(aff, True))
                return WAIT  # unknown yet: tick() fails it after a grace period
        if req.remote:
            if fits(res, self.total):
                return LOCAL
            return self._pick_peer(req) or WAIT
        kind = (req.strategy or {}).get("kind")
        if kind == "SPREAD":
            return self._spread(req, avail)
        return self._hybrid(req, avail)

    def _candidates(self, res: Res, avail: Res) -> list[tuple[bytes, Res, Res]]:
        """(node id, total, available) of every node that could ever run res; local first."""
        out = []
        if fits(res, self.total):
            out.append((self.node_id, self.total, avail))
        for node in sorted(self.peers):
            total, pavail = self.peers[node][0], self._peer_avail(node)
            if fits(res, total):
                out.append((node, total, pavail))
        return out

    def _hybrid(self, req: LeaseRequest, avail: Res) -> Placement:
        res = req.res
        local_ok = fits(res, self.total)
        if local_ok and fits(res, avail) and _util(self.total, avail, res) < SPREAD_THRESHOLD:
            return LOCAL
        free = [c for c in self._candidates(res, avail) if fits(res, c[2])]
        if free:
            best = min(_util(t, a, res) for _, t, a in free)
            ties = [n for n, t, a in free if _util(t, a, res) <= best + EPS]
            if self.node_id in ties:
                return LOCAL
            self._rr += 1
            return ties[self._rr % len(ties)]
        if local_ok:
            return LOCAL  # wait here: nobody has room now
        return self._pick_peer(req) or WAIT

    def _spread(self, req: LeaseRequest, avail: Res) -> Placement:
        res = req.res
        free = [c for c in self._candidates(res, avail) if fits(res, c[2])]
        if not free:
            # Nobody has room now: wait here if this node can ever run it (placement is
            # made again, among the nodes with room, as soon as one has).
            return LOCAL if fits(res, self.total) else self._pick_peer(req) or WAIT
        best = min(_util(t, a, res) for _, t, a in free)
        ties = [n for n, t, a in free if _util(t, a, res) <= best + EPS]
        node = ties[self._rr % len(ties)]
        self._rr += 1
        return LOCAL if node == self.node_id else node

    def _reserve_peer(self, node: bytes, res: Res) -> None:
        r = self.reserved.setdefault(node, {})
        for k, v in res.items():
            r[k] = r.get(k, 0.0) + v

    def _peer_avail(self, node: bytes) -> Res:
        avail = self.peers[node][1]
        if node not in self.reserved and node not in self._reserved_old:
            return avail
        out = dict(avail)
        for r in (self.reserved.get(node), self._reserved_old.get(node)):
            for k, v in (r or {}).items():
                out[k] = out.get(k, 0.0) - v
        return out

    def _pick_peer(self, req: LeaseRequest) -> bytes | None:
        best = None
        for node, (total, _) in sorted(self.peers.items()):
            if fits(req.res, total):
                if fits(req.res, self._peer_avail(node)):
                    return node
                best = best or node
        return best

    def _grant(self, req: LeaseRequest, wid: bytes) -> Grant:
        self._next_lease += 1
        lid = self._next_lease
        res = dict(req.res if req.hold is None else req.hold)
        for k, v in res.items():
            self.avail[k] = self.avail.get(k, 0.0) - v
        gpu_ids: list[int] = []
        n_gpu = int(res.get("GPU", 0) + 0.999) if res.get("GPU") else 0
        if n_gpu:
            gpu_ids, self.gpu_free = self.gpu_free[:n_gpu], self.gpu_free[n_gpu:]
        lease = Lease(lid, wid, req.ra, res, gpu_ids, retriable=req.retriable)
        self.leases[lid] = lease
        self.by_worker[wid] = lid
        granted: dict[str, Any] = dict(res)
        if gpu_ids:
            granted["GPU_ids"] = gpu_ids
        return Grant(req, wid, lid, granted)

    def _release(self, lease: Lease) -> None:
        for k, v in lease.res.items():
            if k == "CPU" and lease.blocked:
                continue  # already given back while blocked
            self.avail[k] = self.avail.get(k, 0.0) + v
        self.gpu_free.extend(lease.gpu_ids)
        self.gpu_free.sort()

    def excess_idle(self) -> list[bytes]:
        """Idle workers above the pool's size (started while others were blocked)."""
        extra = len(self.idle) - self.max_idle
        return self.idle[:extra] if extra > 0 else []

    def available(self) -> Res:
        return {k: max(v, 0.0) for k, v in self.avail.items()}


def _util(total: Res, avail: Res, res: Res) -> float:
    """How full a node is: the largest used fraction among CPU and the requested resources."""
    u = 0.0
    for k in {"CPU", *res}:
        t = total.get(k, 0.0)
        if t > 0:
            u = max(u, (t - avail.get(k, 0.0)) / t)
    return u


def _no_node_msg(node: bytes, dead: bool) -> str:
    state = "is dead" if dead else "is not part of the cluster"
    return (f"The node {node.hex()} named by a hard NodeAffinitySchedulingStrategy {state}; "
            "the task cannot be scheduled.")
