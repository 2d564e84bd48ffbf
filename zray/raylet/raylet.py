"""The raylet's I/O shell: one thread, one event loop, no locks.

It turns messages, worker-process exits and timer ticks into events for the
NodeScheduler and the ObjectStoreState, and their actions into messages,
process starts and file operations.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import zmq

from zray import config, ids, process, protocol
from zray.objstore import shm
from zray.objstore import store as ostore
from zray.objstore.capacity import default_capacity
from zray.objstore.spare import SpareFiller
from zray.objstore.spill import StoreExecutor, run_sync
from zray.raylet import gcs_watch as gw
from zray.raylet import memory_monitor as mm
from zray.raylet import scheduler as sch
from zray.raylet.object_manager import ObjectManager
from zray.raylet.peers import PeerView
from zray.raylet.store_room import RoomKeeper
from zray.zygote import ForkedProc, Zygote

log = logging.getLogger("zray.raylet")


class Raylet:
    def __init__(self, *, session_dir: str, node_id: bytes, gcs_addr: str, node_ip: str,
                 resources: dict, object_store_memory: int | None, secret: bytes,
                 is_head: bool, port: int = 0, labels: dict | None = None,
                 shm_prefix: str | None = None):
        self.session_dir = session_dir
        self.node_id = node_id
        self.node_ip = node_ip
        self.secret = secret
        self.is_head = is_head
        self.gcs_addr = gcs_addr
        self.session_name = os.path.basename(session_dir.rstrip("/"))
        # The node's private directory in /dev/shm (objstore/shm.py: make_node_dir).
        self.shm_prefix = shm_prefix or shm.make_node_dir(
            f"zray-{self.session_name[-8:]}-{node_id.hex()[:8]}-")
        self.sched = sch.NodeScheduler(resources)
        self.inbound = protocol.Inbound(
            os.path.join(session_dir, "sockets", "raylet-" + node_id.hex()[:12]),
            node_ip, secret, tcp_port=port)
        self.address = protocol.Address(node_id, self.inbound.ipc_addr, self.inbound.tcp_addr)
        self.conns = protocol.Connections(secret)
        self.gcs = self.conns.get(gcs_addr)
        # Is the GCS there? (raylet/gcs_watch.py): pings, a pidfd on a local GCS process.
        self.gcs_watch = gw.GcsWatch(gcs_addr.split("://", 1)[-1], config.HEARTBEAT_S,
                                     config.GCS_PING_TIMEOUT_S, config.GCS_RECONNECT_TIMEOUT_S)
        self.gcs_fd: int | None = None
        self._gcs_rid = 0
        self.sched.node_id = node_id
        self.view = PeerView(node_id)  # the other nodes, from the GCS (raylet/peers.py)
        self.om = ObjectManager(self)  # transfers between nodes (raylet/object_manager.py)
        self.procs: dict[bytes, subprocess.Popen] = {}
        self.pidfds: dict[int, bytes] = {}
        self.workers_addr: dict[bytes, list] = {}
        self.drivers: dict[bytes, str] = {}
        self.driver_fds: dict[int, tuple[bytes, str]] = {}
        self.poller = zmq.Poller()
        self.inbound.register(self.poller)
        self.running = True
        self.capacity = object_store_memory or default_capacity()
        self.store = ostore.ObjectStoreState(self.capacity)
        # Spares (objstore/spare.py) live in the room the objects leave free.
        # Recycled ones cost nothing to make: up to half the capacity; the
        # background filler makes at most 1 GiB of them.
        self.spares = SpareFiller(self.shm_prefix, self.capacity // 2,
                                  fill_bytes=min(self.capacity // 4, 1 << 30),
                                  room=lambda: self.capacity - self.store.occupied())
        self.store_exec = StoreExecutor(
            self.shm_prefix, os.path.join(session_dir, "spill", node_id.hex()[:12]))
        self.store_exec.recycle = self.spares.recycle  # freed segments become spares
        self.room = RoomKeeper(self)  # the hard limit: room reserved before writes
        self.store_exec.drain = self.room.drain  # freed but mapped: counted until unmapped
        self.gcs_address = ""  # set when the GCS has registered this node
        self._early_clients: list[dict] = []
        self._dirty = True
        self._last_report = 0.0
        self.log_dir = os.path.join(session_dir, "logs")
        self.zygote: Zygote | None = None  # set by the raylet's main before run()
        # The memory monitor (raylet/memory_monitor.py): workers it killed -> its message.
        self.memory = mm.MemoryPolicy(config.MEMORY_USAGE_THRESHOLD, node_ip, node_id)
        self.oom_killed: dict[bytes, str] = {}
        self._memory_next = 0.0
        os.makedirs(self.log_dir, exist_ok=True)

    # ------------------------------------------------------------- workers
    def start_workers(self, n: int) -> None:
        for _ in range(n):
            wid = ids.new_unique_id()
            log_path = os.path.join(self.log_dir, f"worker-{wid.hex()[:12]}.log")
            argv = ["--session-dir", self.session_dir, "--node-id", self.node_id.hex(),
                    "--raylet", self.address.ipc, "--worker-id", wid.hex(),
                    "--shm-prefix", self.shm_prefix, "--node-ip", self.node_ip]
            try:
                if self.zygote is not None:
                    p = ForkedProc(self.zygote.spawn(argv, log_path), argv)
                else:
                    with open(log_path, "ab") as logf:
                        p = subprocess.Popen([sys.executable, "-m", "zray.worker_main", *argv],
                                             stdin=subprocess.DEVNULL, stdout=logf,
                                             stderr=subprocess.STDOUT, close_fds=True)
            except OSError as e:
                log.error("cannot start a worker: %s", e)
                self.apply(self.sched.handle(sch.WorkerStartFailed()))
                continue
            self.procs[wid] = p
            try:
                fd = os.pidfd_open(p.pid)
            except ProcessLookupError:  # died at once: treat as a failed start
                self.procs.pop(wid)
                self.apply(self.sched.handle(sch.WorkerStartFailed()))
                continue
            self.pidfds[fd] = wid
            self.poller.register(fd, zmq.POLLIN)

    def _reap(self, fd: int) -> None:
        wid = self.pidfds.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        p = self.procs.pop(wid, None)
        if p is not None:
            p.wait()
            if p.returncode not in (0, -signal.SIGTERM):
                log.warning("worker %s (pid %d) exited with %s", wid.hex()[:12], p.pid, p.returncode)
        waddr = self.workers_addr.pop(wid, None)
        if waddr is not None:
            # Leases this worker held as an owner (nested tasks) end with it.
            self.apply(self.sched.handle(sch.OwnerDied(waddr[1])))
        self._remove_worker_socket(wid)
        self.room.writer_gone(wid)
        self._dirty = True
        # Actors owned by this worker share its fate: the GCS ends them.
        self.gcs.send({"t": protocol.CLIENT_DIED, "wid": wid,
                       "addr": waddr[1] if waddr is not None else None})
        self.memory.handle(mm.WorkerExited(wid))
        self.apply(self.sched.handle(sch.WorkerExited(wid, oom=self.oom_killed.pop(wid, None))))

    def _remove_worker_socket(self, wid: bytes) -> None:
        # A killed worker cannot remove its own ipc socket file.
        try:
            os.unlink(os.path.join(self.session_dir, "sockets", "w-" + wid.hex()[:12]))
        except OSError:
            pass

    def _watch_driver(self, wid: bytes, pid: int, ra: str) -> None:
        # A driver that dies without returning its leases must not keep them.
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return
        self.driver_fds[fd] = (wid, ra)
        self.poller.register(fd, zmq.POLLIN)

    def _driver_gone(self, fd: int) -> None:
        wid, ra = self.driver_fds.pop(fd)
        self.poller.unregister(fd)
        os.close(fd)
        self.drivers.pop(wid, None)
        self.room.writer_gone(wid)
        self._dirty = True
        # Its job's non-detached actors end with it (the GCS decides which).
        self.gcs.send({"t": protocol.CLIENT_DIED, "wid": wid, "addr": ra, "driver": True})
        self.apply(self.sched.handle(sch.OwnerDied(ra)))

    def check_memory(self, now: float) -> None:
        """The memory monitor's turn: kill a leased worker if the node is short of memory."""
        usage = mm.read_usage()
        if usage.fraction < self.memory.threshold:
            return
        running = []
        for lid, lease in self.sched.leases.items():
            p = self.procs.get(lease.wid)
            if p is not None and p.poll() is None:
                running.append(mm.Running(lease.wid, lid, lease.retriable, p.pid, _rss(p.pid)))
        for a in self.memory.handle(mm.Sample(now, usage, running)):
            if isinstance(a, mm.Kill):
                log.warning("%s", a.message)
                self.oom_killed[a.wid] = a.message
                self.kill_worker(a.wid, signal.SIGKILL)
            else:
                log.warning("%s", a.message)

    def kill_worker(self, wid: bytes, sig: int = signal.SIGTERM) -> None:
        p = self.procs.get(wid)
        if p is not None and p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------- actions
    def apply(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, sch.Grant):
                self._dirty = True
                self.conns.send(a.req.ra, {
                    "t": protocol.LEASE_GRANTED, "lrid": a.req.lrid, "wid": a.wid,
                    "waddr": self.workers_addr[a.wid], "lease": a.lease_id, "node": self.node_id,
                    "res": a.res, "raylet": self.address.pack()})
            elif isinstance(a, sch.StartWorkers):
                self.start_workers(a.n)
            elif isinstance(a, sch.StartsHeld):
                log.error("%d workers in a row died before registering (see the newest "
                          "worker-*.log in %s): no new worker for %.1f s", a.failures,
                          self.log_dir, a.seconds)
            elif isinstance(a, sch.Warn):
                self.conns.send(a.req.ra, protocol.lease_failed(a.req.lrid, a.msg))
            elif isinstance(a, sch.Fail):
                self.conns.send(a.req.ra, protocol.lease_failed(a.req.lrid, a.msg, a.kind))
            elif isinstance(a, sch.Spill):
                self.conns.send(a.req.ra, {"t": protocol.LEASE_SPILLBACK, "lrid": a.req.lrid,
                                           "raylet": self.peer_addr(a.node)})
            elif isinstance(a, sch.NotifyWorkerDied):
                died = {"t": protocol.WORKER_DIED, "wid": a.wid, "lease": a.lease_id,
                        "reason": a.reason}
                if a.oom:
                    died["oom"] = True
                self.conns.send(a.ra, died)
            elif isinstance(a, sch.KillWorker):
                self.kill_worker(a.wid)

    def peer_addr(self, node: bytes) -> list:
        return self.view.addr.get(node) or self.address.pack()

    def _on_publish(self, h: dict) -> None:
        """The GCS's node channel: keep the peer view fresh, relay deaths to local clients."""
        was_ready = self.view.ready
        changed, died = self.view.update(h)
        for node, addr in died:
            log.warning("node %s died", node.hex()[:12])
            # Owners on this node retry what ran there and rebuild what was stored there.
            # Told before the pulls from that node move on: a pull that asks an owner
            # here where copies are must reach it after the news (same connection).
            note = protocol.publish("node", "dead", node=node, raylet=addr)
            for ra in list(self.drivers.values()):
                self.conns.send(ra, dict(note))
            for waddr in list(self.workers_addr.values()):
                self.conns.send(waddr[1], dict(note))
            self.om.node_dead(node)
            if addr and addr[2]:
                self.conns.drop(addr[2])
        if self.view.ready and not was_ready:
            self.om.view_ready()
        if changed or h.get("ev") == "snapshot":
            self.apply(self.sched.handle(sch.PeersChanged(self.view.res, self.view.dead, changed)))

    def store_apply(self, acts: list) -> list:
        """Carry out the object store's actions inline; return Ready/Missing/StoreFull."""
        out = run_sync(self.store, self.store_exec, acts)
        room = self.capacity - self.store.occupied()
        if self.spares.held_max > room:  # objects grew into the spares' room: drop some
            self.spares.trim(room)
        for a in out:
            if isinstance(a, ostore.StoreFull):
                log.warning("object store over capacity: %d of %d bytes used", a.used, a.capacity)
        return out

    # ------------------------------------------------------------ messages
    def handle(self, h: dict, payload: list) -> None:
        t = h["t"]
        if t == protocol.REQUEST_LEASE:
            req = sch.LeaseRequest(h["lrid"], h["ra"], {k: float(v) for k, v in h["res"].items()},
                                   h.get("strat"), time.monotonic(),
                                   remote=h["spilled"] if "spilled" in h
                                   else h["ra"].startswith("tcp://"))
            if "hold" in h:  # an actor's lease (the GCS asks): what it holds once granted
                req.hold = {k: float(v) for k, v in h["hold"].items()}
            req.retriable = bool(h.get("rt", True))
            self.apply(self.sched.handle(sch.LeaseRequested(req)))
        elif t == protocol.RETURN_LEASE:
            self._dirty = True
            self.apply(self.sched.handle(sch.LeaseReturned(h["lease"], bool(h.get("exit")))))
        elif t == protocol.REGISTER_CLIENT:
            self._register_client(h)
        elif t == protocol.WORKER_BLOCKED:
            self._dirty = True
            self.apply(self.sched.handle(sch.WorkerBlocked(h["wid"])))
        elif t == protocol.WORKER_UNBLOCKED:
            self._dirty = True
            self.apply(self.sched.handle(sch.WorkerUnblocked(h["wid"])))
        elif t == protocol.CREATE_OBJECT:
            if h.get("cancel"):  # the writer could not write it: the bytes are free again
                self.room.cancel(h["oid"])
                return
            ra, rid = h["ra"], h["rid"]
            if int(h["size"]) > self.capacity:  # Ray's fallback allocation: a file on disk
                self.conns.send(ra, {"t": protocol.CREATE_OBJECT_REPLY, "rid": rid, "ok": True,
                                     "disk": self.room.fallback_path(h["oid"])})
                return

            def created(why: str, ra=ra, rid=rid) -> None:
                self.conns.send(ra, {"t": protocol.CREATE_OBJECT_REPLY, "rid": rid,
                                     "ok": not why, "msg": why})
            self.room.reserve(h["oid"], int(h["size"]), created, owner=h.get("wid", b""))
        elif t == protocol.OBJECT_SEALED:
            self.room.sealed(h["oid"])
            if h.get("disk"):  # a fallback file, never in /dev/shm (store_room.py)
                return
            self.spares.note(int(h["size"]))
            self.store_apply(self.store.handle(ostore.Seal(h["oid"], int(h["size"]),
                                                           primary=not h.get("secondary"))))
        elif t == protocol.FREE_OBJECTS:
            node = h.get("node")
            if node and node != self.node_id:  # the owner does not know that raylet: forward
                peer = self.view.tcp(node)
                if peer:
                    self.conns.send(peer, {"t": protocol.FREE_OBJECTS, "oids": h["oids"]})
                return
            self.om.freed(h["oids"])
            for oid in h["oids"]:
                self.room.cancel(oid)  # a writer that gave up before its seal
                if self.room.drop_fallback(oid):
                    continue
                if self.store.contains(oid):
                    self.store_apply(self.store.handle(ostore.Delete(oid)))
                elif not self.spares.recycle(self.shm_prefix + oid.hex()):
                    shm.unlink(self.shm_prefix + oid.hex())
        elif t == protocol.PULL_OBJECT:
            node = h.get("node")
            path = self.room.fallback.get(h["oid"])
            if path is not None:  # read in place from its file on disk
                self.conns.send(h["ra"], protocol.pull_done(h["rid"], True, path=path))
                return
            if node != self.node_id and not self.store.contains(h["oid"]):
                self.om.pull(h)  # on another node: copy it here (raylet/object_manager.py)
                return
            if self.store.is_spilled(h["oid"]):
                # Restored once it has room (store_room.py), before we answer.
                self.room.reserve(h["oid"], self.store.size_of(h["oid"]),
                                  lambda why, h=h: self._restore_for(h, why))
                return
            ok = False
            if self.store.contains(h["oid"]):
                ok = any(isinstance(a, ostore.Ready) for a in self.store_apply(
                    self.store.handle(ostore.Get(h["oid"]))))
            self.conns.send(h["ra"], protocol.pull_done(h["rid"], ok))
        elif t == protocol.CHUNK_REQUEST:
            self.om.serve(h)
        elif t == protocol.CHUNK:
            self.om.on_chunk(h, payload)
        elif t == protocol.CHUNKS_WRITTEN:
            self.om.on_written()
        elif t == protocol.OBJECT_LOCATIONS_REPLY:
            self.om.on_locations(h)
        elif t == protocol.PUBLISH:
            self._on_publish(h)
        elif t == protocol.CANCEL_LEASE_REQUEST:
            self.apply(self.sched.handle(sch.RequestCancelled(h["ra"], h["lrid"])))
        elif t == protocol.KILL_WORKER:  # the GCS ends a killed actor's worker
            self.kill_worker(h["wid"], signal.SIGKILL)
        elif t == protocol.WORKER_EXITING:
            pass  # the pidfd tells us when it is gone
        elif t == protocol.REGISTER_NODE_REPLY:
            self.gcs_address = h.get("gcs_address", "")
            self.gcs_watch.address = self.gcs_address or self.gcs_watch.address
            self._watch_gcs_process(h)
            self.apply_gcs(self.gcs_watch.handle(gw.Registered(time.monotonic(), h.get("gcs_start"))))
            # Clients that came first are answered now: once init() returns, the
            # node must be in the GCS (nodes(), cluster_resources()).
            waiting, self._early_clients = self._early_clients, []
            for eh in waiting:
                self._register_client(eh)
        elif t == protocol.SHUTDOWN:
            self.running = False
        elif t == protocol.PING:
            if "ra" in h:
                self.conns.send(h["ra"], {"t": protocol.PONG, "rid": h.get("rid")})
        elif t == protocol.PONG:  # the GCS answers our pings
            self.apply_gcs(self.gcs_watch.handle(gw.PongReceived(time.monotonic(), h.get("gcs_start"))))
        else:
            log.warning("unexpected message %s", protocol.NAMES.get(t, t))

    def _restore_for(self, h: dict, why: str) -> None:
        """PULL_OBJECT of a spilled object, once room was reserved for it (or not)."""
        reply = protocol.pull_done(h["rid"], False)
        if why:
            reply.update(full=True, msg=why)
        else:
            self.store.handle(ostore.Unreserve(h["oid"]))  # the restore counts its own bytes
            reply["ok"] = any(isinstance(a, ostore.Ready) for a in self.store_apply(
                self.store.handle(ostore.Get(h["oid"]))))
        self.conns.send(h["ra"], reply)

    def _register_client(self, h: dict) -> None:
        if not self.gcs_address:
            self._early_clients.append(h)
            return
        wid = h["wid"]
        if h.get("kind") == "worker":
            self.workers_addr[wid] = h["addr"]
            self.apply(self.sched.handle(sch.WorkerRegistered(wid)))
        else:
            self.drivers[wid] = h["ra"]
            self._watch_driver(wid, int(h.get("pid", 0)), h["ra"])
        self.conns.send(h["ra"], {
            "t": protocol.REGISTER_CLIENT_REPLY, "rid": h["rid"], "node": self.node_id,
            "gcs": self.gcs_addr, "gcs_address": self.gcs_address, "shm": self.shm_prefix,
            "raylet": self.address.pack(), "node_ip": self.node_ip,
            "gcs_down": self.gcs_watch.msg if self.gcs_watch.state == gw.DOWN else ""})

    # ---------------------------------------------------------------- GCS
    def _watch_gcs_process(self, h: dict) -> None:
        if self.gcs_fd is not None:
            self.poller.unregister(self.gcs_fd)
            os.close(self.gcs_fd)
        self.gcs_fd = process.watch(int(h.get("gcs_pid") or 0), h.get("gcs_id"))
        if self.gcs_fd is not None:
            self.poller.register(self.gcs_fd, zmq.POLLIN)

    def _gcs_exited(self) -> None:
        self.poller.unregister(self.gcs_fd)
        os.close(self.gcs_fd)
        self.gcs_fd = None
        self.apply_gcs(self.gcs_watch.handle(gw.ProcessExited(time.monotonic())))

    def apply_gcs(self, acts: list) -> None:
        for a in acts:
            if isinstance(a, gw.Ping):
                self._gcs_rid += 1
                self.gcs.send({"t": protocol.PING, "rid": self._gcs_rid, "ra": self._gcs_ra()})
            elif isinstance(a, gw.Register):
                self.register_with_gcs()
            elif isinstance(a, (gw.Down, gw.Up)):
                down = isinstance(a, gw.Down)
                if down:
                    log.error("%s", a.msg)
                else:
                    log.warning("the GCS at %s is back: registered again", self.gcs_watch.address)
                # Drivers and workers fail their GCS-bound calls fast while it is down.
                note = protocol.publish("gcs", "down" if down else "up",
                                        msg=a.msg if down else "")
                for ra in list(self.drivers.values()):
                    self.conns.send(ra, dict(note))
                for waddr in list(self.workers_addr.values()):
                    self.conns.send(waddr[1], dict(note))
            elif isinstance(a, gw.Stop):
                log.error("stopping this node: %s", a.msg)
                self.running = False

    def _gcs_ra(self) -> str:
        return self.address.ipc if self.gcs_addr.startswith("ipc://") else self.address.tcp

    # --------------------------------------------------------------- loop
    def report(self, now: float) -> None:
        self._dirty = False
        self._last_report = now
        if self.gcs_watch.state == gw.DOWN:
            return  # nobody listens; re-registration carries the state
        self.gcs.send({"t": protocol.HEARTBEAT, "node": self.node_id,
                       "avail": self.sched.available(), "used": self.store._used,
                       "workers": len(self.procs)})

    def register_with_gcs(self) -> None:
        # "workers": who still runs here, workers and drivers (a restarted GCS reconciles
        # its actors with it).
        self.gcs.send({"t": protocol.REGISTER_NODE, "node": self.node_id,
                       "addr": self.address.pack(), "ra": self._gcs_ra(),
                       "ip": self.node_ip, "res": self.sched.total, "head": self.is_head,
                       "session": self.session_dir, "shm": self.shm_prefix,
                       "store": self.capacity, "pid": os.getpid(),
                       "hostname": os.uname().nodename,
                       "workers": [*self.procs, *self.drivers]})
        self.gcs.send({"t": protocol.SUBSCRIBE, "ch": "node", "ra": self._gcs_ra()})

    def run(self) -> None:
        self.register_with_gcs()
        self.apply_gcs(self.gcs_watch.handle(gw.Started(time.monotonic())))
        self.start_workers(min(config.PRESTART_WORKERS, max(int(self.sched.total.get("CPU", 1)), 1)))
        self.sched.handle(sch.WorkersStarting(len(self.procs)))
        tick = 0.0
        while self.running:
            ready = dict(self.poller.poll(50))
            if ready:
                self.inbound.drain(ready, self.handle)
                for fd in [f for f in ready if isinstance(f, int) and f in self.pidfds]:
                    self._reap(fd)
                for fd in [f for f in ready if isinstance(f, int) and f in self.driver_fds]:
                    self._driver_gone(fd)
                if self.gcs_fd is not None and self.gcs_fd in ready:
                    self._gcs_exited()
            now = time.monotonic()
            if self._dirty and now - self._last_report > 0.02 or now - self._last_report > config.HEARTBEAT_S:
                self.report(now)
            if config.MEMORY_MONITOR_REFRESH_MS > 0 and now >= self._memory_next:
                self._memory_next = now + config.MEMORY_MONITOR_REFRESH_MS / 1000
                self.check_memory(now)
            if now - tick > 0.25:
                tick = now
                self.apply(self.sched.handle(sch.Tick(now, config.INFEASIBLE_WARN_S)))
                self.om.tick(now)
                self.room.retry(now)
                self.apply_gcs(self.gcs_watch.handle(gw.Tick(now)))
        self.shutdown()

    def shutdown(self) -> None:
        self.gcs.send({"t": protocol.UNREGISTER_NODE, "node": self.node_id})
        if self.gcs_fd is not None:
            os.close(self.gcs_fd)
            self.gcs_fd = None
        for p in self.procs.values():
            try:
                p.terminate()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        for p in self.procs.values():
            try:
                p.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for wid in self.procs:
            self._remove_worker_socket(wid)
        self.spares.stop()
        log.debug("spares: %s", self.spares.stats)
        self.store_exec.cleanup()
        self.om.close()
        if self.zygote is not None:
            self.zygote.stop()
        shm.remove_all(self.shm_prefix)
        self.inbound.close()
        self.conns.close()
        try:
            os.unlink(self.address.ipc[len("ipc://"):])
        except OSError:
            pass


def _rss(pid: int) -> int | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:
        return None
