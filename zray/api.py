"""The public API: init, shutdown, remote, get, put, wait, cancel, nodes, ..."""

from __future__ import annotations

import atexit
import inspect
import logging
import operator
import os
import sys
import threading
import time
from typing import Any

from zray import exceptions as exc
from zray import ids, node, protocol, serialization, session_lookup, worker_state
from zray.core_worker import CoreWorker
from zray.object_ref import ObjectRef, ObjectRefGenerator
from zray.remote_function import RemoteFunction

log = logging.getLogger("zray")

_init_lock = threading.RLock()
_head: node.NodeProcesses | None = None
_info: dict = {}


def is_initialized() -> bool:
    return worker_state.current() is not None


def _ensure_initialized() -> CoreWorker:
    cw = worker_state.current()
    if cw is None:
        with _init_lock:
            cw = worker_state.current()
            if cw is None:
                init()
                cw = worker_state.current()
    return cw


worker_state.set_init_hook(_ensure_initialized)


def _find_local_session(address: str | None) -> str | None:
    """The newest session of this user on this machine (for address='auto' or host:port)."""
    return session_lookup.find(address, _same_address).session


def _ip_toward(gcs_address: str) -> str:
    """The address of ours that reaches the GCS at host:port (no packet is sent)."""
    import socket

    host = gcs_address.rpartition(":")[0].strip("[]")
    if not host or host in ("127.0.0.1", "localhost", "0.0.0.0"):
        return "127.0.0.1"
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def _same_address(a: str, b: str) -> bool:
    ah, _, ap = a.rpartition(":")
    bh, _, bp = b.rpartition(":")
    local = {"127.0.0.1", "localhost", "0.0.0.0", ""}
    return ap == bp and (ah == bh or (ah in local and bh in local))


def init(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
         resources: dict | None = None, object_store_memory: int | None = None,
         namespace: str | None = None, ignore_reinit_error: bool = False,
         include_dashboard: bool | None = None, log_to_driver: bool = True,
         logging_level: int = logging.INFO, runtime_env: dict | None = None,
         _node_ip_address: str | None = None, **kwargs: Any) -> dict:
    """Connect this process to a cluster, starting a local one if no address is given."""
    unknown = set(kwargs) - {"configure_logging", "_system_config", "_temp_dir", "dashboard_host",
                             "dashboard_port", "local_mode", "_memory", "_enable_object_reconstruction",
                             "storage", "_plasma_directory"}
    if unknown:
        raise TypeError(f"init() got unexpected keyword argument(s): {sorted(unknown)}")
    global _head
    with _init_lock:
        if worker_state.current() is not None:
            if ignore_reinit_error:
                return dict(_info)
            raise RuntimeError("Maybe you called zray.init twice by accident? This error can be "
                               "suppressed by passing in 'ignore_reinit_error=True' or by calling "
                               "'zray.shutdown()' prior to 'zray.init()'.")
        if address is None:
            address = os.environ.get("ZRAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
        if address == "local":  # Ray: start a new local cluster, whatever RAY_ADDRESS says
            address = None
        if address is None:
            head = node.start_head(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                                   object_store_memory=object_store_memory, embedded=True,
                                   system_config=kwargs.get("_system_config"))
            session_dir, node_id, raylet_ipc = head.session_dir, head.node_id, head.raylet_ipc
            _head = head
        else:
            if num_cpus is not None or num_gpus is not None or resources:
                raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus "
                                 "and resources must not be provided.")
            if kwargs.get("_system_config"):
                raise ValueError("When connecting to an existing cluster, _system_config "
                                 "must not be provided.")
            session_dir = _connectable_session(address)
            node_id, raylet_ipc, node_ip = _local_raylet(session_dir, address)
            head = None
        try:
            cw = _connect(session_dir, node_id, raylet_ipc, namespace, head,
                          node_ip=head.node_ip if head is not None else node_ip)
        except BaseException:
            if head is not None:
                head.stop()
                _head = None
            raise
        cw.log_sink = _print_logs if log_to_driver else None
        worker_state.set_current(cw)
        _info.clear()
        _info.update({"session_dir": session_dir, "node_id": node_id.hex(),
                      "gcs_address": cw.gcs_address, "address": cw.gcs_address,
                      "node_ip_address": cw.node_ip, "namespace": cw.namespace})
        return dict(_info)


