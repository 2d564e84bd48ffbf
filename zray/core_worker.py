"""The CoreWorker: the runtime object shared by drivers and workers, the owner's shell.

What this process owns (tasks, objects, leases, borrowers, lineage) is kept by
a state machine without I/O, ``zray.owner.Owner``: this shell turns inbound
messages and API calls into its events (``_do``) and carries out the
instructions it returns (``_EXEC``: sends, and wake-ups of threads blocked in
get/wait). Besides that it does put/get/wait, serialisation and liveness.

Threads: the user's threads call submit/get/put/wait; inbound messages are
received by whichever thread holds the polling role (zray/polling.py): a
thread blocked in get/wait/request polls the inbound sockets itself, so the
reply it waits for costs no thread hand-off; the I/O thread polls when no such
thread does, and runs timers. All touch the owner's tables under one lock.
Sends go out directly from the calling thread (protocol.Conn has its own
lock), so a task submission costs no thread hand-off either.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from zray import config, ids, protocol, serialization, task_codec
from zray import exceptions as exc
from zray.object_ref import ObjectRef, ObjectRefGenerator
from zray.objstore import shm
from zray.owner import Owner
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.refs import pack_contained, unpack_contained  # noqa: F401 - re-exported
from zray.owner.state import FAILED, INLINE, PENDING, READY, STORED, Entry, Task  # noqa: F401
from zray.polling import IO, PollingRole, Waiter, _AnyWaiter  # noqa: F401 - IO re-exported
from zray.protocol import Address
from zray.waiting import Waiting

log = logging.getLogger("zray.core_worker")

# A message handler: (the CoreWorker, header, payload), run on the polling thread.
Handler = Callable[["CoreWorker", dict, list], None]


class ActorCalls(Protocol):
    """What CoreWorker asks of the actor submitter (zray/actor_submitter.py). It
    registers itself with ``CoreWorker.register_actor_calls`` so this module need
    not import it."""

    def submit(self, aid: bytes, meta: dict, method: str, args: tuple, kwargs: dict,
               nret: Any, retries: int, name: str | None = None) -> Any: ...


class CoreWorker(Waiting, PollingRole):
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
        self._ready_log: collections.deque = collections.deque(maxlen=4096)  # readied oids
        self._ready_seq = 0  # objects readied so far (the log's end)
        # api.wait: (the not_ready list it returned last, that list's ids, when); the I/O
        # thread drops it after a second so the refs in it are not kept alive long.
        self.wait_memo: tuple | None = None
        self._cv_waiters = 0
        self.requests: dict[int, list] = {}  # rid -> [event, header, payload]
        self._rid = 0
        self.exported: set[bytes] = set()
        self._decrefs: collections.deque = collections.deque()
        self._actor_drops: collections.deque = collections.deque()  # ActorHandle.__del__
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
        # What this process owns: the state machine this class is the shell of.
        self.owner = Owner(node_id, self.inbound.ipc_addr, self.address_packed,
                           str(self.address), _encode_error, serialization.deserialize)
        self.objects = self.owner.objects  # read by get/wait under self.lock
        self.tasks = self.owner.tasks
        # Hooks of the worker's executor (worker_main.py, actor_executor.py).
        self.on_push_task: Callable[[dict, list], None] | None = None
        self.on_blocked: Callable[[], None] | None = None  # the running task blocks in get
        self.on_tick: Callable[[float], None] | None = None  # the I/O thread's every tick
        self.on_cancel_task: Callable[[dict], None] | None = None
        self.task_executor: Any = None  # worker_main.Executor (runtime_context.is_canceled)
        # In an actor's worker (actor_executor.py; read by runtime_context.py).
        self.current_actor_id: bytes | None = None
        self.actor_restarted = False
        self.actor_runtime: Any = None
        self.current_actor_handle: Any = None
        # Actor calls made by this process (made on first use: actor_calls()).
        self.actor_submitter: ActorCalls | None = None
        self.log_sink: Callable[[dict, list], None] | None = None  # driver: prints LOG_LINES
        self._liveness: dict[str, list] = {}  # addr -> [last ping sent, outstanding rid]
        self._fetching: dict[bytes, Entry] = {}  # borrowed objects asked of their owners
        self._ping_rids: dict[int, str] = {}
        self._last_liveness = time.monotonic()
        self._running = True
        self._init_polling()
        self.io_thread.start()

    # ------------------------------------------------------------------ owner
    def _do(self, event: Any) -> None:
        """Apply an event to the owner and carry out its instructions (lock held)."""
        for i in self.owner.handle(event):
            _EXEC[type(i)](self, i)

    # ------------------------------------------------------------------ utils
    def my_addr_for(self, dest: str) -> str | None:
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
        A request to the GCS fails with RpcError as soon as the raylet reports it down, or,
        if it was reported down before the call, once ``GCS_DOWN_PROBE_S`` passes unanswered.
        """
        down = ""
        if dest == self.gcs and alive is None:
            down = self.gcs_down
            if down:
                # Reported down: ask anyway, briefly. A stale report (the GCS came back and
                # the news has not reached us) must not fail calls that would succeed.
                timeout = min(config.GCS_DOWN_PROBE_S,
                              config.RPC_TIMEOUT_S if timeout is None else timeout)
            else:
                alive = self._gcs_alive
        w = Waiter(self)
        with self.lock:
            self._rid += 1
            rid = self._rid
            slot: list[Any] = [w, None, None]
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
                    if down and self.gcs_down == down:
                        self.gcs_down = ""  # it answered: up again, whatever we were told
                    return slot[1], slot[2]
                if time.monotonic() >= deadline:
                    self.requests.pop(rid, None)
                    if down:
                        raise exc.RpcError(self.gcs_down or down,
                                           rpc_code=exc.RpcError.UNAVAILABLE)
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
        slot = self.requests.pop(h.get("rid", 0), None)  # (rids start at 1)
        if slot is not None:
            slot[1], slot[2] = h, payload
            slot[0].notify()

    # ------------------------------------------------------------- references
    def add_local_ref(self, oid: bytes, owner: list | None) -> None:
        with self.lock:
            e = self.objects.get(oid)
            if e is not None and (e.owned or e.local or e.pins):
                e.local += 1  # the common case, without an event
                return
            self._do(ev.RefAdded(oid, owner))

    def remove_local_ref(self, oid: bytes) -> None:
        self._decrefs.append(oid)  # processed by the I/O thread: __del__ may run anywhere

    def _send_owner(self, owner: list, header: dict, payload: list | tuple = ()) -> None:
        try:
            self.conns.send(self.addr_of(owner), header, payload)
        except ConnectionError as e:
            log.warning("cannot reach owner: %s", e)

    def _process_decrefs(self) -> None:
        dq = self._decrefs
        if dq:
            with self.lock:
                oids = []
                while dq:
                    oids.append(dq.popleft())
                self._do(ev.RefsDropped(oids))
        drops = self._actor_drops
        if drops:
            with self.lock:
                while drops:
                    self._do(ev.ActorHandleDropped(drops.popleft()))

    # -------------------------------------------------------------- objects
    def put(self, value: Any, owner_frames: list | None = None) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError(
                "Calling 'put' on an ObjectRef is not allowed. If you really want to do "
                "this, you can wrap the ObjectRef in a list and call 'put' on it.")
        frames, refs = serialization.serialize(value, "object passed to put()")
        oid = ids.new_put_id()
        size = serialization.frames_size(frames)
        if size > config.INLINE_MAX:
            self._store(oid, frames, size)
            put = ev.Put(oid, None, self.node_id, size, refs)
        else:
            put = ev.Put(oid, frames, None, size, refs)
        with self.lock:
            self._do(put)
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

    def _read_stored(self, oid: bytes, node: bytes | None, owner: list | None) -> list:
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
            raise exc.as_raisable(value)
        return value

    def _ensure_fetch(self, oid: bytes, e: Entry) -> None:
        """Ask a borrowed object's owner for its value or location (once)."""
        if not (e.owned or e.fetching or e.state != PENDING):
            self._do(ev.Fetch(oid))

    def _entry_for(self, ref: ObjectRef) -> Entry:
        # A ref made in another process reached us without registration.
        return self.owner.entry_for(ref._id, ref._owner)

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
        nret = opts["num_returns"]
        argv, nested = task_codec.encode_args(self, args, kwargs, fname)
        t = Task(ids.new_task_id(), fname, nret, argv, list(kwargs), fn_id=fn_id,
                 retries=opts["max_retries"], retry_exc=opts["retry_exceptions"],
                 max_calls=opts["max_calls"], res=opts["_resources"],
                 strategy=opts.get("scheduling_strategy"),
                 env=(opts.get("runtime_env") or {}).get("env_vars") or None,
                 parent=self.current_task_id, nested=nested or None)
        with self.lock:
            self._do(ev.Submit(t))
            return self.returns_of(t)

    def returns_of(self, t: Task) -> Any:
        """What .remote() hands back: None, an ObjectRefGenerator, a ref or a list.

        The refs counted at their entries already (ev.Submit), as add_local_ref would.
        """
        nret = t.user_nret
        if nret == 0:
            return None
        if t.gen:
            return ObjectRefGenerator(t.tid, self)
        me = self.address_packed
        refs = []
        for oid in t.oids:
            r = ObjectRef(oid, me, _register=False)
            r._cw = self
            refs.append(r)
        return refs[0] if nret == 1 else refs

    def put_frames(self, frames: list, size: int, refs: list) -> ObjectRef:
        oid = ids.new_put_id()
        self._store(oid, frames, size)
        with self.lock:
            self._do(ev.Put(oid, None, self.node_id, size, refs))
        return ObjectRef(oid, self.address_packed)

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
        e = ev.LeaseGranted(h["lrid"], h["wid"], self.addr_of(h["waddr"]), h["lease"], h["node"],
                            h.get("res") or {}, h["raylet"])
        with self.lock:
            self._do(e)

    def _h_lease_spillback(self, h: dict, payload: list) -> None:
        with self.lock:
            raylet = h["raylet"]
            self._do(ev.Spillback(h["lrid"], self.addr_of(raylet), raylet[0]))

    def _h_lease_failed(self, h: dict, payload: list) -> None:
        if h.get("warn"):
            print(f"zray: warning: {h.get('msg')}", file=sys.stderr)
            return
        with self.lock:
            self._do(ev.LeaseFailed(h["lrid"], exc.error_from_wire(h)))

    def _h_worker_died(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.WorkerDied(h["wid"], h.get("reason", "worker died"), bool(h.get("oom"))))

    def _h_tasks_returned(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.TasksReturned(h["tids"]))

    def _h_task_reply(self, h: dict, payload: list) -> None:
        get = h.get
        r = ev.TaskReply(h["tid"], get("rets") or [], payload, get("err", False), get("dt"),
                         get("exiting", False), get("contained"), get("gen_n"))
        with self.lock:
            self._do(r)

    def _h_generator_item(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.GeneratorItem(h["tid"], h["i"], h["ret"], payload, h.get("contained")))

    # -- owner side of borrowing
    def _h_get_object(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.GetObject(h["oid"], h["ra"]))

    def _h_object_value(self, h: dict, payload: list) -> None:
        frames = [bytes(f) if len(f) < 65536 else f for f in payload] if payload else None
        e = ev.ObjectValue(h["oid"], frames, h.get("node"), h.get("size", 0), bool(h.get("err")))
        with self.lock:
            self._do(e)

    def _h_add_borrower(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.BorrowerAdded(h["oid"], Address.unpack(h["b"]).for_node(self.node_id)))

    def _h_remove_borrower(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.BorrowerRemoved(h["oid"], Address.unpack(h["b"]).for_node(self.node_id)))

    def lend(self, contained: list, caller: list) -> None:
        """Refs inside a return value sent to ``caller``: it borrows them from now on."""
        e = ev.Lend(contained, caller, Address.unpack(caller).for_node(self.node_id))
        with self.lock:
            self._do(e)

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

    def _h_remote_cancel(self, h: dict, payload: list) -> None:
        oid = h.get("oid")
        if not isinstance(oid, bytes):
            log.warning("REMOTE_CANCEL without an object id: dropped")
            return
        with self.lock:
            self._cancel_owned(oid, bool(h.get("force")), bool(h.get("rec", True)))

    def _h_publish(self, h: dict, payload: list) -> None:
        if h.get("ch") == "gcs":  # our raylet: the GCS went away / came back
            down = h.get("ev") == "down"
            with self.lock:
                self._gcs_news = True
                self.gcs_down = (h.get("msg") or "The GCS is unreachable.") if down else ""
        elif h.get("ch") == "node" and h.get("ev") == "dead":
            raylet = h.get("raylet")
            tcp = raylet[2] if raylet and len(raylet) > 2 else None
            with self.lock:
                self._do(ev.NodeDied(h["node"], tcp))

    def _h_object_location_add(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.LocationAdded(h["oid"], h["node"], h.get("raylet")))

    def _h_get_object_locations(self, h: dict, payload: list) -> None:
        with self.lock:
            self._do(ev.GetLocations(h["oid"], h["ra"], h.get("rid")))

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
        protocol.REMOTE_CANCEL: _h_remote_cancel,
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
            factory = type(self)._actor_calls_factory
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
            if e is not None and not e.owned:
                # A borrowed ref: its owner cancels the task (Ray's CancelRemoteTask).
                if ref._owner is not None:
                    self.conns.send(self.addr_of(ref._owner), {
                        "t": protocol.REMOTE_CANCEL, "oid": ref._id, "force": bool(force),
                        "rec": bool(recursive)})
                return
            self._cancel_owned(ref._id, force, recursive)

    def _cancel_owned(self, oid: bytes, force: bool, recursive: bool) -> None:
        """Cancel the task that makes ``oid``, which we own (caller holds the lock)."""
        e = self.objects.get(oid)
        if e is None or not e.owned or e.task_id is None:
            return
        t = self.tasks.get(e.task_id)
        if t is None or t.state == "done":
            return  # finished: no-op
        self._do(ev.Cancel(t.tid, force, recursive))

    def cancel_children(self, parent: bytes, force: bool) -> None:
        with self.lock:
            self._do(ev.CancelChildren(parent, force))

    def _h_ping(self, h: dict) -> None:
        if "ra" in h:
            self.conns.send(h["ra"], {"t": protocol.PONG, "rid": h.get("rid")})

    def _h_pong(self, h: dict) -> None:
        with self.lock:
            addr = self._ping_rids.pop(h.get("rid", 0), None)
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
            self._do(ev.LocalRayletDied())
            return
        failed = []
        for oid, e in list(self.objects.items()):
            if not e.owned and e.state == PENDING and e.owner and \
                    Address.unpack(e.owner).for_node(self.node_id) == addr:
                failed.append((oid, exc.OwnerDiedError(oid.hex(), addr)))
        if failed:
            self._do(ev.ObjectsFailed(failed))

    def _tick(self, now: float) -> None:
        if self.on_tick is not None:
            self.on_tick(now)
        memo = self.wait_memo
        if memo is not None and now - memo[2] > 1.0:
            self.wait_memo = None
        with self.lock:
            if now - self._last_liveness >= 1.0:
                self._last_liveness = now
                self._check_liveness(now)
            self._do(ev.Tick(now))

    def shutdown(self) -> None:
        self._stop_polling()
        with self.lock:
            self._do(ev.Shutdown())
        self.conns.close()
        self.inbound.close()
        self._close_wake_pipe()

    # ------------------------------------------- instructions (see _EXEC below)
    def _x_request_lease(self, i: ins.RequestLease) -> None:
        dest = i.dest or self.raylet_ipc
        h = {"t": protocol.REQUEST_LEASE, "lrid": i.lrid, "res": i.res,
             "ra": self.my_addr_for(dest), "own": self.address_packed}
        if not i.retriable:
            h["rt"] = False  # its memory monitor kills retriable work first
        if i.strategy is not None:
            h["strat"] = protocol.strategy_wire(i.strategy)
        self.conns.send(dest, h)

    def _x_push_task(self, i: ins.PushTask) -> None:
        t = i.task
        argd, payload = task_codec.describe_args(self.objects, t.args, self.address_packed)
        w = i.worker
        h = {"t": protocol.PUSH_TASK, "tid": t.tid, "fn": t.fn_id, "name": t.fname,
             "nret": t.nret, "args": argd, "kw": t.kwnames, "own": self.address_packed,
             "drv": self.driver_addr, "job": self.job_id, "res": w.res, "att": t.attempt}
        if t.max_calls:
            h["mc"] = t.max_calls
        if t.env:
            h["env"] = t.env
        self.conns.send(w.addr, h, payload)

    def _x_return_lease(self, i: ins.ReturnLease) -> None:
        dest = i.raylet if isinstance(i.raylet, str) else self.addr_of(i.raylet)
        self.conns.send(dest, {"t": protocol.RETURN_LEASE, "lease": i.lease, "exit": i.exiting})

    def _x_free_objects(self, i: ins.FreeObjects) -> None:
        d = i.dest
        dest = self.raylet_ipc if d is None else d if isinstance(d, str) else \
            Address.unpack(d).for_node(self.node_id)
        h = {"t": protocol.FREE_OBJECTS, "oids": i.oids}
        if i.node is not None:
            h["node"] = i.node
        self.conns.send(dest, h)

    def _x_add_borrower(self, i: ins.AddBorrower) -> None:
        self._send_owner(i.owner, {"t": protocol.ADD_BORROWER, "oid": i.oid,
                                   "b": i.borrower or self.address_packed})

    def _x_remove_borrower(self, i: ins.RemoveBorrower) -> None:
        self._send_owner(i.owner, {"t": protocol.REMOVE_BORROWER, "oid": i.oid,
                                   "b": self.address_packed})

    def _x_fetch_object(self, i: ins.FetchObject) -> None:
        oid, e = i.oid, i.entry
        self._fetching[oid] = e  # watched by _check_liveness
        try:
            if e.owner is None:
                raise ConnectionError("no owner address")
            dest = self.addr_of(e.owner)
        except ConnectionError as err:
            log.warning("%s", err)
            self._do(ev.ObjectsFailed([(oid, exc.OwnerDiedError(oid.hex(), e.owner))]))
            return
        self.conns.send(dest, {"t": protocol.GET_OBJECT, "oid": oid, "ra": self.my_addr_for(dest)})

    def _x_send_value(self, i: ins.SendValue) -> None:
        if i.entry is not None:
            self._send_value(i.ra, i.oid, i.entry)
            return
        self.conns.send(i.ra, {"t": protocol.OBJECT_VALUE, "oid": i.oid, "st": FAILED,
                               "err": True}, _encode_error(i.error or exc.RaySystemError("lost")))

    def _x_cancel_running(self, i: ins.CancelRunning) -> None:
        self.conns.send(i.addr, {"t": protocol.CANCEL_TASK, "tid": i.tid, "force": i.force,
                                 "rec": i.recursive})

    def _x_locations_reply(self, i: ins.LocationsReply) -> None:
        self.conns.send(i.ra, {"t": protocol.OBJECT_LOCATIONS_REPLY, "rid": i.rid,
                               "oid": i.oid, "nodes": i.nodes})

    def _x_drop_connection(self, i: ins.DropConnection) -> None:
        self.conns.drop(i.addr)

    def _x_subscribe_actor(self, i: ins.SubscribeActor) -> None:
        self.conns.send(self.gcs, {"t": protocol.SUBSCRIBE_ACTOR, "aid": i.aid,
                                   "ra": self.my_addr_for(self.gcs), "wid": self.worker_id,
                                   "node": self.node_id})

    def _x_send_actor_call(self, i: ins.SendActorCall) -> None:
        self.conns.send(i.addr, i.header, i.payload)

    def _x_terminate_actor(self, i: ins.TerminateActor) -> None:
        # Ray: an actor whose every handle is gone ends after the calls queued to it.
        try:
            self.actor_calls().submit(i.aid, i.meta, "__ray_terminate__", (), {}, 0, 0,
                                      "__ray_terminate__ (out of scope)")  # the death's why
        except Exception:  # noqa: BLE001 - shutting down, or the actor is gone
            log.debug("could not end actor %s", i.aid.hex(), exc_info=True)


_EXEC: dict[type, Any] = {
    ins.RequestLease: CoreWorker._x_request_lease,
    ins.PushTask: CoreWorker._x_push_task,
    ins.ReturnLease: CoreWorker._x_return_lease,
    ins.FreeObjects: CoreWorker._x_free_objects,
    ins.AddBorrower: CoreWorker._x_add_borrower,
    ins.RemoveBorrower: CoreWorker._x_remove_borrower,
    ins.FetchObject: CoreWorker._x_fetch_object,
    ins.SendValue: CoreWorker._x_send_value,
    ins.ObjectsReady: CoreWorker._x_objects_ready,
    ins.GeneratorEnded: CoreWorker._x_generator_ended,
    ins.CancelRunning: CoreWorker._x_cancel_running,
    ins.LocationsReply: CoreWorker._x_locations_reply,
    ins.DropConnection: CoreWorker._x_drop_connection,
    ins.SubscribeActor: CoreWorker._x_subscribe_actor,
    ins.SendActorCall: CoreWorker._x_send_actor_call,
    ins.TerminateActor: CoreWorker._x_terminate_actor,
}


def _encode_error(err: BaseException) -> list:
    return serialization.serialize(err)[0]
