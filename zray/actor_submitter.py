"""The caller's side of actors, the shell part: creating them, encoding calls, and
turning the GCS's ACTOR_STATE publications into owner events.

The per-actor state (where the actor is, sequence numbers, queued and
in-flight calls, restarts) lives in the owner (zray/owner/actors.py); this
module builds the messages and hands them over with ``ev.Submit`` of a Task
whose ``actor`` field is an ``owner.actors.Call``. One ``ActorSubmitter`` per
CoreWorker (made on first use, ``CoreWorker.actor_calls``).
"""

from __future__ import annotations

import logging
from typing import Any

from zray import exceptions as exc
from zray import ids, protocol, serialization, task_codec
from zray.core_worker import CoreWorker, Task
from zray.owner import events as ev
from zray.owner.actors import ActorState, Call

log = logging.getLogger("zray.actor")


class ActorSubmitter:
    def __init__(self, cw: CoreWorker):
        self.cw = cw
        self.namespaces: dict[bytes, str | None] = {}

    @property
    def actors(self) -> dict[bytes, ActorState]:
        return self.cw.owner.actors

    # ------------------------------------------------------------ handles
    def handle_made(self, aid: bytes, meta: dict | None, owned: bool = False) -> None:
        cw = self.cw
        with cw.lock:
            cw._do(ev.ActorHandleMade(aid, meta, owned))

    def handle_dropped(self, aid: bytes) -> None:
        self.cw._actor_drops.append(aid)  # __del__ may run with any lock held

    def escaped(self, aid: bytes) -> None:
        cw = self.cw
        with cw.lock:
            cw._do(ev.ActorEscaped(aid))

    # ---------------------------------------------------------- creation
    def job_namespace(self) -> str | None:
        cw = self.cw
        if cw.mode == "driver":
            return cw.namespace
        job = cw.job_id
        if job not in self.namespaces:
            ns = None
            try:
                _, payload = cw.request(cw.gcs, {"t": protocol.KV_GET, "ns": "job", "k": job})
                if payload:
                    ns = serialization.loads_plain(payload[0]).get("namespace")
            except Exception:  # noqa: BLE001 - no job info: the anonymous namespace
                pass
            self.namespaces[job] = ns
        return self.namespaces[job]

    def create(self, fn_id: bytes, meta: dict, args: tuple, kwargs: dict, o: dict) -> tuple:
        """Register a new actor with the GCS; returns (actor id, meta, owned)."""
        cw = self.cw
        aid = ids.new_unique_id()
        name = o.get("name")
        ns = o.get("namespace") or self.job_namespace()
        argd, payload, keep = self.encode_args(args, kwargs, f"{meta['cls']}.__init__")
        spec = {"fn": fn_id, "cls": meta["cls"], "res": o["_resources"], "hold": o["_hold"],
                "strat": protocol.strategy_wire(o.get("scheduling_strategy")),
                "max_restarts": o.get("max_restarts") or 0,
                "max_concurrency": o.get("max_concurrency"), "async": meta.get("async", False),
                "meta": meta, "env": (o.get("runtime_env") or {}).get("env_vars") or None}
        detached = o.get("lifetime") == "detached"
        with cw.lock:
            cw._do(ev.ActorRegistered(aid, meta, detached, keep))
        h = {"t": protocol.REGISTER_ACTOR, "aid": aid, "name": name, "ns": ns,
             "detached": detached, "gie": bool(o.get("get_if_exists")),
             "owner": cw.address_packed, "owner_wid": cw.worker_id,
             "drv": cw.driver_addr, "job": cw.job_id, "spec": spec, "args": argd,
             "kw": list(kwargs), "sub": cw.my_addr_for(cw.gcs)}
        try:
            r, _ = cw.request(cw.gcs, h, payload)
        except BaseException:
            with cw.lock:
                cw._do(ev.ActorForgotten(aid))
            raise
        if r.get("ok") and not r.get("existing"):
            return aid, meta, True
        with cw.lock:
            cw._do(ev.ActorForgotten(aid))
        if not r.get("ok"):
            raise exc.ActorAlreadyExistsError(r.get("msg") or f"The name {name} is taken")
        return r["existing"], r.get("meta") or meta, False

    def encode_args(self, args: tuple, kwargs: dict, what: str) -> tuple[list, list, list]:
        """Argument descriptors, their frames, and the refs to hold until the call is done."""
        cw = self.cw
        argv, nested = task_codec.encode_args(cw, args, kwargs, what)
        with cw.lock:
            argd, payload = task_codec.describe_args(cw.objects, argv, cw.address_packed)
        return argd, payload, [a for a in argv if type(a) is not list] + nested

    # ------------------------------------------------------------- calls
    def submit(self, aid: bytes, meta: dict, method: str, args: tuple, kwargs: dict,
               nret: Any, retries: int, name: str | None = None) -> Any:
        cw = self.cw
        tid = ids.new_task_id()
        fname = name or f"{meta.get('cls', 'Actor')}.{method}"
        wnret = -1 if nret == "streaming" else nret
        if args or kwargs:
            argd, payload, keep = self.encode_args(args, kwargs, fname)
            kwnames = list(kwargs)
        else:
            argd, payload, keep, kwnames = [], [], [], []
        h = {"t": protocol.PUSH_TASK, "tid": tid, "aid": aid, "meth": method,
             "name": fname, "nret": wnret, "args": argd, "kw": kwnames,
             "own": cw.address_packed, "drv": cw.driver_addr, "job": cw.job_id,
             "cid": cw.worker_id}
        t = Task(tid, fname, nret, keep, kwnames, retries=retries, parent=cw.current_task_id,
                 actor=Call(aid, meta, h, payload))
        # t.args (the refs kept) are held until the call is done (then dropped).
        limit = meta.get("max_pending_calls") or -1
        with cw.lock:
            if limit > 0 and cw.owner.pending_calls(aid) >= limit:
                raise exc.PendingCallsLimitExceeded(
                    f"The actor {aid.hex()} has {limit} pending calls from this process "
                    f"(max_pending_calls={limit}).")
            cw._do(ev.Submit(t))
            return cw.returns_of(t)

    # --------------------------------------------------------- lifecycle
    def on_actor_state(self, h: dict, payload: list) -> None:
        """ACTOR_STATE from the GCS: where the actor is now, or that it restarts or died."""
        cw = self.cw
        aid = h["aid"]
        new = h["st"]
        with cw.lock:
            st = self.actors.get(aid)
            if st is None:
                return
            if new == protocol.ACTOR_ALIVE:
                e: Any = ev.ActorAlive(aid, h["inc"], cw.addr_of(h["addr"]), h.get("pid", 0))
            elif new == protocol.ACTOR_RESTARTING:
                e = ev.ActorRestarting(aid)
            elif new == protocol.ACTOR_DEAD:
                e = ev.ActorDead(aid, death_error(st, h, payload),
                                 h.get("kind") == protocol.DIED_EXITED)
            else:
                e = ev.ActorPending(aid)
            cw._do(e)

    def kill(self, aid: bytes, no_restart: bool) -> None:
        cw = self.cw
        r, _ = cw.request(cw.gcs, {"t": protocol.KILL_ACTOR, "aid": aid,
                                   "no_restart": bool(no_restart)})
        if not r.get("ok"):
            raise ValueError(f"The actor {aid.hex()} is not known to the cluster.")
        if r.get("state", {}).get("st") == protocol.ACTOR_DEAD and aid in self.actors:
            self.on_actor_state(r["state"], [])  # calls made after kill() fail at once