def _connectable_session(address: str) -> str:
    """Find the session directory of the cluster at address, or raise ConnectionError."""
    if address != "auto" and ":" not in address:
        raise ValueError(f"Invalid address {address!r}: expected 'host:port' or 'auto'")
    lk = session_lookup.find(address, _same_address)
    session = lk.session
    if session is None:
        raise ConnectionError(session_lookup.none_found_message(lk, address))
    secret = session_lookup.read_secret(session)
    with open(os.path.join(session, "gcs_address")) as f:
        gaddr = f.read().strip()
    # Prove the GCS answers before going further (10 s at most).
    conns = protocol.Connections(secret)
    import zmq

    inbound = protocol.Inbound(None, _ip_toward(gaddr), secret)
    try:
        conns.send("tcp://" + gaddr, {"t": protocol.PING, "ra": inbound.tcp_addr, "rid": 1})
        poller = zmq.Poller()
        inbound.register(poller)
        got: list[dict] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
            if ready:
                inbound.drain(ready, lambda h, p: got.append(h))
        if not got:
            raise ConnectionError(f"Could not connect to a zray cluster at {address}: the GCS at "
                                  f"{gaddr} did not answer within 5 s.")
    finally:
        conns.close()
        inbound.close()
    return session


def _local_raylet(session_dir: str, address: str) -> tuple[bytes, str, str]:
    """(node id, ipc address, node ip) of the raylet to attach to: the head's if it is here.

    A session directory may hold several raylets (test clusters of many nodes on one
    machine): the GCS's node table says which one is the head.
    """
    best = None
    for n in _session_nodes(session_dir):
        ipc = n.get("RayletSocketName") or ""
        if n.get("Alive") and ipc.startswith("ipc://") and os.path.exists(ipc[len("ipc://"):]):
            rank = 0 if n.get("IsHead") else 1
            if best is None or rank < best[0]:
                best = (rank, n)
    if best is not None:
        n = best[1]
        return bytes.fromhex(n["NodeID"]), n["RayletSocketName"], n.get("NodeManagerAddress") \
            or "127.0.0.1"
    sock_dir = os.path.join(session_dir, "sockets")
    names = sorted(n for n in os.listdir(sock_dir) if n.startswith("raylet-"))
    if not names:
        raise ConnectionError(f"The cluster at {address} has no raylet on this machine.")
    path = os.path.join(sock_dir, names[0])
    # The raylet tells us its full node id when we register.
    # A node that joined from another machine (`zray start --address`): its own IP.
    return b"", "ipc://" + path, _ip_toward(_read_gcs_address(session_dir))


def _session_nodes(session_dir: str, timeout: float = 5.0) -> list[dict]:
    """The GCS's node table, asked over the session's ipc socket ([] if there is none)."""
    import zmq

    gcs = os.path.join(session_dir, "sockets", "gcs")
    if not os.path.exists(gcs):
        return []
    inbound = protocol.Inbound(os.path.join(session_dir, "sockets", "q-" + os.urandom(6).hex()),
                               None, None)
    conn = protocol.Conn("ipc://" + gcs, None)
    got: list = []
    try:
        conn.send({"t": protocol.GET_NODES, "ra": inbound.ipc_addr, "rid": 1})
        poller = zmq.Poller()
        inbound.register(poller)
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            ready = dict(poller.poll(100))
            if ready:
                inbound.drain(ready, lambda h, p: got.append(h))
    finally:
        conn.close()
        inbound.close()
        try:
            os.unlink(inbound.ipc_addr[len("ipc://"):])
        except OSError:
            pass
    return got[0].get("nodes", []) if got else []


