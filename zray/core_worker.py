"""The CoreWorker: the runtime object shared by drivers and workers.

It submits tasks straight to leased workers, owns the objects it creates
(reference counts, values, locations) and resolves the values it needs.

Threads: the user's threads call submit/get/put/wait; inbound messages are
received by whichever thread holds the polling role (leader/follower, see
``_wait_until``): a thread blocked in get/wait/request polls the inbound sockets
itself, so the reply it waits for costs no thread hand-off; the I/O thread polls
when no such thread does, and runs timers. All touch the tables below under one
lock. Sends go out directly from the calling thread (protocol.Conn has its own
lock), so a task submission costs no thread hand-off either.
"""

from __future__ import annotations

import _signal
import collections
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import zmq

from zray import config, ids, protocol, recovery, serialization
from zray import exceptions as exc
from zray.object_ref import ObjectRef, ObjectRefGenerator
from zray.objstore import shm
from zray.protocol import Address

log = logging.getLogger("zray.core_worker")

PENDING, READY, FAILED = 0, 1, 2
# Return/arg descriptor kinds on the wire
INLINE, STORED = 0, 1
# CoreWorker._leader when the I/O thread polls (otherwise a thread ident, or None).
IO = -1
# The polling role left free by a user thread goes back to the I/O thread once no
# thread has taken it for this long (messages wait at most about twice this then).
LEAD_IDLE_S = 0.002
# The I/O thread's period (timers, liveness, lease returns).
TICK_S = 0.05

# A message handler: (the CoreWorker, header, payload), run on the polling thread.
Handler = Callable[["CoreWorker", dict, list], None]


class ActorCalls(Protocol):
    """What CoreWorker asks of the actor submitter (zray/actor_submitter.py) about a
    Task whose ``actor`` field is set. It registers itself with
    ``CoreWorker.register_actor_calls`` so this module need not import it."""

    def on_task_reply(self, t: Task, h: dict, payload: list) -> None: ...

    def cancel(self, t: Task, recursive: bool) -> None: ...


class Waiter:
    """A thread blocked in ``CoreWorker._wait_until``, and how to wake it (lock held).

    A follower sleeps on its Condition. The leader sleeps in zmq poll: another
    thread wakes it through the wake pipe; its own handlers need no wake-up (it
    checks again after every batch of messages).
    """

    __slots__ = ("cw", "ident", "cond", "leading", "sticky")

    def __init__(self, cw: CoreWorker, sticky: bool | None = None):
        self.cw = cw
        self.ident = threading.get_ident()
        self.cond: threading.Condition | None = None
        self.leading = False
        # Sticky: the thread is expected to wait again soon (a driver's loop of gets, an
        # actor's main thread between calls), so the role stays free for it when it
        # returns. Otherwise (a task's get in a worker) the I/O thread takes it at once.
        self.sticky = cw.mode == "driver" if sticky is None else sticky

    def notify(self) -> None:
        if self.leading:
            if threading.get_ident() != self.ident:
                self.cw._poke()
        elif self.cond is not None:
            self.cond.notify()


class _AnyWaiter:
    """A thread blocked in wait(): woken once ``need`` of ``ids`` became ready."""

    __slots__ = ("ids", "need", "hit_ids", "waiter")

    def __init__(self, ids_: set, need: int, waiter: Waiter):
        self.ids = ids_
        self.need = need
        self.hit_ids: list = []  # those of ids that became ready, in that order
        self.waiter = waiter


class Entry:
    """One object this process owns or borrows."""

    __slots__ = ("state", "frames", "node", "size", "local", "pins", "borrowers", "owned",
                 "owner", "contained", "waiters", "callbacks", "fetching", "task_id",
                 "is_error", "locs")

    def __init__(self, owned: bool, owner: list | None = None):
        self.state = PENDING
        self.frames: list | None = None  # inline value or error
        self.node: bytes | None = None  # node holding the stored value
        self.size = 0
        self.local = 0  # ObjectRef instances in this process
        self.pins = 0  # task args, containing objects, generators
        self.borrowers: set[str] | None = None  # made on first borrower: most never get one
        self.owned = owned
        self.owner = owner
        self.contained: list | None = None  # (oid, owner) nested in the value
        self.waiters: list | None = None  # borrowers' GET_OBJECT requests
        self.callbacks: list | None = None
        self.fetching = False
        self.task_id: bytes | None = None
        self.is_error = False
        self.locs: set | None = None  # other nodes with a copy (recovery.py)

    def add_borrower(self, addr: str) -> None:
        if self.borrowers is None:
            self.borrowers = set()
        self.borrowers.add(addr)


class Task:
    """A task this process submitted and still owns."""

    __slots__ = ("tid", "fn_id", "fname", "args", "kwnames", "deps", "key", "res", "retries",
                 "retry_exc", "nret", "oids", "state", "worker", "cancelled", "parent",
                 "max_calls", "gen", "strategy", "gen_count", "gen_done", "arg_pins",
                 "attempt", "warned", "env", "actor")

    def __init__(self):
        self.actor = None  # an actor call: its actor_submitter.Call
        self.deps = 0
        self.state = "waiting"  # waiting -> queued -> running -> done
        self.worker = None
        self.cancelled = False
        self.gen = False
        self.gen_count = 0
        self.gen_done = False
        self.attempt = 0
        self.warned = False


class LeasedWorker:
    __slots__ = ("wid", "addr", "lease", "node", "inflight", "idle_since", "res", "raylet",
                 "dead", "long")

    def __init__(self, wid, addr, lease, node, res, raylet):
        self.wid = wid
        self.addr = addr
        self.lease = lease
        self.node = node
        self.inflight: dict[bytes, Task] = {}
        self.idle_since = time.monotonic()
        self.res = res
        self.raylet = raylet
        self.dead = False
        self.long = False  # handed tasks back: its running task is long or blocked


class KeyState:
    __slots__ = ("queue", "workers", "pending_leases", "res", "strategy", "task_s", "no_pipe")

    def __init__(self, res: dict, strategy: Any):
        self.queue: collections.deque[Task] = collections.deque()
        self.workers: dict[bytes, LeasedWorker] = {}
        self.pending_leases: dict[int, float] = {}
        self.res = res
        self.strategy = strategy
        # Recent run time of this key's tasks (workers report it): pipelining is
        # only for keys whose tasks are known to be short.
        self.task_s: float | None = None
        self.no_pipe = False  # a max_calls task was seen: its worker may exit after it

    def ran(self, dt: float) -> None:
        if dt > config.PIPELINE_MAX_TASK_S or self.task_s is None:
            self.task_s = dt  # one long task stops pipelining at once
        else:
            self.task_s = 0.7 * self.task_s + 0.3 * dt

    def depth(self) -> int:
        if self.no_pipe or self.task_s is None or self.task_s > config.PIPELINE_MAX_TASK_S:
            return 1
        return config.MAX_TASKS_IN_FLIGHT


