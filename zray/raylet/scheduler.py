"""The raylet's local scheduler and worker-pool bookkeeping: a plain state machine.

Events come in as method calls with everything they need (time included);
each returns a list of actions for the raylet's I/O shell to carry out. No
sockets, processes or clocks here, so unit tests drive it directly.

A *lease* is a worker granted to one owner together with resources; the owner
then pushes tasks straight to that worker until it returns the lease.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

EPS = 1e-9


@dataclass
class LeaseRequest:
    lrid: int
    ra: str  # where to send the answer
    res: dict
    strategy: dict | None = None
    arrived: float = 0.0
    warned: bool = False


@dataclass
class Lease:
    lease_id: int
    wid: bytes
    ra: str
    res: dict
    gpu_ids: list = field(default_factory=list)
    blocked: bool = False


# --- actions ---------------------------------------------------------------
@dataclass
class Grant:
    req: LeaseRequest
    wid: bytes
    lease_id: int
    res: dict


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
class Spill:
    req: LeaseRequest
    node: bytes


@dataclass
class NotifyWorkerDied:
    ra: str
    wid: bytes
    lease_id: int
    reason: str


@dataclass
class KillWorker:
    wid: bytes


def fits(need: dict, have: dict) -> bool:
    for k, v in need.items():
        if v > have.get(k, 0.0) + EPS:
            return False
    return True


class NodeScheduler:
    """Resources, lease queue, leases and idle workers of one node."""

    def __init__(self, total: dict, max_idle_workers: int | None = None):
        self.total = {k: float(v) for k, v in total.items() if v}
        self.avail = dict(self.total)
        self.gpu_free = list(range(int(self.total.get("GPU", 0))))
        self.queue: collections.OrderedDict[tuple, LeaseRequest] = collections.OrderedDict()
        self.leases: dict[int, Lease] = {}
        self.by_worker: dict[bytes, int] = {}
        self.idle: list[bytes] = []  # registered workers with no lease (LIFO: warm first)
        self.starting = 0
        self.workers: set[bytes] = set()
        self._next_lease = 0
        self.max_idle = max_idle_workers or max(int(self.total.get("CPU", 1)), 1)
        # Peers' resources from the GCS: node id -> (total, available)
        self.peers: dict[bytes, tuple[dict, dict]] = {}

    # -- events
    def request(self, req: LeaseRequest) -> list:
        self.queue[(req.ra, req.lrid)] = req
        return self.dispatch()

    def cancel(self, ra: str, lrid: int) -> list:
        self.queue.pop((ra, lrid), None)
        return []

    def worker_started(self) -> None:
        self.starting += 1

    def worker_registered(self, wid: bytes) -> list:
        self.starting = max(0, self.starting - 1)
        self.workers.add(wid)
        self.idle.append(wid)
        return self.dispatch()

    def worker_start_failed(self) -> list:
        self.starting = max(0, self.starting - 1)
        return self.dispatch()

    def lease_returned(self, lease_id: int, exiting: bool) -> list:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return []
        self._release(lease)
        self.by_worker.pop(lease.wid, None)
        acts: list = []
        if exiting:
            acts.append(KillWorker(lease.wid))
        elif lease.wid in self.workers:
            self.idle.append(lease.wid)
        return acts + self.dispatch()

    def worker_exited(self, wid: bytes, started: bool = True) -> list:
        """A worker process ended (crash, kill or clean exit)."""
        acts: list = []
        if wid not in self.workers:
            # Died before it registered.
            return self.worker_start_failed()
        self.workers.discard(wid)
        if wid in self.idle:
            self.idle.remove(wid)
        lid = self.by_worker.pop(wid, None)
        if lid is not None:
            lease = self.leases.pop(lid)
            self._release(lease)
            acts.append(NotifyWorkerDied(lease.ra, wid, lid, "the worker process died"))
        return acts + self.dispatch()

    def owner_died(self, ra: str) -> list:
        """A driver or worker that held leases is gone: its leases and requests end.

        Its leased workers may be running its tasks; nobody wants their results,
        so they are killed (Ray's fate sharing) and the pool replaces them.
        """
        for key in [k for k, r in self.queue.items() if r.ra == ra]:
            del self.queue[key]
        acts: list = []
        for lid, lease in list(self.leases.items()):
            if lease.ra == ra:
                del self.leases[lid]
                self._release(lease)
                self.by_worker.pop(lease.wid, None)
                acts.append(KillWorker(lease.wid))
        return acts + self.dispatch()

    def blocked(self, wid: bytes) -> list:
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

    def unblocked(self, wid: bytes) -> list:
        lid = self.by_worker.get(wid)
        lease = self.leases.get(lid) if lid is not None else None
        if lease is None or not lease.blocked:
            return []
        lease.blocked = False
        cpu = lease.res.get("CPU", 0)
        if cpu:
            self.avail["CPU"] = self.avail.get("CPU", 0) - cpu  # may go negative for a while
        return []

    def peers_changed(self, peers: dict[bytes, tuple[dict, dict]]) -> list:
        self.peers = peers
        return self.dispatch()

    def tick(self, now: float, warn_after: float) -> list:
        acts: list = []
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
            return (bytes.fromhex(node) if isinstance(node, str) else node), bool(s.get("soft"))
        return None, False

    def dispatch(self, local_node: bytes | None = None) -> list:
        acts: list = []
        want_workers = 0
        for key, req in list(self.queue.items()):
            if not fits(req.res, self.total):
                # Spill to a peer that has the resources at all (issue: many nodes).
                peer = self._pick_peer(req)
                if peer is not None:
                    del self.queue[key]
                    acts.append(Spill(req, peer))
                continue
            if not fits(req.res, self.avail):
                continue
            if not self.idle:
                want_workers += 1
                continue
            wid = self.idle.pop()
            del self.queue[key]
            acts.append(self._grant(req, wid))
        short = want_workers - self.starting
        if short > 0:
            self.starting += short
            acts.append(StartWorkers(short))
        return acts

    def _pick_peer(self, req: LeaseRequest) -> bytes | None:
        best = None
        for node, (total, avail) in self.peers.items():
            if fits(req.res, total):
                if fits(req.res, avail):
                    return node
                best = best or node
        return best

    def _grant(self, req: LeaseRequest, wid: bytes) -> Grant:
        self._next_lease += 1
        lid = self._next_lease
        res = dict(req.res)
        for k, v in res.items():
            self.avail[k] = self.avail.get(k, 0.0) - v
        gpu_ids: list = []
        n_gpu = int(res.get("GPU", 0) + 0.999) if res.get("GPU") else 0
        if n_gpu:
            gpu_ids, self.gpu_free = self.gpu_free[:n_gpu], self.gpu_free[n_gpu:]
        lease = Lease(lid, wid, req.ra, res, gpu_ids)
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

    def available(self) -> dict:
        return {k: max(v, 0.0) for k, v in self.avail.items()}