def _connect(session_dir: str, node_id: bytes, raylet_ipc: str, namespace: str | None,
             head: node.NodeProcesses | None, node_ip: str = "127.0.0.1") -> CoreWorker:
    secret = session_lookup.read_secret(session_dir)
    job_id = os.urandom(4)
    cw = CoreWorker(mode="driver", session_dir=session_dir, node_id=node_id,
                    raylet_ipc=raylet_ipc, secret=secret, job_id=job_id, node_ip=node_ip,
                    namespace=namespace or _anon_namespace())
    try:
        def dead() -> str | None:
            if head is not None and not head.alive():
                return (f"The local zray node failed to start: {head.dead_message()}; "
                        f"see {session_dir}/logs")
            return None

        try:
            h, _ = cw.request(raylet_ipc, {"t": protocol.REGISTER_CLIENT, "kind": "driver",
                                           "wid": cw.worker_id, "addr": cw.address_packed,
                                           "pid": os.getpid()}, timeout=60, alive=dead)
        except TimeoutError:
            raise ConnectionError(f"The raylet at {raylet_ipc} did not answer within "
                                  "60 s") from None
        cw.node_id = h["node"]
        cw.address.node_id = h["node"]
        cw.address_packed = cw.address.pack()
        cw.driver_addr = cw.address_packed
        cw.shm_prefix = h["shm"]
        cw.gcs = h["gcs"]
        cw.registered_gcs_status(h.get("gcs_down", ""))
        cw.node_ip = h.get("node_ip", "127.0.0.1")
        cw.gcs_address = h.get("gcs_address") or _read_gcs_address(session_dir)
        info = {"path": [os.getcwd(), *(p for p in sys.path[:1] if p)], "pid": os.getpid(),
                "namespace": cw.namespace}
        cw.request(cw.gcs, {"t": protocol.KV_PUT, "ns": "job", "k": job_id},
                   [serialization.dumps_plain(info)])
    except BaseException:
        cw.shutdown()
        raise
    return cw


def _read_gcs_address(session_dir: str) -> str:
    path = os.path.join(session_dir, "gcs_address")
    for _ in range(100):
        try:
            with open(path) as f:
                v = f.read().strip()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.02)
    return ""


def _anon_namespace() -> str:
    return "anonymous-" + os.urandom(8).hex()


def _print_logs(h: dict, payload: list) -> None:
    out = sys.stderr if h.get("err") else sys.stdout
    pfx = h.get("pfx", "")
    try:
        out.write("".join(f"{pfx} {line}\n" for line in h.get("lines", [])))
        out.flush()
    except Exception:
        pass


def shutdown() -> None:
    """Disconnect; stop the local cluster if this driver started it."""
    global _head
    with _init_lock:
        cw = worker_state.current()
        if cw is not None and cw.mode == "driver":
            worker_state.set_current(None)
            try:
                if _head is None:  # a cluster that outlives us: end this job's actors
                    from zray import actor_submitter

                    actor_submitter.on_driver_shutdown(cw)
                cw.shutdown()
            except Exception:
                log.exception("error while disconnecting")
        if _head is not None:
            _head.stop()
            _head = None
        _info.clear()


atexit.register(shutdown)