class CoreWorker:
    def __init__(self, *, mode: str, session_dir: str, node_id: bytes, raylet_ipc: str,
                 secret: bytes | None, job_id: bytes, node_ip: str = "127.0.0.1",
                 worker_id: bytes | None = None, shm_prefix: str = "",
                 driver_addr: list | None = None, namespace: str | None = None):
        self.mode = mode  # "driver" or "worker"
        self.session_dir = session_dir
        self.node_id = node_id
        self.node_ip = node_ip
        self.job_id = job_id
        self.worker_id = worker_id or ids.new_unique_id()
        self.secret = secret
        self.namespace = namespace
        self.shm_prefix = shm_prefix
        self.lock = threading.RLock()
        self.cv = threading.Condition(self.lock)  # generator items (next_generator_ref)
        self._any_waiters: list[_AnyWaiter] = []  # threads blocked in wait()
        self._ready_log: collections.deque = collections.deque(maxlen=4096)  # _on_ready's oids
        self._ready_seq = 0  # objects readied so far (the log's end)
        # api.wait: (the not_ready list it returned last, that list's ids, when); the I/O
        # thread drops it after a second so the refs in it are not kept alive long.
        self.wait_memo: tuple | None = None
        self._cv_waiters = 0
        self.objects: dict[bytes, Entry] = {}
        self.tasks: dict[bytes, Task] = {}
        self.keys: dict[Any, KeyState] = {}
        self.requests: dict[int, list] = {}  # rid -> [event, header, payload]
        self._rid = 0
        self._lease_rid = 0
        self.lease_reqs: dict[int, Any] = {}
        self.exported: set[bytes] = set()
        self._decrefs: collections.deque = collections.deque()
        self._borrow_releases: collections.deque = collections.deque()
        self.children: dict[bytes, set] = {}  # parent task id -> child task ids
        # Other nodes (recovery.py): their raylets, deaths, lineage of stored values.
        self.raylet_addrs: dict[bytes, str] = {}
        self.dead_nodes: set[bytes] = set()
        self.lineage: dict[bytes, Task] = {}
        self.lease_dest: dict[int, str] = {}  # lease request id -> raylet asked
        self.gcs_address = ""
        self.current_task_id: bytes | None = None
        self.current_task_name = ""
        self.assigned_resources: dict = {}
        self.blocked_depth = 0
        self.conns = protocol.Connections(secret)
        self._addr_cache: dict[tuple, str] = {}  # addr_of: packed address -> this node's way
        sock_dir = os.path.join(session_dir, "sockets")
        self.inbound = protocol.Inbound(
            os.path.join(sock_dir, "w-" + self.worker_id.hex()[:12]),
            node_ip if secret else None, secret, copy=True)
        self.address = Address(node_id, self.inbound.ipc_addr, self.inbound.tcp_addr)
        self.address_packed = self.address.pack()
        self.driver_addr = driver_addr or self.address_packed
        self.raylet_ipc = raylet_ipc
        self.raylet = self.conns.get(raylet_ipc)
        self.gcs = ""  # set from the raylet's registration reply
        # Set while our raylet says the GCS is unreachable: GCS-bound calls fail fast with it.
        self.gcs_down = ""
        self._gcs_news = False  # a PUBLISH ch=gcs came (newer than the registration reply)
        self.on_push_task = None  # set by the worker's executor
        self.on_blocked = None  # executor: the running task blocks in get/wait
        self.on_tick = None  # executor: called by the I/O thread every tick
        self.on_cancel_task = None
        # Actor calls made by this process (made on first use: actor_calls()).
        self.actor_submitter: ActorCalls | None = None
        self.log_sink: Callable[[dict, list], None] | None = None  # driver: prints LOG_LINES
        self._liveness: dict[str, list] = {}  # addr -> [last ping sent, outstanding rid]
        self._fetching: dict[bytes, Entry] = {}  # borrowed objects asked of their owners
        self._ping_rids: dict[int, str] = {}
        self._last_liveness = time.monotonic()
        self._running = True
        # The polling role (leader/follower, see _wait_until), all under self.lock.
        self._leader: int | None = None  # IO, the ident of a user thread, or None (free)
        self._lead_gen = 0  # counts user threads taking the role (the I/O thread's clock)
        self._followers: list[Waiter] = []  # threads waiting while another one polls
        self._yield_asked = False  # a follower wants the role the I/O thread holds
        self._io_cond = threading.Condition(self.lock)  # the I/O thread, when not polling
        self._io_parked_long = False
        self._io_take = False  # the I/O thread should take the free role now
        self._wake_r, self._wake_w = os.pipe()  # wakes whichever thread polls
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._poller = zmq.Poller()
        self.inbound.register(self._poller)
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._poll_items = self._poller.sockets
        self._main = threading.main_thread().ident  # where SIGINT raises
        self._sock_keys = dict(self.inbound.socks)
        self.io_thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)
        self.io_thread.start()

    # ------------------------------------------------------------------ utils
    def my_addr_for(self, dest: str) -> str:
        return self.address.ipc if dest.startswith("ipc://") else self.address.tcp

    def addr_of(self, packed: list) -> str:
        key = tuple(packed)
        a = self._addr_cache.get(key)
        if a is None:
            a = Address.unpack(packed).for_node(self.node_id)
            if len(self._addr_cache) >= 4096:
                self._addr_cache.clear()
            self._addr_cache[key] = a
        return a

    def request(self, dest: str, header: dict, payload: list | tuple = (),
                timeout: float | None = None, alive=None) -> tuple[dict, list]:
        """Send a request and wait for the reply (matched by rid).

        ``alive``, if given, is polled while waiting: when it returns a message,
        the peer is known dead and that message is raised as RuntimeError.
        A request to the GCS fails with RpcError as soon as the raylet reports it down.
        """
        if dest == self.gcs and alive is None:
            if self.gcs_down:
                raise exc.RpcError(self.gcs_down, rpc_code=exc.RpcError.UNAVAILABLE)
            alive = self._gcs_alive
        w = Waiter(self)
        with self.lock:
            self._rid += 1
            rid = self._rid
            slot = [w, None, None]
            self.requests[rid] = slot
        header["rid"] = rid
        header["ra"] = self.my_addr_for(dest)
        self.conns.send(dest, header, payload)
        limit = config.RPC_TIMEOUT_S if timeout is None else timeout
        deadline = time.monotonic() + limit

        def answered() -> bool:
            return slot[1] is not None

        while True:
            step = deadline if alive is None else min(deadline, time.monotonic() + 0.1)
            with self.lock:
                if self._wait_until(w, answered, step):
                    return slot[1], slot[2]
                if time.monotonic() >= deadline:
                    self.requests.pop(rid, None)
                    raise TimeoutError(
                        f"no reply from {dest} to {protocol.NAMES.get(header['t'])} within "
                        f"{limit} s")
            dead = alive() if alive is not None else None
            if dead:
                with self.lock:
                    self.requests.pop(rid, None)
                raise dead if isinstance(dead, Exception) else RuntimeError(dead)

    def registered_gcs_status(self, down: str) -> None:
        """The raylet's registration reply said (gcs_down): unless newer news came meanwhile
        (the I/O thread may have handled a PUBLISH ch=gcs before the caller got here)."""
        with self.lock:
            if not self._gcs_news:
                self.gcs_down = down

    def _gcs_alive(self) -> Exception | None:
        down = self.gcs_down
        return exc.RpcError(down, rpc_code=exc.RpcError.UNAVAILABLE) if down else None

    def _complete(self, h: dict, payload: list) -> None:
        """A reply to request() (lock held)."""
        slot = self.requests.pop(h.get("rid"), None)
        if slot is not None:
            slot[1], slot[2] = h, payload
            slot[0].notify()

    # ------------------------------------------------------------- references
    def add_local_ref(self, oid: bytes, owner: list | None) -> None:
        with self.lock:
            e = self.objects.get(oid)
            if e is None:
                owned = owner is None or owner[1] == self.address.ipc and owner[0] == self.node_id
                e = Entry(owned, owner)
                self.objects[oid] = e
                if not owned:
                    self._send_owner(owner, {"t": protocol.ADD_BORROWER, "oid": oid,
                                             "b": self.address_packed})
            elif not e.owned and e.local == 0 and e.pins == 0:
                # Re-borrow after we told (or are about to tell) the owner we were done.
                self._send_owner(e.owner, {"t": protocol.ADD_BORROWER, "oid": oid,
                                           "b": self.address_packed})
            e.local += 1

    def remove_local_ref(self, oid: bytes) -> None:
        self._decrefs.append(oid)  # processed by the I/O thread: __del__ may run anywhere

    def _send_owner(self, owner: list, header: dict, payload: list | tuple = ()) -> None:
        try:
            self.conns.send(self.addr_of(owner), header, payload)
        except ConnectionError as e:
            log.warning("cannot reach owner: %s", e)

    def _process_decrefs(self) -> None:
        dq = self._decrefs
        if not dq:
            return
        with self.lock:
            while dq:
                oid = dq.popleft()
                e = self.objects.get(oid)
                if e is None:
                    continue
                e.local -= 1
                self._maybe_release(oid, e)

    def _maybe_release(self, oid: bytes, e: Entry) -> None:
        """Free an owned object, or end a borrow, once nothing here holds it."""
        if e.local > 0 or e.pins > 0:
            return
        if e.owned:
            if e.borrowers:
                return
            self._free_owned(oid, e)
        else:
            del self.objects[oid]
            self._borrow_releases.append((time.monotonic() + config.BORROW_RELEASE_DELAY_S,
                                          oid, e.owner))
            self._release_contained(e)

    def _free_owned(self, oid: bytes, e: Entry) -> None:
        del self.objects[oid]
        if e.state == READY and e.node is not None:
            recovery.free_copies(self, oid, e)
        self._release_contained(e)
        recovery.release_lineage(self, e)
        e.frames = None

    def _raylet_for(self, node: bytes) -> str:
        return recovery.raylet_for(self, node)

    def _release_contained(self, e: Entry) -> None:
        if e.contained:
            for coid, _owner in e.contained:
                ce = self.objects.get(coid)
                if ce is not None:
                    ce.pins -= 1
                    self._maybe_release(coid, ce)
            e.contained = None

    def _pin_refs(self, refs: list) -> list:
        """Pin refs nested in a value this process keeps (args, put values)."""
        out = []
        for r in refs:
            e = self.objects.get(r._id)
            if e is None:
                continue
            e.pins += 1
            out.append((r._id, r._owner))
        return out

    def _flush_borrow_releases(self, now: float) -> None:
        dq = self._borrow_releases
        while dq and dq[0][0] <= now:
            _, oid, owner = dq.popleft()
            with self.lock:
                if oid in self.objects:
                    continue  # borrowed again meanwhile
            self._send_owner(owner, {"t": protocol.REMOVE_BORROWER, "oid": oid,
                                     "b": self.address_packed})

    # -------------------------------------------------------------- objects
    def put(self, value: Any, owner_frames: list | None = None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError(
                "Calling 'put' on an ObjectRef is not allowed. If you really want to do "
                "this, you can wrap the ObjectRef in a list and call 'put' on it.")
        frames, refs = serialization.serialize(value, "object passed to put()")
        oid = ids.new_put_id()
        size = serialization.frames_size(frames)
        if size > config.INLINE_MAX:  # first: ObjectStoreFullError leaves nothing behind
            self._store(oid, frames, size)
        with self.lock:
            e = Entry(True)
            self.objects[oid] = e
            e.contained = self._pin_refs(refs) or None
            e.task_id = None
        if size > config.INLINE_MAX:
            with self.lock:
                e.node, e.size, e.state = self.node_id, size, READY
        else:
            with self.lock:
                e.frames, e.size, e.state = frames, size, READY
        return ObjectRef(oid, self.address_packed)

    def _store(self, oid: bytes, frames: list, size: int) -> int:
        """Write a value into this node's shared-memory store, in room the raylet reserved."""
        total = shm.layout_size(frames)
        h, _ = self.request(self.raylet_ipc, {"t": protocol.CREATE_OBJECT, "oid": oid,
                                              "size": total, "wid": self.worker_id})
        if not h.get("ok"):
            raise exc.ObjectStoreFullError(h.get("msg") or "object store full")
        disk = h.get("disk")  # larger than the whole store: a file on disk (raylet/store_room.py)
        try:
            total = shm.create_file(disk, frames) if disk else shm.create(
                self.shm_prefix + oid.hex(), frames)
        except BaseException:
            self.raylet.send({"t": protocol.CREATE_OBJECT, "oid": oid, "cancel": True})
            raise
        self.raylet.send({"t": protocol.OBJECT_SEALED, "oid": oid, "size": total,
                          "own": self.address_packed, "disk": bool(disk)})
        return total

    def _read_stored(self, oid: bytes, node: bytes, owner: list | None) -> list:
        name = self.shm_prefix + oid.hex()
        try:
            return shm.read(name)
        except FileNotFoundError:
            pass
        # Not in local memory: the raylet restores it from disk or pulls it from a peer.
        h, _ = self.request(self.raylet_ipc, {"t": protocol.PULL_OBJECT, "oid": oid, "node": node,
                                              "own": owner})
        if not h.get("ok"):
            if h.get("full"):  # no room to restore or copy it here
                raise exc.ObjectStoreFullError(h.get("msg"))
            raise exc.ObjectLostError(oid.hex(), str(owner))
        return shm.read_file(h["path"]) if h.get("path") else shm.read(name)

    def _value_of(self, oid: bytes, e: Entry) -> Any:
        if e.frames is not None:
            frames = e.frames
        else:
            frames = self._read_stored(oid, e.node, e.owner if not e.owned else self.address_packed)
        value = serialization.deserialize(frames)
        if e.is_error:
            raise _as_raisable(value)
        return value

    def _ensure_fetch(self, oid: bytes, e: Entry) -> None:
        """Ask a borrowed object's owner for its value or location (once)."""
        if e.owned or e.fetching or e.state != PENDING:
            return
        e.fetching = True
        self._fetching[oid] = e
        owner = e.owner
        try:
            dest = self.addr_of(owner)
        except ConnectionError as err:
            self._set_failed_local(oid, e, exc.OwnerDiedError(oid.hex(), owner))
            log.warning("%s", err)
            return
        self.conns.send(dest, {"t": protocol.GET_OBJECT, "oid": oid,
                               "ra": self.my_addr_for(dest)})

    def _set_failed_local(self, oid: bytes, e: Entry, err: BaseException) -> None:
        e.frames, _ = serialization.serialize(err)
        e.is_error = True
        e.state = FAILED
        self._on_ready(oid, e)

    def _entry_for(self, ref: ObjectRef) -> Entry:
        e = self.objects.get(ref._id)
        if e is None:
            # A ref made in another process reached us without registration.
            e = Entry(False, ref._owner)
            self.objects[ref._id] = e
        return e

    def _await(self, entries: list, need: int, stop_on_fail: bool,
               deadline: float | None) -> bool:
        """Wait (lock held) until ``need`` entries are resolved, or one failed.

        Each pending entry gets a callback, so a waiter wakes once per object
        instead of rescanning every entry on every wake-up. False on timeout.
        """
        done = failed = 0
        for e in entries:
            if e.state != PENDING:
                done += 1
                failed += e.state == FAILED
        if done >= need or (stop_on_fail and failed):
            return True  # no callbacks to set up: wait() in a loop stays O(n)
        w = Waiter(self)
        if len(entries) == 1:  # the common get(ref): the waiter is the callback
            e1 = entries[0]
            if e1.callbacks is None:
                e1.callbacks = []
            e1.callbacks.append(w.notify)
            return self._await_blocked(w, lambda: e1.state != PENDING, deadline,
                                       [(e1, w.notify)])
        st = [0, False]  # resolved count, any failed
        mine = []
        for e in entries:
            if e.state == PENDING:
                def cb(e=e):
                    st[0] += 1
                    if e.state == FAILED:
                        st[1] = True
                    if st[0] >= need or (stop_on_fail and st[1]):
                        w.notify()
                if e.callbacks is None:
                    e.callbacks = []
                e.callbacks.append(cb)
                mine.append((e, cb))
            else:
                st[0] += 1
                if e.state == FAILED:
                    st[1] = True
        if st[0] >= need or (stop_on_fail and st[1]):
            for e, cb in mine:
                e.callbacks.remove(cb)
            return True
        def done() -> bool:
            return st[0] >= need or (stop_on_fail and st[1])

        return self._await_blocked(w, done, deadline, mine)

    def _await_blocked(self, w: Waiter, done, deadline: float | None, mine: list) -> bool:
        """_await's wait (lock held); removes the callbacks in ``mine`` at the end."""
        blocked = False
        try:
            left = None if deadline is None else deadline - time.monotonic()
            if left is None or left > 0.01:
                blocked = True
                self._notify_blocked(True)
            return self._wait_until(w, done, deadline)
        finally:
            if blocked:
                self._notify_blocked(False)
            for e, cb in mine:
                if e.state == PENDING and e.callbacks:
                    try:
                        e.callbacks.remove(cb)
                    except ValueError:
                        pass

    def _entries(self, refs: list) -> list:
        # Hot in wait() loops over long lists: inline lookups, fetch only what must be.
        objs = self.objects
        entries = []
        append = entries.append
        for r in refs:
            e = objs.get(r._id)
            if e is None:
                e = self._entry_for(r)
            if e.state == PENDING and not e.owned and not e.fetching:
                self._ensure_fetch(r._id, e)
            append(e)
        return entries

    def get(self, refs: list, timeout: float | None) -> list:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            entries = self._entries(refs)
            if not self._await(entries, len(entries), True, deadline):
                raise exc.GetTimeoutError(
                    f"Get timed out: some object(s) not ready after {timeout} s.")
        for r, e in zip(refs, entries):
            if e.state == FAILED:
                self._value_of(r._id, e)  # raises as soon as any input failed
        return [self._value_of(r._id, e) for r, e in zip(refs, entries)]

    def _notify_blocked(self, blocked: bool) -> None:
        # A worker waiting in get() gives its CPU back so nested tasks can run.
        if self.mode != "worker" or self.current_task_id is None:
            return
        self.raylet.send({"t": protocol.WORKER_BLOCKED if blocked else protocol.WORKER_UNBLOCKED,
                          "wid": self.worker_id})
        if blocked and self.on_blocked is not None:
            self.on_blocked()  # what waits behind this task may be what it waits for

    def wait(self, refs: list, num_returns: int, timeout: float | None, fetch_local: bool,
             ids_: set | None = None, known: tuple | None = None) -> tuple[list, list, Any]:
        """Ray's wait: the first ``num_returns`` ready refs in input order, and the rest.

        Made for a loop that waits on what the last call left (``ray_perf``'s wait
        1k refs), so that a call costs O(1) Python steps, not O(len(refs)):

        - a scan from the front stops at the ``num_returns``-th ready ref;
        - a blocked call registers one waiter for the whole list (the set of its ids,
          ``ids_``) instead of a callback per object, and learns which became ready;
        - ``known``, from the previous call on this very list: ``(seq, ready_ids)``,
          meaning every ref of it was pending except ``ready_ids`` when
          ``_ready_seq`` was ``seq``; the objects readied since are in ``_ready_log``.
          Then nothing needs scanning. Returned for the not-ready part (or None).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            log = self._ready_log
            if known is not None and self._ready_seq - known[0] <= len(log):
                cand = set(known[1])
                since = self._ready_seq - known[0]
                if since:
                    for oid in itertools.islice(log, len(log) - since, None):
                        if oid in ids_:
                            cand.add(oid)
                objs = self.objects
                # (an object lost with its node is pending again while it is rebuilt)
                cand = {o for o in cand if (e := objs.get(o)) is not None and e.state != PENDING}
                ready = self._add_hits(refs, [], cand, num_returns) if cand else []
                full = True  # every ready ref of the list is in cand
            else:
                ready = self._scan_ready(refs, num_returns)
                full = len(ready) < num_returns  # scanned to the end
                cand = None
            if len(ready) < num_returns and (timeout is None or timeout > 0):
                aw = _AnyWaiter(ids_ if ids_ is not None else {r._id for r in refs},
                                num_returns - len(ready), Waiter(self))
                last_scan = [time.monotonic()]

                def done() -> bool:
                    if len(aw.hit_ids) >= aw.need:
                        return True
                    now = time.monotonic()
                    if now - last_scan[0] < 1.0:
                        return False
                    # A list changed in place since the caller took its ids wakes
                    # nobody: look again now and then.
                    last_scan[0] = now
                    return len(self._scan_ready(refs, num_returns)) >= num_returns

                self._any_waiters.append(aw)
                left = None if deadline is None else deadline - time.monotonic()
                blocked = left is None or left > 0.01
                try:
                    if blocked:
                        self._notify_blocked(True)
                    self._wait_until(aw.waiter, done, deadline)
                finally:
                    self._any_waiters.remove(aw)
                    if blocked:
                        self._notify_blocked(False)
                if len(aw.hit_ids) >= aw.need:
                    ready = self._add_hits(refs, ready, aw.hit_ids, num_returns)
                    cand = set(aw.hit_ids)
                else:  # deadline, or found by a rescan
                    ready = self._scan_ready(refs, num_returns)
                    full = len(ready) < num_returns
                    cand = set()
            nxt = None
            if full:
                picked = {refs[i]._id for i in ready}
                nxt = (self._ready_seq, (cand or set()) - picked)
        if len(ready) == 1:
            i = ready[0]
            return [refs[i]], refs[:i] + refs[i + 1:], nxt
        if not ready:
            return [], list(refs), nxt
        mark = set(ready)
        return ([refs[i] for i in ready], [r for i, r in enumerate(refs) if i not in mark],
                nxt)

    def _scan_ready(self, refs: list, need: int) -> list:
        """Indices of the first ``need`` ready refs (lock held); fetches what must be."""
        objs = self.objects
        ready: list = []
        i = -1
        try:
            for r in refs:
                i += 1
                e = objs.get(r._id)
                if e is None:
                    e = self._entry_for(r)
                if e.state != PENDING:
                    ready.append(i)
                    if len(ready) == need:
                        break
                elif not e.owned and not e.fetching:
                    self._ensure_fetch(r._id, e)
        except AttributeError:
            raise TypeError(f"wait() expected a list of zray.ObjectRef, got list containing "
                            f"{type(refs[i])}") from None
        return ready

    @staticmethod
    def _add_hits(refs: list, ready: list, hit_ids: list, need: int) -> list:
        """``ready`` plus the indices of ``hit_ids`` (became ready while blocked), first ``need``.

        Looks from the front only as far as the hits are: in a wait loop they are near it.
        """
        want = set(hit_ids)
        idx = list(ready)
        for i, r in enumerate(refs):
            if r._id in want:
                idx.append(i)
                want.discard(r._id)
                if not want:
                    break
        idx.sort()
        return idx[:need]

    def run_when_ready(self, oid: bytes, fn) -> None:
        with self.lock:
            e = self.objects.get(oid)
            if e is None or e.state != PENDING:
                threading.Thread(target=fn, daemon=True).start()
                return
            self._ensure_fetch(oid, e)
            if e.callbacks is None:
                e.callbacks = []
            e.callbacks.append(lambda: threading.Thread(target=fn, daemon=True).start())

    def _on_ready(self, oid: bytes, e: Entry) -> None:
        """An object became ready or failed: wake getters, dependents and borrowers."""
        if self._cv_waiters:
            self.cv.notify_all()
        if self._any_waiters:
            for aw in self._any_waiters:
                if oid in aw.ids:
                    aw.hit_ids.append(oid)
                    if len(aw.hit_ids) == aw.need:
                        aw.waiter.notify()
        self._ready_log.append(oid)  # for wait(): what became ready since its last call
        self._ready_seq += 1
        if e.callbacks:
            cbs, e.callbacks = e.callbacks, None
            for cb in cbs:
                cb()
        if e.waiters:
            ws, e.waiters = e.waiters, None
            for ra in ws:
                self._send_value(ra, oid, e)

    def _send_value(self, ra: str, oid: bytes, e: Entry) -> None:
        h = {"t": protocol.OBJECT_VALUE, "oid": oid, "st": e.state, "err": e.is_error}
        if e.frames is not None:
            self.conns.send(ra, h, e.frames)
        else:
            h["node"] = e.node
            h["size"] = e.size
            self.conns.send(ra, h)

    # ------------------------------------------------------------ submission
    def export_function(self, fn_id: bytes, blob: bytes) -> None:
        if fn_id in self.exported:
            return
        self.request(self.gcs, {"t": protocol.KV_PUT, "ns": "fn", "k": fn_id}, [blob])
        self.exported.add(fn_id)

    def submit_task(self, fn_id: bytes, fname: str, args: tuple, kwargs: dict,
                    opts: dict) -> Any:
        t = Task()
        t.tid = ids.new_task_id()
        t.fn_id = fn_id
        t.fname = fname
        nret = opts["num_returns"]
        t.gen = nret == "streaming"
        t.nret = -1 if t.gen else nret
        t.retries = opts["max_retries"]
        t.retry_exc = opts["retry_exceptions"]
        t.max_calls = opts["max_calls"]
        t.res = opts["_resources"]
        t.strategy = opts.get("scheduling_strategy")
        t.env = (opts.get("runtime_env") or {}).get("env_vars") or None
        t.parent = self.current_task_id
        t.kwnames = list(kwargs)
        # Serialise arguments now: a bad value fails at .remote(), as in Ray.
        argv = []
        nested: list = []
        for i, a in enumerate((*args, *kwargs.values())):
            if isinstance(a, ObjectRef):
                argv.append(a)
            else:
                frames, refs = serialization.serialize(
                    a, f"argument {i} of {fname}" if i < len(args) else
                    f"argument {t.kwnames[i - len(args)]!r} of {fname}")
                if refs:
                    nested.extend(refs)
                size = serialization.frames_size(frames)
                if size > config.INLINE_MAX:
                    argv.append(self.put_frames(frames, size, refs))
                else:
                    argv.append(frames)
        t.args = argv
        n_oids = t.nret if t.nret > 0 else (1 if t.nret == 0 else 0)
        t.oids = [ids.object_id_for(t.tid, i + 1) for i in range(max(n_oids, 0))]
        key = (tuple(sorted(t.res.items())), _strategy_key(t.strategy))
        with self.lock:
            self._register_task(t)
            if t.gen:
                t.gen_count = 0
            # Pin what the task needs until it is done.
            pins = []
            for a in argv:
                if isinstance(a, ObjectRef):
                    e = self._entry_for(a)
                    e.pins += 1
                    pins.append(a._id)
            for r in nested:
                e = self.objects.get(r._id)
                if e is not None:
                    e.pins += 1
                    pins.append(r._id)
            t.arg_pins = pins
            t.key = key
            if key not in self.keys:
                self.keys[key] = KeyState(t.res, t.strategy)
            if t.max_calls:
                self.keys[key].no_pipe = True
            self._resolve_deps(t)
            refs_out = self._returns_of(t, nret)
        if nret == 0:
            self.drop_hidden_return(t)
        return refs_out

    def drop_hidden_return(self, t: Task) -> None:
        """num_returns=0: the task still runs; its hidden return object is dropped unused."""
        with self.lock:
            e = self.objects.get(t.oids[0])
            if e is not None:
                self._maybe_release(t.oids[0], e)

    def _returns_of(self, t: Task, nret: Any) -> Any:
        """What .remote() hands back: None, an ObjectRefGenerator, a ref or a list."""
        if nret == 0:
            return None
        if t.gen:
            return ObjectRefGenerator(t.tid, self)
        # The refs count at their entries here (lock held), as add_local_ref would.
        objs = self.objects
        me = self.address_packed
        refs = []
        for oid in t.oids:
            r = ObjectRef(oid, me, _register=False)
            r._cw = self
            objs[oid].local += 1
            refs.append(r)
        return refs[0] if nret == 1 else refs

    def _register_task(self, t: Task) -> None:
        """Own a new task and its (pending) return objects. Lock held."""
        self.tasks[t.tid] = t
        if t.parent is not None:
            self.children.setdefault(t.parent, set()).add(t.tid)
        for oid in t.oids:
            e = Entry(True)
            e.task_id = t.tid
            self.objects[oid] = e

    def put_frames(self, frames: list, size: int, refs: list) -> ObjectRef:
        oid = ids.new_put_id()
        self._store(oid, frames, size)
        with self.lock:
            e = Entry(True)
            e.node, e.size, e.state = self.node_id, size, READY
            e.contained = self._pin_refs(refs) or None
            self.objects[oid] = e
        return ObjectRef(oid, self.address_packed)

    def _resolve_deps(self, t: Task) -> None:
        deps = 0
        for a in t.args:
            if isinstance(a, ObjectRef):
                e = self.objects[a._id]
                if e.state == PENDING:
                    deps += 1
                    self._ensure_fetch(a._id, e)
                    if e.callbacks is None:
                        e.callbacks = []
                    e.callbacks.append(lambda t=t: self._dep_ready(t))
        t.deps = deps
        if deps == 0:
            self._enqueue(t)

    def _dep_ready(self, t: Task) -> None:
        t.deps -= 1
        if t.deps == 0 and t.state == "waiting":
            self._enqueue(t)

    def _enqueue(self, t: Task) -> None:
        # A failed dependency fails the task without running it (errors flow on).
        for a in t.args:
            if isinstance(a, ObjectRef):
                e = self.objects.get(a._id)
                if e is not None and e.state == FAILED:
                    self._finish_with_frames(t, e.frames)
                    return
        t.state = "queued"
        ks = self.keys[t.key]
        ks.queue.append(t)
        self._dispatch(ks)

    def _dispatch(self, ks: KeyState) -> None:
        q = ks.queue
        if not q:
            return
        for w in ks.workers.values():  # idle workers first
            if not w.inflight and not w.dead:
                self._push(q.popleft(), w)
                if not q:
                    return
        want = min(len(q), config.MAX_PENDING_LEASES) - len(ks.pending_leases)
        for _ in range(want):
            self._request_lease(ks)
        depth = ks.depth()
        if depth < 2:
            return
        # Pipelining: what the pending lease requests cannot take queues on busy
        # workers of a key whose tasks are short (workers hand it back otherwise).
        for n in range(1, depth):
            for w in ks.workers.values():
                if len(q) <= len(ks.pending_leases):
                    return
                if len(w.inflight) == n and not w.dead and not w.long:
                    self._push(q.popleft(), w)

    def _request_lease(self, ks: KeyState, dest: str | None = None) -> None:
        self._lease_rid += 1
        rid = self._lease_rid
        ks.pending_leases[rid] = time.monotonic()
        self.lease_reqs[rid] = ks
        dest = dest or self.raylet_ipc
        self.lease_dest[rid] = dest
        h = {"t": protocol.REQUEST_LEASE, "lrid": rid, "res": ks.res, "ra": self.my_addr_for(dest),
             "own": self.address_packed}
        if ks.queue and ks.queue[0].retries == 0:
            h["rt"] = False  # its memory monitor kills retriable work first
        if ks.strategy is not None:
            h["strat"] = protocol.strategy_wire(ks.strategy)
        self.conns.send(dest, h)

    def _push(self, t: Task, w: LeasedWorker) -> None:
        t.state = "running"
        t.worker = w
        t.attempt += 1
        w.inflight[t.tid] = t
        payload: list = []
        argd = []
        for a in t.args:
            if isinstance(a, ObjectRef):
                e = self.objects[a._id]
                if e.frames is not None:
                    argd.append((INLINE, len(e.frames)))
                    payload.extend(e.frames)
                else:
                    argd.append((STORED, a._id, e.node, e.owner or self.address_packed))
            else:
                argd.append((INLINE, len(a)))
                payload.extend(a)
        h = {"t": protocol.PUSH_TASK, "tid": t.tid, "fn": t.fn_id, "name": t.fname,
             "nret": t.nret, "args": argd, "kw": t.kwnames, "own": self.address_packed,
             "drv": self.driver_addr, "job": self.job_id, "res": w.res, "att": t.attempt}
        if t.max_calls:
            h["mc"] = t.max_calls
        if t.env:
            h["env"] = t.env
        self.conns.send(w.addr, h, payload)

    # --------------------------------------------------------- I/O handlers
    def _handle(self, h: dict, payload: list) -> None:
        t = h["t"]
        fn = self._handlers.get(t)
        if fn is None:
            log.warning("unexpected message %s", protocol.NAMES.get(t, t))
            return
        fn(self, h, payload)

    def _h_reply(self, h: dict, payload: list) -> None:
        with self.lock:
            self._complete(h, payload)

    def _h_lease_granted(self, h: dict, payload: list) -> None:
        with self.lock:
            self.lease_dest.pop(h["lrid"], None)
            recovery.learn_raylet(self, h["node"], h["raylet"])
            ks = self.lease_reqs.pop(h["lrid"], None)
            if ks is None:
                self._return_lease(h["raylet"], h["lease"], False)
                return
            ks.pending_leases.pop(h["lrid"], None)
            w = LeasedWorker(h["wid"], self.addr_of(h["waddr"]), h["lease"], h["node"],
                             h.get("res") or {}, h["raylet"])
            ks.workers[w.wid] = w
            if not ks.queue:
                del ks.workers[w.wid]
                self._return_lease(w.raylet, w.lease, False)
                return
            self._dispatch(ks)

    def _h_lease_spillback(self, h: dict, payload: list) -> None:
        with self.lock:
            self.lease_dest.pop(h["lrid"], None)
            ks = self.lease_reqs.pop(h["lrid"], None)
            if ks is None:
                return
            ks.pending_leases.pop(h["lrid"], None)
            if not ks.queue:
                return
            self._request_lease(ks, self.addr_of(h["raylet"]))

    def _h_lease_failed(self, h: dict, payload: list) -> None:
        with self.lock:
            if h.get("warn"):
                print(f"zray: warning: {h.get('msg')}", file=sys.stderr)
                return
            self.lease_dest.pop(h["lrid"], None)
            ks = self.lease_reqs.pop(h["lrid"], None)
            if ks is None:
                return
            ks.pending_leases.pop(h["lrid"], None)
            err = _error_from_wire(h)
            while ks.queue:
                t = ks.queue.popleft()
                self._finish_with_error(t, err)

    def _return_lease(self, raylet: list | str, lease: int, exiting: bool) -> None:
        dest = raylet if isinstance(raylet, str) else self.addr_of(raylet)
        self.conns.send(dest, {"t": protocol.RETURN_LEASE, "lease": lease, "exit": exiting})

    def _h_worker_died(self, h: dict, payload: list) -> None:
        with self.lock:
            for ks in self.keys.values():
                w = ks.workers.pop(h["wid"], None)
                if w is None:
                    continue
                w.dead = True
                # The worker runs its tasks in push order: only the first can have
                # started; those queued behind it go back to the queue as they are.
                tasks = list(w.inflight.values())
                w.inflight.clear()
                self._requeue_unstarted(ks, tasks[1:])
                if tasks:
                    self._task_lost(tasks[0], h.get("reason", "worker died"), bool(h.get("oom")))
                self._dispatch(ks)

    def _requeue_unstarted(self, ks: KeyState, tasks: list) -> None:
        """Tasks pushed to a worker that never started them: queue them again, in order."""
        for t in reversed(tasks):
            t.worker = None
            t.attempt -= 1
            if t.cancelled:
                self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
            else:
                t.state = "queued"
                ks.queue.appendleft(t)

    def _h_tasks_returned(self, h: dict, payload: list) -> None:
        """A worker hands back pipelined tasks it did not start (its task runs long)."""
        with self.lock:
            by_key: dict = {}
            for tid in h["tids"]:
                t = self.tasks.get(tid)
                w = t.worker if t is not None else None
                if w is None or w.inflight.pop(tid, None) is None:
                    continue
                w.long = True
                by_key.setdefault(t.key, []).append(t)
            for k, tasks in by_key.items():
                ks = self.keys[k]
                ks.task_s = max(ks.task_s or 0.0, config.PIPELINE_MAX_TASK_S * 2)
                self._requeue_unstarted(ks, tasks)
                self._dispatch(ks)

    def _task_lost(self, t: Task, reason: str, oom: bool = False) -> None:
        t.worker = None
        if t.cancelled:
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.retries != 0 and not t.gen_count:
            if t.retries > 0:
                t.retries -= 1
            t.state = "queued"
            ks = self.keys[t.key]
            ks.queue.appendleft(t)
        else:
            # Killed by its raylet's memory monitor: Ray's OutOfMemoryError, its message.
            self._finish_with_error(t, exc.OutOfMemoryError(reason) if oom
                                    else exc.WorkerCrashedError())

    def _h_task_reply(self, h: dict, payload: list) -> None:
        with self.lock:
            t = self.tasks.get(h["tid"])
            if t is None:
                return
            if t.actor is not None:  # an actor call (zray/actor_submitter.py)
                self.actor_calls().on_task_reply(t, h, payload)
                return
            w = t.worker
            ks = self.keys[t.key]
            if "dt" in h:
                ks.ran(h["dt"])
            if w is not None:
                w.inflight.pop(t.tid, None)
                w.idle_since = time.monotonic()
                w.long = False
                if h.get("exiting"):
                    ks.workers.pop(w.wid, None)
                    w.dead = True
                    self._return_lease(w.raylet, w.lease, True)
                    self._requeue_unstarted(ks, list(w.inflight.values()))
                    w.inflight.clear()
            t.worker = None
            if h.get("err") and not t.cancelled and self._should_retry_exception(t, payload):
                if t.retries > 0:
                    t.retries -= 1
                t.state = "queued"
                ks.queue.appendleft(t)
                self._dispatch(ks)
                return
            if t.cancelled and h.get("err"):
                self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
            else:
                self.complete_task(t, h, payload)
            self._dispatch(ks)

    def complete_task(self, t: Task, h: dict, payload: list) -> None:
        """A successful TASK_REPLY (task or actor call): store returns, end the task."""
        self._store_returns(t, h["rets"], payload, h.get("contained"))
        if t.gen:
            t.gen_count = h.get("gen_n", t.gen_count)
            t.gen_done = True
            self.cv.notify_all()
        self._task_done(t)

    def _should_retry_exception(self, t: Task, payload: list) -> bool:
        if not t.retry_exc or t.retries == 0:
            return False
        if t.retry_exc is True:
            return True
        try:
            err = serialization.deserialize(payload)
        except Exception:
            return False
        cause = getattr(err, "cause", err)
        return isinstance(cause, tuple(t.retry_exc))

    def _store_returns(self, t: Task, rets: list, payload: list, contained: list | None) -> None:
        pos = 0
        for oid, d in zip(t.oids, rets):
            e = self.objects.get(oid)
            kind = d[0]
            if kind == INLINE:
                n = d[1]
                frames = [bytes(f) if len(f) < 65536 else f for f in payload[pos: pos + n]]
                pos += n
                if e is None:
                    continue
                e.frames = frames
                e.is_error = bool(d[2]) if len(d) > 2 else False
            else:
                if e is None:
                    # Nobody wants it any more: free the stored copy at once.
                    self.conns.send(self._raylet_addr(d[1]), {"t": protocol.FREE_OBJECTS,
                                                              "oids": [oid]})
                    continue
                e.node, e.size = d[1], d[2]
            e.state = FAILED if e.is_error else READY
            self._on_ready(oid, e)
        if contained:
            self._hold_contained([self.objects.get(oid) for oid in t.oids], contained)

    def _hold_contained(self, entries: list, contained: list) -> None:
        """Refs nested in returned values live as long as the value that holds them."""
        for i, coid, cowner in unpack_contained(contained):
            outer = entries[i] if i < len(entries) else None
            ce = self.objects.get(coid)
            if ce is None:
                # No ADD_BORROWER: the worker that returned it lent it to us already.
                owned = cowner is not None and cowner[1] == self.address.ipc and \
                    cowner[0] == self.node_id
                ce = self.objects[coid] = Entry(owned, cowner)
            if outer is None:
                self._maybe_release(coid, ce)  # nobody kept the outer value
                continue
            ce.pins += 1
            if outer.contained is None:
                outer.contained = []
            outer.contained.append((coid, cowner))

    def _raylet_addr(self, node: bytes) -> str:
        return self.raylet_ipc if node == self.node_id else self._raylet_for(node)

    def _finish_with_error(self, t: Task, err: BaseException) -> None:
        frames, _ = serialization.serialize(err)
        self._finish_with_frames(t, frames)

    def _finish_with_frames(self, t: Task, frames: list) -> None:
        if t.gen:
            oid = ids.object_id_for(t.tid, t.gen_count + 1)
            e = Entry(True)
            e.task_id = t.tid
            e.pins = 1
            self.objects[oid] = e
            t.oids.append(oid)
            t.gen_count += 1
            t.gen_done = True
        for oid in t.oids:
            e = self.objects.get(oid)
            if e is None or e.state != PENDING:
                continue
            e.frames = frames
            e.is_error = True
            e.state = FAILED
            self._on_ready(oid, e)
        self.cv.notify_all()
        self._task_done(t)

    def _task_done(self, t: Task) -> None:
        t.state = "done"
        self.tasks.pop(t.tid, None)
        if t.parent is not None:
            kids = self.children.get(t.parent)
            if kids:
                kids.discard(t.tid)
                if not kids:
                    del self.children[t.parent]
        if recovery.keep_lineage(self, t):
            return  # arguments stay pinned while a stored return may need a rerun
        for oid in t.arg_pins:
            e = self.objects.get(oid)
            if e is not None:
                e.pins -= 1
                self._maybe_release(oid, e)
        t.arg_pins = []
        t.args = None

    def _h_generator_item(self, h: dict, payload: list) -> None:
        with self.lock:
            t = self.tasks.get(h["tid"])
            if t is None:
                return
            i = h["i"]
            oid = ids.object_id_for(t.tid, i + 1)
            e = self.objects.get(oid)
            if e is None:
                e = Entry(True)
                e.task_id = t.tid
                e.pins = 1  # held by the generator until handed out
                self.objects[oid] = e
                t.oids.append(oid)
            d = h["ret"]
            if d[0] == INLINE:
                e.frames = [bytes(f) for f in payload]
                e.is_error = bool(d[2]) if len(d) > 2 else False
            else:
                e.node, e.size = d[1], d[2]
            e.state = FAILED if e.is_error else READY
            t.gen_count = max(t.gen_count, i + 1)
            if h.get("contained"):
                self._hold_contained([e], h["contained"])
            self._on_ready(oid, e)

    def next_generator_ref(self, tid: bytes, i: int, timeout: float | None) -> ObjectRef | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        oid = ids.object_id_for(tid, i + 1)
        with self.lock:
            while True:
                e = self.objects.get(oid)
                if e is not None and e.state != PENDING:
                    ref = ObjectRef(oid, self.address_packed)
                    e.pins -= 1
                    return ref
                t = self.tasks.get(tid)
                if t is None or (t.gen_done and i >= t.gen_count):
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise exc.GetTimeoutError("no generator item within the timeout")
                self._ensure_poller()
                self._cv_waiters += 1
                try:
                    self.cv.wait(1.0 if left is None else min(left, 1.0))
                finally:
                    self._cv_waiters -= 1

    def generator_finished(self, tid: bytes, i: int) -> bool:
        with self.lock:
            t = self.tasks.get(tid)
            return t is None or (t.gen_done and i >= t.gen_count)

    def generator_completed_ref(self, tid: bytes) -> ObjectRef:
        raise NotImplementedError("ObjectRefGenerator.completed() is not supported yet")

    def release_generator(self, tid: bytes, consumed: int) -> None:
        with self.lock:
            t = self.tasks.get(tid)
            n = t.gen_count if t is not None else None
            i = consumed
            while True:
                oid = ids.object_id_for(tid, i + 1)
                e = self.objects.get(oid)
                if e is None:
                    if n is None or i >= n:
                        break
                    i += 1
                    continue
                e.pins -= 1
                self._maybe_release(oid, e)
                i += 1

    # -- owner side of borrowing
    def _h_get_object(self, h: dict, payload: list) -> None:
        with self.lock:
            oid = h["oid"]
            e = self.objects.get(oid)
            if e is None or not e.owned:
                err = exc.ReferenceCountingAssertionError(oid.hex(), str(self.address))
                frames, _ = serialization.serialize(err)
                self.conns.send(h["ra"], {"t": protocol.OBJECT_VALUE, "oid": oid, "st": FAILED,
                                          "err": True}, frames)
                return
            if e.state == PENDING:
                if e.waiters is None:
                    e.waiters = []
                e.waiters.append(h["ra"])
                return
            self._send_value(h["ra"], oid, e)

    def _h_object_value(self, h: dict, payload: list) -> None:
        with self.lock:
            oid = h["oid"]
            e = self.objects.get(oid)
            if e is None or e.state != PENDING:
                return
            if payload:
                e.frames = [bytes(f) if len(f) < 65536 else f for f in payload]
            else:
                e.node, e.size = h.get("node"), h.get("size", 0)
            e.is_error = bool(h.get("err"))
            e.state = FAILED if e.is_error else READY
            self._on_ready(oid, e)

    def _h_add_borrower(self, h: dict, payload: list) -> None:
        with self.lock:
            e = self.objects.get(h["oid"])
            if e is not None and e.owned:
                e.add_borrower(Address.unpack(h["b"]).for_node(self.node_id))

    def _h_remove_borrower(self, h: dict, payload: list) -> None:
        with self.lock:
            oid = h["oid"]
            e = self.objects.get(oid)
            if e is not None and e.owned:
                if e.borrowers:
                    e.borrowers.discard(Address.unpack(h["b"]).for_node(self.node_id))
                self._maybe_release(oid, e)

    def _h_log_lines(self, h: dict, payload: list) -> None:
        sink = self.log_sink
        if sink is not None:
            sink(h, payload)

    def _h_push_task(self, h: dict, payload: list) -> None:
        if self.on_push_task is None:
            log.warning("PUSH_TASK to a process that runs no tasks: dropped")
            return
        self.on_push_task(h, payload)

    def _h_cancel_task(self, h: dict, payload: list) -> None:
        if self.on_cancel_task is not None:
            self.on_cancel_task(h)

    def _h_publish(self, h: dict, payload: list) -> None:
        if h.get("ch") == "gcs":  # our raylet: the GCS went away / came back
            down = h.get("ev") == "down"
            with self.lock:
                self._gcs_news = True
                self.gcs_down = (h.get("msg") or "The GCS is unreachable.") if down else ""
        elif h.get("ch") == "node" and h.get("ev") == "dead":
            with self.lock:
                recovery.node_died(self, h["node"], h.get("raylet"))

    def _h_object_location_add(self, h: dict, payload: list) -> None:
        with self.lock:
            recovery.location_added(self, h)

    def _h_get_object_locations(self, h: dict, payload: list) -> None:
        with self.lock:
            recovery.get_locations(self, h)

    def _h_shutdown(self, h: dict, payload: list) -> None:
        if self.mode == "worker" and self.on_cancel_task is not None:
            os._exit(0)

    # Message type -> handler. The actor modules add theirs (ACTOR_STATE in
    # actor_submitter.py, CREATE_ACTOR in actor_executor.py) with register_handler.
    _handlers: ClassVar[dict[int, Handler]] = {
        protocol.REGISTER_ACTOR_REPLY: _h_reply,
        protocol.ACTOR_INFO: _h_reply,
        protocol.ACTOR_ACK: _h_reply,
        protocol.REGISTER_CLIENT_REPLY: _h_reply,
        protocol.KV_REPLY: _h_reply,
        protocol.NODES_REPLY: _h_reply,
        protocol.PULL_DONE: _h_reply,
        protocol.CREATE_OBJECT_REPLY: _h_reply,
        protocol.PONG: lambda self, h, p: self._h_pong(h),
        protocol.LEASE_GRANTED: _h_lease_granted,
        protocol.LEASE_SPILLBACK: _h_lease_spillback,
        protocol.LEASE_FAILED: _h_lease_failed,
        protocol.WORKER_DIED: _h_worker_died,
        protocol.TASK_REPLY: _h_task_reply,
        protocol.TASKS_RETURNED: _h_tasks_returned,
        protocol.GENERATOR_ITEM: _h_generator_item,
        protocol.GET_OBJECT: _h_get_object,
        protocol.OBJECT_VALUE: _h_object_value,
        protocol.ADD_BORROWER: _h_add_borrower,
        protocol.REMOVE_BORROWER: _h_remove_borrower,
        protocol.LOG_LINES: _h_log_lines,
        protocol.PUSH_TASK: _h_push_task,
        protocol.CANCEL_TASK: _h_cancel_task,
        protocol.SHUTDOWN: _h_shutdown,
        protocol.PING: lambda self, h, p: self._h_ping(h),
        protocol.PUBLISH: _h_publish,
        protocol.OBJECT_LOCATION_ADD: _h_object_location_add,
        protocol.GET_OBJECT_LOCATIONS: _h_get_object_locations,
    }
    _actor_calls_factory: ClassVar[Callable[[CoreWorker], ActorCalls] | None] = None

    @classmethod
    def register_handler(cls, t: int, fn: Handler) -> None:
        """Serve message type ``t`` with ``fn`` (modules above this one, at import)."""
        cls._handlers[t] = fn

    @classmethod
    def register_actor_calls(cls, factory: Callable[[CoreWorker], ActorCalls]) -> None:
        """How actor_calls() makes this process's actor submitter."""
        cls._actor_calls_factory = factory

    def actor_calls(self) -> ActorCalls:
        """This process's actor submitter, made on first use."""
        s = self.actor_submitter
        if s is None:
            factory = self._actor_calls_factory
            if factory is None:
                raise RuntimeError("zray.actor_submitter is not loaded")
            with self.lock:
                s = self.actor_submitter
                if s is None:
                    s = self.actor_submitter = factory(self)
        return s

    # ----------------------------------------------------------- cancellation
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        with self.lock:
            e = self.objects.get(ref._id)
            if e is None or not e.owned or e.task_id is None:
                if e is not None and not e.owned:
                    raise ValueError("zray.cancel() only works on refs owned by this process "
                                     "(returned by a task it submitted)")
                return
            t = self.tasks.get(e.task_id)
            if t is None or t.state == "done":
                return  # finished: no-op
            self._cancel_task(t, force, recursive)

    def _cancel_task(self, t: Task, force: bool, recursive: bool) -> None:
        t.cancelled = True
        if t.actor is not None:  # an actor call (zray/actor_submitter.py)
            self.actor_calls().cancel(t, recursive)
            return
        if t.state in ("waiting", "queued"):
            if t.state == "queued":
                try:
                    self.keys[t.key].queue.remove(t)
                except ValueError:
                    pass
            self._finish_with_error(t, exc.TaskCancelledError(ids.TaskID(t.tid)))
        elif t.state == "running" and t.worker is not None:
            self.conns.send(t.worker.addr, {"t": protocol.CANCEL_TASK, "tid": t.tid,
                                            "force": force, "rec": recursive})

    def cancel_children(self, parent: bytes, force: bool) -> None:
        with self.lock:
            for tid in list(self.children.get(parent, ())):
                t = self.tasks.get(tid)
                if t is not None and t.state != "done":
                    self._cancel_task(t, force, True)

    # ----------------------------------------------------------------- loop
    # The polling role (leader/follower). Exactly one thread at a time may use the
    # inbound sockets: the "leader", named by self._leader (changed under self.lock,
    # which also orders the socket's use between threads). A thread that blocks in
    # get/wait/request takes the role if it is free and handles every message that
    # comes (its own reply included) until it may return: no thread hand-off. Other
    # waiting threads are followers: the leader's handlers wake them as before. The
    # I/O thread polls when no user thread does: it takes the role once nobody has
    # taken it for one to two LEAD_IDLE_S periods (so a loop of short gets keeps it),
    # at once after a non-sticky wait (Waiter.sticky), and gives it up when a follower
    # asks (a byte in the wake pipe), at the next message boundary.
    def _wait_until(self, w: Waiter, ready, deadline: float | None) -> bool:
        """Block (lock held, possibly re-entrantly) until ready(); False at the deadline."""
        me = w.ident
        try:
            while not ready():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                prev = self._leader
                if (prev is None or prev == me) and self._running:
                    self._leader = me
                    self._lead_gen += 1
                    self._io_take = False
                    w.leading = True
                    saved = self.lock._release_save()
                    try:
                        self._lead_poll(1000 if left is None else min(1000, int(left * 1000) + 1))
                    finally:
                        self.lock._acquire_restore(saved)
                        w.leading = False
                        self._leader = prev
                else:
                    if prev == IO and not self._yield_asked:
                        self._yield_asked = True
                        self._poke()
                    if w.cond is None:
                        w.cond = threading.Condition(self.lock)
                    self._followers.append(w)
                    try:
                        w.cond.wait(1.0 if left is None else min(left, 1.0))
                    finally:
                        self._followers.remove(w)
            return True
        finally:
            if self._leader is None:
                if self._followers:
                    self._followers[0].notify()  # the role passes to a waiting thread
                elif not w.sticky:
                    self._ensure_poller()
                elif self._io_parked_long:
                    self._io_cond.notify()  # the I/O thread takes it if nobody comes back

    def _ensure_poller(self) -> None:
        """(lock held) Before a wait that does not poll itself: have the I/O thread poll."""
        if self._leader is None:
            self._io_take = True
            self._io_cond.notify()

    def _lead_poll(self, timeout_ms: int) -> None:
        """One poll by a leading user thread (lock not held): one message per socket."""
        if self._decrefs:  # bookkeeping while what we wait for is on its way
            self._guarded(self._process_decrefs)
        ready = _zmq_poll(self._poll_items, timeout_ms)
        if ready:
            self._guarded(self._handle_ready, ready)

    def _guarded(self, fn, *args) -> None:
        """Run runtime code (handlers, ref counting) on a user thread: on the main thread,
        Ctrl-C (or a task cancel's SIGINT) must not cut it in half, so it is held back
        until ``fn`` is done, then raised."""
        if threading.get_ident() != self._main or \
                _signal.getsignal(_signal.SIGINT) is not _signal.default_int_handler:
            fn(*args)
            return
        self._sigint = False
        _signal.signal(_signal.SIGINT, self._hold_sigint)
        try:
            fn(*args)
        finally:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
        if self._sigint:
            raise KeyboardInterrupt

    def _handle_ready(self, ready: list) -> None:
        keys = self._sock_keys
        for s, _ in ready:
            key = keys.get(s, _PIPE)
            if key is _PIPE:
                self._drain_pipe()
            else:
                self.inbound.recv_one(s, key, self._handle)

    def _hold_sigint(self, signum, frame) -> None:
        self._sigint = True

    def _poke(self) -> None:
        """Wake the thread polling the inbound sockets."""
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # full (a wake-up is pending anyway) or closed (shut down)

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:
            pass

    def _io_loop(self) -> None:
        next_tick = time.monotonic() + TICK_S
        seen = self._lead_gen
        lock = self.lock
        while self._running:
            with lock:
                lead = self._leader is None and (self._lead_gen == seen or self._io_take)
                if lead:
                    self._leader = IO
                    self._io_take = False
                else:
                    # Taken or left free recently: check again soon. Held by one thread
                    # for a whole period (a long wait): sleep to the next tick; that
                    # thread wakes us when it leaves the role (_wait_until).
                    self._io_parked_long = self._lead_gen == seen and self._leader is not None
                    seen = self._lead_gen
                    wait = TICK_S if self._io_parked_long else LEAD_IDLE_S
                    if self._leader is not None:
                        self._io_take = False  # someone polls: nothing to take over
                    if self._running and not self._io_take:
                        self._io_cond.wait(max(0.0, min(wait, next_tick - time.monotonic())))
                    self._io_parked_long = False
            if lead:
                next_tick = self._io_lead(next_tick)
                seen = -1  # handed to a follower: not back before a whole quiet period
            else:
                self._process_decrefs()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._tick(now)

    def _io_lead(self, next_tick: float) -> float:
        """The I/O thread polls until a follower asks for the role (or shutdown)."""
        poll = self._poller.poll
        try:
            while self._running:
                try:
                    ready = dict(poll(max(1, int((next_tick - time.monotonic()) * 1000) + 1)))
                except zmq.ZMQError:
                    if not self._running:
                        break
                    raise
                if ready:
                    if self._wake_r in ready:
                        self._drain_pipe()
                    self.inbound.drain(ready, self._handle)
                self._process_decrefs()
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK_S
                    self._tick(now)
                if self._yield_asked:
                    with self.lock:
                        self._yield_asked = False
                        if self._followers:
                            self._leader = None
                            self._followers[0].notify()
                            break
        finally:
            with self.lock:
                if self._leader == IO:
                    self._leader = None
        return next_tick

    def _h_ping(self, h: dict) -> None:
        if "ra" in h:
            self.conns.send(h["ra"], {"t": protocol.PONG, "rid": h.get("rid")})

    def _h_pong(self, h: dict) -> None:
        with self.lock:
            addr = self._ping_rids.pop(h.get("rid"), None)
            if addr is None:
                self._complete(h, [])
                return
            st = self._liveness.get(addr)
            if st is not None:
                st[1] = None

    def _check_liveness(self, now: float) -> None:
        """Ping the raylet and the owners of objects we wait for; no answer = dead.

        Without this a get() on an object whose owner (or our raylet) died would
        wait forever: there is no connection to break in one-way messaging.
        """
        watch = {self.raylet_ipc}
        # Only borrowed objects being fetched: not a scan of every object we own.
        for oid, e in list(self._fetching.items()):
            if e.state != PENDING or self.objects.get(oid) is not e:
                del self._fetching[oid]
            elif e.owner:
                try:
                    watch.add(self.addr_of(e.owner))
                except ConnectionError:
                    pass
        for addr in list(self._liveness):
            if addr not in watch:
                del self._liveness[addr]
        for addr in watch:
            st = self._liveness.setdefault(addr, [now, None])
            if st[1] is None:
                if now - st[0] >= config.LIVENESS_PING_S:
                    self._rid += 1
                    st[0], st[1] = now, self._rid
                    self._ping_rids[self._rid] = addr
                    self.conns.send(addr, {"t": protocol.PING, "rid": self._rid,
                                           "ra": self.my_addr_for(addr)})
            elif now - st[0] > config.LIVENESS_TIMEOUT_S:
                del self._liveness[addr]
                self._peer_dead(addr)

    def _peer_dead(self, addr: str) -> None:
        if addr == self.raylet_ipc:
            log.error("the local raylet does not answer: failing pending work")
            for t in list(self.tasks.values()):
                if t.state != "done":
                    if t.state == "queued":
                        try:
                            self.keys[t.key].queue.remove(t)
                        except ValueError:
                            pass
                    self._finish_with_error(t, exc.LocalRayletDiedError())
            return
        for oid, e in list(self.objects.items()):
            if not e.owned and e.state == PENDING and e.owner and \
                    Address.unpack(e.owner).for_node(self.node_id) == addr:
                self._set_failed_local(oid, e, exc.OwnerDiedError(oid.hex(), addr))

    def _tick(self, now: float) -> None:
        if self.on_tick is not None:
            self.on_tick(now)
        memo = self.wait_memo
        if memo is not None and now - memo[2] > 1.0:
            self.wait_memo = None
        if now - self._last_liveness >= 1.0:
            self._last_liveness = now
            with self.lock:
                self._check_liveness(now)
        self._flush_borrow_releases(now)
        with self.lock:
            for ks in self.keys.values():
                if ks.queue:
                    continue
                for wid, w in list(ks.workers.items()):
                    if not w.inflight and now - w.idle_since > config.LEASE_IDLE_S:
                        del ks.workers[wid]
                        self._return_lease(w.raylet, w.lease, False)

    def shutdown(self) -> None:
        self._running = False
        with self.lock:
            self._io_cond.notify_all()
        self._poke()
        self.io_thread.join(timeout=2)
        deadline = time.monotonic() + 2
        while self._leader is not None and time.monotonic() < deadline:
            self._poke()  # a user thread still polls: it stops at its next wake-up
            time.sleep(0.005)
        with self.lock:
            for ks in self.keys.values():
                for w in ks.workers.values():
                    self._return_lease(w.raylet, w.lease, False)
                ks.workers.clear()
        self.conns.close()
        self.inbound.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


_zmq_poll = zmq.zmq_poll
_PIPE = object()


def pack_contained(items: list) -> list:
    """(return index, oid, owner) triples -> [[owner, [[index, oid], ...]], ...].

    Grouped by owner so that a value holding 10,000 refs of one owner does not
    repeat the owner's address 10,000 times in the header.
    """
    groups: dict = {}
    for i, oid, owner in items:
        key = tuple(owner) if owner else None
        g = groups.get(key)
        if g is None:
            g = groups[key] = [owner, []]
        g[1].append([i, oid])
    return list(groups.values())


def unpack_contained(wire: list) -> list:
    return [(i, oid, owner) for owner, pairs in wire for i, oid in pairs]


def _strategy_key(s: Any) -> Any:
    if s is None or isinstance(s, str):
        return s
    return (type(s).__name__, getattr(s, "node_id", None), getattr(s, "soft", None))


def _error_from_wire(h: dict) -> BaseException:
    kind = h.get("kind")
    cls = getattr(exc, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, BaseException):
        try:
            return cls(h.get("msg"))
        except TypeError:
            pass
    return exc.RayError(h.get("msg"))


def _as_raisable(value: Any) -> BaseException:
    if isinstance(value, exc.RayTaskError):
        return value.as_instanceof_cause()
    if isinstance(value, BaseException):
        return value
    return exc.RaySystemError(value)