def death_error(st: ActorState, h: dict, payload: list) -> BaseException:
    """The exception a call to this dead actor raises."""
    aid = st.aid.hex()
    kind = h.get("kind")
    if kind == protocol.DIED_CREATION_ERROR and payload:
        try:
            cause = serialization.deserialize(payload)
        except Exception as e:  # noqa: BLE001
            cause = exc.RaySystemError(f"undecodable creation error: {e}")
        return exc.ActorDiedError(cause, "The actor died because of an error raised in its "
                                  f"creation task, {cause}", aid)
    if kind == protocol.DIED_UNSCHEDULABLE:
        return exc.ActorUnschedulableError(
            f"The actor {aid} ({h.get('cls') or st.cls_name}) cannot be scheduled: "
            f"{h.get('msg') or 'no node fits it'}")
    lines = ["The actor died unexpectedly before finishing this task.",
             f"\tclass_name: {h.get('cls') or st.cls_name}", f"\tactor_id: {aid}"]
    if h.get("pid"):
        lines.append(f"\tpid: {h['pid']}")
    if h.get("name"):
        lines.append(f"\tname: {h['name']}")
    if h.get("ns"):
        lines.append(f"\tnamespace: {h['ns']}")
    lines.append(h.get("msg") or "The actor is dead.")
    return exc.ActorDiedError(None, "\n".join(lines), aid)


def submitter(cw: CoreWorker) -> ActorSubmitter:
    """This process's ActorSubmitter (made on first use)."""
    s = cw.actor_calls()
    assert isinstance(s, ActorSubmitter)
    return s


def _h_actor_state(cw: CoreWorker, h: dict, payload: list) -> None:
    submitter(cw).on_actor_state(h, payload)


CoreWorker.register_actor_calls(ActorSubmitter)
CoreWorker.register_handler(protocol.ACTOR_STATE, _h_actor_state)


def on_driver_shutdown(cw: CoreWorker) -> None:
    """zray.shutdown() in a driver: its job is over, so its non-detached actors end."""
    try:
        cw.request(cw.gcs, {"t": protocol.JOB_FINISHED, "wid": cw.worker_id,
                            "addr": cw.address.ipc, "job": cw.job_id}, timeout=2.0)
    except Exception:  # noqa: BLE001 - the cluster may be gone already
        pass