# ----------------------------------------------------------------- remote
def remote(*args: Any, **kwargs: Any) -> Any:
    """Decorate a function (task) or class (actor); with or without options."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args or not kwargs:  # Ray: `@ray.remote()` (empty parentheses) is refused too
        raise TypeError("The @zray.remote decorator must be applied either with no arguments "
                        "and no parentheses, or only with keyword arguments, e.g. "
                        "@zray.remote(num_returns=2, num_cpus=1)")

    def decorator(fn_or_cls: Any) -> Any:
        return _make_remote(fn_or_cls, kwargs)

    return decorator


def _make_remote(obj: Any, options: dict) -> Any:
    if inspect.isclass(obj):
        from zray import actor

        return actor.make_actor_class(obj, options)
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or callable(obj):
        return RemoteFunction(obj, options)
    raise TypeError("The @zray.remote decorator must be applied to either a function or a class.")


# ---------------------------------------------------------------- objects
def get(object_refs: Any, *, timeout: float | None = None) -> Any:
    """Block until the object(s) are ready and return their value(s)."""
    cw = _ensure_initialized()
    if isinstance(object_refs, ObjectRefGenerator):
        raise TypeError("zray.get() does not accept an ObjectRefGenerator: iterate over it "
                        "and call zray.get() on each ref it yields")
    single = isinstance(object_refs, ObjectRef)
    if single:
        refs = [object_refs]
    elif isinstance(object_refs, (list, tuple)):
        refs = list(object_refs)
        for r in refs:
            if not isinstance(r, ObjectRef):
                raise TypeError("zray.get() expected a list of ObjectRefs, got an element of "
                                f"type {type(r).__name__}")
    else:
        raise ValueError(f"Invalid type of object refs, {type(object_refs)}, is given. "
                         "'object_refs' must either be an ObjectRef or a list of ObjectRefs.")
    if timeout is not None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise TypeError(f"timeout must be a number or None, got {timeout!r}")
        if timeout < 0:
            raise ValueError("'timeout' must be a non-negative number or None")
    values = cw.get(refs, timeout)
    return values[0] if single else values


def put(value: Any, *, _owner: Any = None) -> ObjectRef:
    """Store a value and return a reference to it."""
    cw = _ensure_initialized()
    return cw.put(value)


def wait(object_refs: list, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True) -> tuple[list, list]:
    """Return (ready, not_ready) once num_returns refs are ready or timeout passes."""
    cw = _ensure_initialized()
    if isinstance(object_refs, (ObjectRef, ObjectRefGenerator)):
        raise TypeError("wait() expected a list of zray.ObjectRef, got a single zray.ObjectRef")
    if not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of zray.ObjectRef, got {type(object_refs)}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")
    if not object_refs:
        return [], []
    if isinstance(num_returns, bool) or not isinstance(num_returns, int):
        raise TypeError(f"num_returns must be an int, got {num_returns!r}")
    if num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    # `ready, not_ready = wait(not_ready)` in a loop is the idiom: the list the last
    # call returned was checked when it was made, so its ids are reused rather than
    # checked again (O(1) instead of O(n) a call; a list changed to another length is
    # checked as new).
    memo = cw.wait_memo
    known = None
    if memo is not None and memo[0] is object_refs and len(memo[1]) == len(object_refs):
        ids_, known = memo[1], memo[3]
    else:
        for t in set(map(type, object_refs)):  # C-speed
            if t is not ObjectRef and not issubclass(t, ObjectRef):
                raise TypeError(f"wait() expected a list of zray.ObjectRef, got list "
                                f"containing {t}")
        ids_ = set(map(_ref_id, object_refs))
        if len(ids_) != len(object_refs):
            raise ValueError("Wait requires a list of unique object refs.")
    if num_returns > len(object_refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided "
                         f"to zray.wait ({num_returns} > {len(object_refs)}).")
    cw.wait_memo = None
    ready, not_ready, known = cw.wait(object_refs, num_returns, timeout, fetch_local, ids_,
                                      known)
    if not_ready and len(ready) < 64:
        ids_.difference_update(map(_ref_id, ready))  # ids_ is ours: a fresh set or the memo's
        cw.wait_memo = (not_ready, ids_, time.monotonic(), known)
    return ready, not_ready


_ref_id = operator.attrgetter("_id")


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that makes object_ref."""
    cw = _ensure_initialized()
    if not isinstance(object_ref, ObjectRef):
        raise TypeError("zray.cancel() only supported for ObjectRefs, got "
                        f"{type(object_ref).__name__}")
    cw.cancel(object_ref, force, recursive)


# -------------------------------------------------------------- cluster info
def nodes() -> list[dict]:
    """Every node the cluster has known, alive or dead, with Ray's keys."""
    cw = _ensure_initialized()
    h, _ = cw.request(cw.gcs, {"t": protocol.GET_NODES})
    return h["nodes"]


def cluster_resources() -> dict:
    out: dict = {}
    for n in nodes():
        if n["Alive"]:
            for k, v in n["Resources"].items():
                out[k] = out.get(k, 0.0) + v
    return out


def available_resources() -> dict:
    out: dict = {}
    for n in nodes():
        if n["Alive"]:
            for k, v in n["AvailableResources"].items():
                if v > 0:
                    out[k] = out.get(k, 0.0) + v
    return out


def get_gpu_ids() -> list:
    cw = _ensure_initialized()
    return list(cw.assigned_resources.get("GPU_ids", []))


def _cw_or_none() -> CoreWorker | None:
    return worker_state.current()


__all__ = ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "cancel",
           "nodes", "cluster_resources", "available_resources", "get_gpu_ids", "ObjectRef",
           "ObjectRefGenerator", "exc", "ids"]
