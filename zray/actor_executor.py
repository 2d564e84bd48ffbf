"""The actor's side: a worker that became an actor runs its constructor and its calls.

The GCS leases a pooled worker for the actor and sends it ``CREATE_ACTOR``.
The worker's main thread (worker_main.Executor.run_forever) hands over to
``become_actor``, which never returns: the worker is the actor's until the
actor dies, and then the process exits (its raylet reaps it and frees the lease).

Calls arrive as ``PUSH_TASK`` with an ``aid``, straight from their callers. The
I/O thread orders them per caller by sequence number and hands them to:

- a sync actor: the main thread, one call at a time;
- a threaded actor (``max_concurrency > 1``): a thread pool of that size;
- an async actor (any ``async def`` method): one asyncio event loop on the
  main thread, at most ``max_concurrency`` (default 1000) calls at once.

Cancellation (Ray's rules): a call not started yet never runs; a running call of
an async actor gets ``asyncio.CancelledError``; a running call of a sync or
threaded actor is not interrupted (actors have state), but its caller gets
``TaskCancelledError`` and the call can poll
``zray.get_runtime_context().is_canceled()``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import inspect
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from zray import exceptions as exc
from zray import protocol, serialization, task_codec
from zray.actor import ActorExit, ActorHandle
from zray.core_worker import INLINE, CoreWorker, Waiter
from zray.ids import ActorID, TaskID, new_task_id
from zray.returns import split_returns
from zray.util.dedup import RecentIds, task_key
from zray.util.logs import RateLimited

log = logging.getLogger("zray.actor")
_refused = RateLimited(log, "refused duplicate actor calls")

EXIT_ACK_TIMEOUT_S = 2.0


class CallOrder:
    """Calls of each caller in the order it submitted them: a plain state machine.

    A caller numbers its calls to this actor instance 0, 1, 2, ...; ``push``
    returns the calls that may run now (in order), holds early ones back, and
    drops duplicates (a number already seen).
    """

    def __init__(self) -> None:
        self.expected: dict[bytes, int] = {}  # caller id -> next sequence number
        self.held: dict[bytes, dict[int, Any]] = {}  # caller id -> calls that came early

    def push(self, cid: bytes | None, seq: int | None, item: Any) -> list:
        if cid is None or seq is None:
            return [item]
        exp = self.expected.get(cid, 0)
        if seq < exp:
            return []  # a duplicate
        if seq > exp:
            self.held.setdefault(cid, {})[seq] = item
            return []
        out = [item]
        exp += 1
        held = self.held.get(cid)
        while held and exp in held:
            out.append(held.pop(exp))
            exp += 1
        if held is not None and not held:
            del self.held[cid]
        self.expected[cid] = exp
        return out


class ActorRuntime:
    def __init__(self, ex: Any, h: dict):
        self.ex = ex
        self.cw: CoreWorker = ex.cw
        self.aid: bytes = h["aid"]
        self.inc: int = h["inc"]
        self.gcs: str = h["ra"]
        self.spec: dict = h["spec"]
        self.meta: dict = self.spec.get("meta") or {}
        self.cls_name: str = self.spec.get("cls", "Actor")
        self.is_async = bool(self.spec.get("async"))
        mc = self.spec.get("max_concurrency")
        self.max_concurrency = int(mc) if mc else (1000 if self.is_async else 1)
        self.mode = "async" if self.is_async else ("threaded" if self.max_concurrency > 1
                                                   else "sync")
        self.instance: Any = None
        self.lock = threading.Lock()
        self.order = CallOrder()
        self.taken = RecentIds()  # calls taken: a duplicate task id is refused
        self.cancelled: set[bytes] = set()
        self.local = threading.local()  # .tid: the call this thread runs
        self.exiting = False  # ending now: calls not started yet are answered "dead"
        self.closing = False  # __ray_terminate__ delivered: later calls are refused
        self.exit_why = ""  # why it ends on purpose (the death message), once known
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.waiter: Waiter | None = None  # the main thread, waiting for a sync call
        self._idle: Waiter | None = None
        self._has_call: Callable[[], bool] | None = None
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.atasks: dict[bytes, asyncio.Task] = {}
        self.sem: asyncio.Semaphore | None = None
        self.pid = os.getpid()

    def _aloop(self) -> asyncio.AbstractEventLoop:
        """The event loop of an async actor (made by start)."""
        assert self.loop is not None, "not an async actor"
        return self.loop

    def _tpool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool of a threaded actor (made by start)."""
        assert self.pool is not None, "not a threaded actor"
        return self.pool

    # ----------------------------------------------------------- creation
    def start(self, h: dict, payload: list) -> None:
        cw, ex = self.cw, self.ex
        cw.current_actor_id = self.aid
        cw.actor_restarted = self.inc > 0
        cw.assigned_resources = h.get("res") or {}
        cw.job_id = h.get("job", cw.job_id)
        cw.driver_addr = h.get("drv") or cw.driver_addr
        gpus = cw.assigned_resources.get("GPU_ids")
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        env = self.spec.get("env")
        if env:
            os.environ.update({str(k): str(v) for k, v in env.items()})
        ex.log_prefix = f"({self.cls_name} pid={self.pid})"
        ex.show_title(f"{self.cls_name}.__init__")
        if self.mode == "threaded":
            self.pool = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrency, thread_name_prefix="zray-actor")
        elif self.mode == "async":
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        cw.on_push_task = self.on_call
        cw.on_cancel_task = self.on_cancel
        cw.actor_runtime = self
        cw.current_task_id = new_task_id()
        try:
            ex.load_job(cw.job_id)
            cls = ex.load_function(self.spec["fn"])
            args, kwargs = self.decode_args(h, payload)
            self.instance = cls(*args, **kwargs)
        except (Exception, SystemExit) as e:
            err = self.error(f"{self.cls_name}.__init__", e)
            try:
                frames, _ = serialization.serialize(err)
            except exc.RaySerializationError:
                frames, _ = serialization.serialize(exc.RayTaskError(
                    f"{self.cls_name}.__init__", err.traceback_str, None, pid=self.pid))
            try:  # wait for the GCS to have the cause before the raylet reports our exit
                cw.request(self.gcs, {"t": protocol.ACTOR_CREATED, "aid": self.aid,
                                      "inc": self.inc, "wid": cw.worker_id, "ok": False,
                                      "msg": str(err)}, frames, timeout=EXIT_ACK_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - exit anyway
                pass
            _flush_and_exit(0, 0.02)
        finally:
            cw.current_task_id = None
            _flush_std()
        ex.show_title(self.cls_name)  # Ray: ray::<Class> while idle, <Class>.<method> in a call
        cw.current_actor_handle = ActorHandle(self.aid, self.meta, owned=False, weak=True)
        cw.conns.send(self.gcs, {"t": protocol.ACTOR_CREATED, "aid": self.aid, "inc": self.inc,
                                 "wid": cw.worker_id, "ok": True, "pid": self.pid})

    def run(self) -> None:
        if self.mode == "async":
            self.sem = asyncio.Semaphore(self.max_concurrency)
            self._aloop().run_forever()
        elif self.mode == "threaded":
            threading.Event().wait()
        else:
            while True:
                try:
                    h, payload = self.next_call()
                    self.run_call(h, payload)
                except KeyboardInterrupt:
                    continue  # a stray SIGINT: the actor goes on

    def next_call(self) -> tuple[dict, list]:
        """The next call of a sync actor. While there is none, the main thread polls the
        inbound sockets itself (CoreWorker._wait_until): a call that arrives is handed
        over without a thread switch."""
        q = self.q
        if q.empty():
            self.ex.show_title(self.cls_name)
            cw = self.cw
            w = self._idle
            if w is None:
                w = self._idle = Waiter(cw, sticky=True)
                self._has_call = lambda: not q.empty()
            with cw.lock:
                self.waiter = w
                try:
                    cw._wait_until(w, self._has_call, None)
                finally:
                    self.waiter = None
        return q.get()

    # ---------------------------------------------------- I/O thread side
    def on_call(self, h: dict, payload: list) -> None:
        if h.get("aid") != self.aid:
            self.reply_error(h, exc.ActorDiedError(
                None, "This worker does not host the actor the call was meant for (it "
                "died and was restarted elsewhere).", h.get("aid", b"").hex()))
            return
        with self.lock:
            if not self.taken.add(task_key(h)):
                _refused.warning("refused a duplicate actor call %s", h.get("tid", b"").hex())
                return
            if self.exiting or self.closing:
                ready = [(h, payload)]
            else:
                ready = self.order.push(h.get("cid"), h.get("seq"), (h, payload))
        for item in ready:
            self.deliver(*item)

    def deliver(self, h: dict, payload: list) -> None:
        if self.exiting or self.closing:
            self.reply_dead(h)
            return
        if h.get("meth") == "__ray_terminate__" and self.mode != "sync":
            # After every call delivered before it (they are queued or running).
            self.closing = True
            self.exit_why = terminate_msg(h)
            threading.Thread(target=self._terminate_concurrent, args=(h,), daemon=True).start()
            return
        if self.mode == "sync":
            self.q.put((h, payload))
            w = self.waiter
            if w is not None and w.ident != threading.get_ident():
                with self.cw.lock:
                    if self.waiter is not None:
                        self.waiter.notify()
        elif self.mode == "threaded":
            self._tpool().submit(self._run_threaded, h, payload)
        else:
            self._aloop().call_soon_threadsafe(self._start_async, h, payload)

    def on_cancel(self, h: dict) -> None:
        tid = h["tid"]
        if h.get("rec", True):
            self.cw.cancel_children(tid, False)
        with self.lock:
            if self.mode == "async":
                task = self.atasks.get(tid)
                if task is not None:
                    self._aloop().call_soon_threadsafe(task.cancel)
                    return
            self.cancelled.add(tid)  # not started: never runs; running: flagged

    def is_canceled(self, tid: bytes | None) -> bool:
        # The calling thread's call (threads of a threaded actor share cw.current_task_id).
        tid = getattr(self.local, "tid", None) or tid
        return tid is not None and tid in self.cancelled

    # ------------------------------------------------------- calls (sync)
    def _run_threaded(self, h: dict, payload: list) -> None:
        try:
            self.run_call(h, payload)
        except BaseException:  # noqa: BLE001 - a pool thread must not die silently
            log.exception("actor call failed")

    def run_call(self, h: dict, payload: list) -> None:
        cw, ex = self.cw, self.ex
        tid = h["tid"]
        if self.cancelled and tid in self.cancelled:  # cancelled before it started
            with self.lock:
                self.cancelled.discard(tid)
            self.reply_error(h, exc.TaskCancelledError(TaskID(tid)))
            return
        if self.exiting:
            self.reply_dead(h)
            return
        cw.current_task_id = tid
        self.local.tid = tid
        cw.driver_addr = h.get("drv") or cw.driver_addr
        meth = h.get("meth", "")
        ex.show_title(h.get("name") or f"{self.cls_name}.{meth}")
        owner = cw.addr_of(h["own"])
        nret = h["nret"]
        partial: list = []  # what a static-num_returns generator yielded before it raised
        exit_after = False
        exit_why = ""
        try:
            try:
                if meth == "__ray_terminate__":
                    exit_after = True
                    exit_why = self.exit_why = terminate_msg(h)
                    self.reply_dead(h, exit_why)
                    return
                args, kwargs = self.decode_args(h, payload)
                fn = self.method(meth)
                if nret == -1:
                    ex.run_streaming(h, owner, fn, args, kwargs)
                    return
                result = fn(*args, **kwargs)
                values = split_returns(result, nret, partial)
                if tid in self.cancelled:  # cancelled while it ran: Ray reports the cancel
                    self.reply_error(h, exc.TaskCancelledError(TaskID(tid)))
                    return
            except (ActorExit, SystemExit):
                exit_after = True
                exit_why = self.exit_why = EXIT_ACTOR_MSG
                self.reply_dead(h, "The actor exited intentionally (exit_actor()) in this call.")
                return
            except Exception as e:
                self.reply_error(h, self.error(h.get("name", meth), e), partial)
                return
            self.reply_values(h, owner, values)
        finally:
            if self.cancelled:
                with self.lock:
                    self.cancelled.discard(tid)
            self.local.tid = None
            cw.current_task_id = None
            _flush_std()
            if exit_after:
                self.exit_gracefully(exit_why)

    def reply_values(self, h: dict, owner: str, values: list) -> None:
        if len(values) == 1:
            data = serialization.dumps_small(values[0])
            if data is not None:  # a small builtin value: no refs, no store, one frame
                self.cw.conns.send(owner, protocol.task_reply(h["tid"], [[INLINE, 1, False]]),
                                   [data])
                return
        self.ex.reply_values(h, owner, values)

    def method(self, meth: str) -> Any:
        if meth == "__ray_ready__":
            return lambda: True
        if meth == "__ray_call__":
            return lambda fn, *a, **k: fn(self.instance, *a, **k)
        # From the class, as Ray does: an instance attribute named like a method (say
        # `self.step = 0` next to `def step`) does not hide the method from callers.
        inst = self.instance
        raw = inspect.getattr_static(type(inst), meth, None)
        if raw is None or not hasattr(raw, "__get__"):
            return getattr(inst, meth)
        return raw.__get__(inst, type(inst))

    # ------------------------------------------------------ calls (async)
    def _start_async(self, h: dict, payload: list) -> None:
        task = self._aloop().create_task(self._arun(h, payload))
        with self.lock:
            self.atasks[h["tid"]] = task

    async def _arun(self, h: dict, payload: list) -> None:
        cw, ex = self.cw, self.ex
        tid = h["tid"]
        meth = h.get("meth", "")
        ex.show_title(h.get("name") or f"{self.cls_name}.{meth}")
        owner = cw.addr_of(h["own"])
        nret = h["nret"]
        partial: list = []
        try:
            sem = self.sem
            assert sem is not None  # set by run() before the loop starts
            async with sem:
                with self.lock:
                    if tid in self.cancelled:
                        self.cancelled.discard(tid)
                        raise asyncio.CancelledError
                if self.exiting:
                    self.reply_dead(h)
                    return
                cw.current_task_id = tid
                cw.driver_addr = h.get("drv") or cw.driver_addr
                if any(d[0] != INLINE for d in h["args"]):
                    args, kwargs = await self._aloop().run_in_executor(
                        None, self.decode_args, h, payload)
                else:
                    args, kwargs = self.decode_args(h, payload)
                fn = self.method(meth)
                if nret == -1:
                    await self._astream(h, owner, fn, args, kwargs)
                    return
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                ex.reply_values(h, owner, split_returns(result, nret, partial))
        except asyncio.CancelledError:
            self.reply_error(h, exc.TaskCancelledError(TaskID(tid)))
        except (ActorExit, SystemExit, exc.AsyncioActorExit):
            self.reply_dead(h, "The actor exited intentionally (exit_actor()) in this call.")
            self.exit_gracefully(EXIT_ACTOR_MSG)
        except Exception as e:
            self.reply_error(h, self.error(h.get("name", meth), e), partial)
        finally:
            with self.lock:
                self.atasks.pop(tid, None)
            cw.current_task_id = None

    async def _astream(self, h: dict, owner: str, fn, args, kwargs) -> None:
        ex = self.ex
        i = 0
        try:
            gen = fn(*args, **kwargs)
            if inspect.isasyncgen(gen):
                async for v in gen:
                    self._send_item(h, owner, i, v)
                    i += 1
            else:
                for v in gen:
                    self._send_item(h, owner, i, v)
                    i += 1
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            ex._stream_error(h, owner, i, exc.TaskCancelledError(TaskID(h["tid"])))
            i += 1
        except Exception as e:
            ex._stream_error(h, owner, i, self.error(h.get("name", ""), e))
            i += 1
        ex._send_reply(h, owner, protocol.task_reply(h["tid"], [], gen_n=i), [])

    def _send_item(self, h: dict, owner: str, i: int, v: Any) -> None:
        from zray.ids import object_id_for

        ex = self.ex
        contained: list = []
        d, frames = ex.encode_value(v, object_id_for(h["tid"], i + 1), False, contained)
        gh = protocol.generator_item(h["tid"], i, d)
        if contained:  # as worker_main.Executor.run_streaming does
            ex._lend_contained(contained, h["own"])
            gh["contained"] = [(0, oid, own) for oid, own in contained]
        self.cw.conns.send(owner, gh, frames)

    # ------------------------------------------------------------ helpers
    def decode_args(self, h: dict, payload: list) -> tuple[list, dict]:
        return task_codec.decode_args(self.cw, h, payload)

    def error(self, name: str, e: BaseException) -> exc.RayTaskError:
        if isinstance(e, exc.RayTaskError):
            return e  # a failed argument's error flows on unchanged
        try:
            rep = repr(self.instance) if self.instance is not None else f"<{self.cls_name}>"
        except Exception:  # noqa: BLE001
            rep = f"<{self.cls_name}>"
        return exc.RayTaskError(name, exc.format_remote_traceback(e), e, pid=self.pid,
                                ip=self.cw.node_ip, actor_repr=rep,
                                actor_id=ActorID(self.aid).hex())

    def reply_error(self, h: dict, err: BaseException, partial: list | None = None) -> None:
        ex = self.ex
        owner = self.cw.addr_of(h["own"])
        if h.get("nret") == -1:  # a stream: the error is its one item
            ex._stream_error(h, owner, 0, err)
            ex._send_reply(h, owner, protocol.task_reply(h["tid"], [], gen_n=1), [])
            return
        ex.reply_error(h, owner, err, partial)

    def reply_dead(self, h: dict, why: str = "") -> None:
        self.reply_error(h, exc.ActorDiedError(None, (
            "The actor died unexpectedly before finishing this task.\n"
            f"\tclass_name: {self.cls_name}\n\tactor_id: {self.aid.hex()}\n\tpid: {self.pid}\n"
            + (why or self.exit_why
               or "The actor exited intentionally before this call could run.")),
            self.aid.hex()))

    # --------------------------------------------------------------- exit
    def _terminate_concurrent(self, h: dict) -> None:
        """__ray_terminate__ on a threaded or async actor: after the calls before it."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        elif self.loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._drain_async(), self.loop)
            try:
                fut.result(timeout=None)
            except Exception:  # noqa: BLE001
                pass
        why = self.exit_why = terminate_msg(h)
        self.reply_dead(h, why)
        self.exit_gracefully(why)

    async def _drain_async(self) -> None:
        me = asyncio.current_task()
        tasks = [t for t in list(self.atasks.values()) if t is not me]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def run_shutdown_hooks(self) -> None:
        """A graceful end (exit_actor, __ray_terminate__, out of scope), as in Ray: the
        instance's ``__ray_shutdown__`` first, then the process's atexit handlers (the
        exit below is os._exit, which skips them). Never on zray.kill (SIGKILL)."""
        hook = getattr(type(self.instance), "__ray_shutdown__", None)
        if hook is not None:
            try:
                hook(self.instance)
            except BaseException:  # noqa: BLE001 - the actor ends anyway
                log.exception("__ray_shutdown__ of %s failed", self.cls_name)
        try:
            atexit._run_exitfuncs()  # errors are printed by atexit itself
        except BaseException:  # noqa: BLE001
            pass
        _flush_std()

    def exit_gracefully(self, why: str = "") -> None:
        """Tell the GCS the actor ends on purpose (``why``: the death message callers
        see), answer what is queued, and exit."""
        self.exit_why = why or self.exit_why
        with self.lock:
            self.exiting = True
        while True:
            try:
                h, _ = self.q.get_nowait()
            except queue.Empty:
                break
            self.reply_dead(h)
        self.run_shutdown_hooks()
        cw = self.cw
        try:
            msg = {"t": protocol.ACTOR_EXITING, "aid": self.aid, "wid": cw.worker_id}
            if why:
                msg["msg"] = why
            cw.request(self.gcs, msg, timeout=EXIT_ACK_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - exit anyway: the raylet reports the death
            pass
        _flush_and_exit(0, 0.02)


# Why an actor ended on purpose, as callers read it in ActorDiedError (Ray's wording).
EXIT_ACTOR_MSG = "The actor is dead because exit_actor() was called in it (an intended exit)."
OUT_OF_SCOPE = "__ray_terminate__ (out of scope)"  # the call name the owner sends then


def terminate_msg(h: dict) -> str:
    if h.get("name") == OUT_OF_SCOPE:
        return "The actor is dead because all references to the actor were removed."
    return "The actor is dead because __ray_terminate__ was called on it (an intended exit)."


def _flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        if getattr(s, "dirty", True):  # worker_main.LogStream: written since last flush
            try:
                s.flush()
            except Exception:  # noqa: BLE001
                pass


def _flush_and_exit(code: int, settle: float) -> None:
    _flush_std()
    time.sleep(settle)  # let the I/O thread of ZeroMQ hand the last messages to the kernel
    os._exit(code)


def become_actor(ex: Any, h: dict, payload: list) -> None:
    """Run the actor this worker was leased for; never returns."""
    rt = ActorRuntime(ex, h)
    try:
        rt.start(h, payload)
        rt.run()
    except BaseException:  # noqa: BLE001
        log.exception("the actor's main loop failed")
    _flush_and_exit(1, 0.02)


def on_create_actor(cw: CoreWorker, h: dict, payload: list) -> None:
    """CREATE_ACTOR (I/O thread): to the worker's main thread, which becomes the actor's
    (worker_main.Executor.run_forever calls become_actor)."""
    if cw.on_push_task is None:
        log.warning("CREATE_ACTOR to a process that runs no tasks: dropped")
        return
    cw.on_push_task(h, payload)


CoreWorker.register_handler(protocol.CREATE_ACTOR, on_create_actor)
