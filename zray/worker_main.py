"""A worker process: started by its raylet, runs tasks pushed by their owners."""

from __future__ import annotations

import argparse
import ctypes
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from zray import actor_executor, config, protocol, serialization, task_codec, worker_state
from zray import exceptions as exc
from zray.core_worker import INLINE, STORED, CoreWorker, pack_contained
from zray.ids import TaskID, object_id_for
from zray.process import set_title
from zray.returns import split_returns
from zray.util.dedup import RecentIds, task_key
from zray.util.logs import RateLimited, rotate_if_large, setup_process_logging

log = logging.getLogger("zray.worker")
_refused = RateLimited(log, "refused duplicate tasks")


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel kills us if the raylet dies, however it dies.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)
    except OSError:
        pass


class LogStream:
    """sys.stdout/err of a worker: lines go to the job's driver, prefixed like Ray's."""

    def __init__(self, executor: Executor, err: bool, raw):
        self.ex = executor
        self.err = err
        self.raw = raw
        self.buf = ""
        self.lock = threading.Lock()
        self.dirty = False  # written to since the last flush
        self.unchecked = 0  # characters written since the log's size was checked

    def write(self, s: str) -> int:
        self.dirty = True
        with self.lock:
            self.buf += s
            if "\n" in self.buf:
                lines = self.buf.split("\n")
                self.buf = lines.pop()
                self.ex.send_log(lines, self.err)
        try:
            self.raw.write(s)
        except Exception:
            pass
        self.unchecked += len(s)
        if self.unchecked > 1 << 16:  # the log file behind it stays size-bounded
            self.unchecked = 0
            rotate_if_large()
        return len(s)

    def flush(self) -> None:
        self.dirty = False
        with self.lock:
            if self.buf:
                lines, self.buf = [self.buf], ""
                self.ex.send_log(lines, self.err)
        try:
            self.raw.flush()
        except Exception:
            pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.raw.fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


class Executor:
    """Runs pushed tasks one at a time on the main thread."""

    def __init__(self, cw: CoreWorker):
        self.cw = cw
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.functions: dict[bytes, Any] = {}
        self.jobs: set[bytes] = set()
        self.calls: dict[bytes, int] = {}
        self.cancelled: set[bytes] = set()
        self.running: bytes | None = None
        self.interrupting: bytes | None = None
        self.state_lock = threading.Lock()
        self.pid = os.getpid()
        self.log_prefix = ""
        self.title = ""
        # Tasks pushed but not started (owner address, key by task id), and those
        # handed back to their owners, which this worker must then skip.
        self.queued: dict[bytes, tuple] = {}  # tid -> (owner, task_key)
        self.returned: set[bytes] = set()
        # Task ids taken (a duplicate PUSH_TASK is refused, never run twice).
        self.taken = RecentIds()
        self.started = 0.0
        cw.on_push_task = self.on_push
        cw.on_cancel_task = self.on_cancel
        cw.on_blocked = self.return_queued
        cw.on_tick = self.on_tick
        cw.task_executor = self  # get_runtime_context().is_canceled() of a normal task

    # -- called on the I/O thread
    def on_push(self, h: dict, payload: list) -> None:
        if h["t"] == protocol.PUSH_TASK:
            with self.state_lock:
                key = task_key(h)
                if not self.taken.add(key):
                    _refused.warning("refused a duplicate PUSH_TASK %s", h["tid"].hex())
                    return
                self.queued[h["tid"]] = (h["own"], key)
        self.q.put((h, payload))

    def on_tick(self, now: float) -> None:
        if self.queued and self.running is not None and \
                now - self.started > config.RETURN_QUEUED_AFTER_S:
            self.return_queued()

    def return_queued(self) -> None:
        """Hand the tasks queued behind the running one back to their owners.

        Called when the running task turns out long or blocks in get/wait (the
        tasks behind it could be what it waits for). Any thread may call it.
        """
        with self.state_lock:
            if not self.queued:
                return
            by_owner: dict[str, list] = {}
            for tid, (own, key) in self.queued.items():
                by_owner.setdefault(self.cw.addr_of(own), []).append(tid)
                self.returned.add(tid)
                self.taken.discard(key)  # its owner may push it here again
                self.cancelled.discard(tid)
            self.queued.clear()
        for addr, tids in by_owner.items():
            self.cw.conns.send(addr, {"t": protocol.TASKS_RETURNED, "tids": tids})

    def is_canceled(self, tid: bytes | None) -> bool:
        """Whether zray.cancel() interrupted the running task ``tid`` (Ray: True in its
        KeyboardInterrupt handler)."""
        return tid is not None and self.interrupting == tid

    def on_cancel(self, h: dict) -> None:
        tid = h["tid"]
        if h.get("rec", True):
            self.cw.cancel_children(tid, h.get("force", False))
        with self.state_lock:
            if self.running == tid:
                if h.get("force"):
                    os._exit(1)  # the raylet reports the death; the owner knows it cancelled
                self.interrupting = tid
                os.kill(self.pid, signal.SIGINT)
            else:
                self.cancelled.add(tid)

    def send_log(self, lines: list[str], err: bool) -> None:
        drv = self.cw.driver_addr
        if not drv or drv == self.cw.address_packed:
            return
        try:
            self.cw.conns.send(self.cw.addr_of(drv), {
                "t": protocol.LOG_LINES, "pfx": self.log_prefix, "err": err, "lines": lines})
        except Exception:
            pass

    # -- main thread
    def run_forever(self) -> None:
        while True:
            try:
                if self.title != "IDLE" and self.q.empty():
                    self.show_title("IDLE")  # ray::IDLE between tasks, as Ray
                h, payload = self.q.get()
                if h["t"] == protocol.CREATE_ACTOR:
                    # This worker becomes the actor's, until the actor dies (never returns).
                    actor_executor.become_actor(self, h, payload)
                self.execute(h, payload)
            except KeyboardInterrupt:
                continue  # a cancel that arrived just after its task finished

    def show_title(self, name: str) -> None:
        """``ps`` shows ``ray::<task>`` while a task runs, as Ray's workers do (tools and
        tests look for these titles); only a change costs a setproctitle call (~1 us)."""
        if name != self.title:
            self.title = name
            set_title(f"ray::{name}")

    def load_function(self, fn_id: bytes) -> Any:
        fn = self.functions.get(fn_id)
        if fn is None:
            h, payload = self.cw.request(self.cw.gcs, {"t": protocol.KV_GET, "ns": "fn", "k": fn_id})
            if not payload:
                raise exc.RaySystemError(f"function {fn_id.hex()} was never exported")
            fn = serialization.loads_plain(payload[0])
            self.functions[fn_id] = fn
        return fn

    def load_job(self, job: bytes) -> None:
        if job in self.jobs:
            return
        self.jobs.add(job)
        h, payload = self.cw.request(self.cw.gcs, {"t": protocol.KV_GET, "ns": "job", "k": job})
        if payload:
            info = serialization.loads_plain(payload[0])
            for p in reversed(info.get("path", [])):
                if p and p not in sys.path:
                    sys.path.insert(0, p)

    def decode_args(self, h: dict, payload: list) -> tuple[list, dict]:
        return task_codec.decode_args(self.cw, h, payload)

    def execute(self, h: dict, payload: list) -> None:
        cw = self.cw
        tid = h["tid"]
        owner = cw.addr_of(h["own"])
        name = h.get("name", "")
        with self.state_lock:
            if tid in self.returned:
                self.returned.discard(tid)  # its owner runs it elsewhere
                return
            self.queued.pop(tid, None)
            if tid in self.cancelled:
                self.cancelled.discard(tid)
                self.reply_error(h, owner, exc.TaskCancelledError(TaskID(tid)))
                return
            self.running = tid
            self.started = h["_t0"] = time.monotonic()
        cw.current_task_id = tid
        cw.current_task_name = name
        cw.assigned_resources = h.get("res") or {}
        cw.driver_addr = h.get("drv") or cw.driver_addr
        cw.job_id = h.get("job", cw.job_id)
        if name != self.title:
            self.show_title(name)
            self.log_prefix = f"({name} pid={self.pid})"
        gpus = cw.assigned_resources.get("GPU_ids")
        if gpus is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
        nret = h["nret"]
        saved_env = self.apply_env(h.get("env"))
        partial: list = []  # what a static-num_returns generator yielded before it raised
        try:
            try:
                self.load_job(h["job"])
                fn = self.load_function(h["fn"])
                args, kwargs = self.decode_args(h, payload)
                if nret == -1:
                    self.run_streaming(h, owner, fn, args, kwargs)
                    return
                result = fn(*args, **kwargs)
                values = split_returns(result, nret, partial)
            except KeyboardInterrupt:
                if self.interrupting == tid:
                    self.reply_error(h, owner, exc.TaskCancelledError(TaskID(tid)))
                    return
                raise
            except Exception as e:
                self.reply_error(h, owner, self.task_error(name, e), partial)
                return
            self.reply_values(h, owner, values)
        finally:
            with self.state_lock:
                self.running = None
                self.interrupting = None
            cw.current_task_id = None
            if saved_env is not None:
                self.restore_env(saved_env)
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except Exception:
                    pass
            self.after_task(h)

    @staticmethod
    def apply_env(env: dict | None) -> dict | None:
        """runtime_env={"env_vars": ...}: set for the task, restored after it."""
        if not env:
            return None
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update({str(k): str(v) for k, v in env.items()})
        return saved

    @staticmethod
    def restore_env(saved: dict) -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def after_task(self, h: dict) -> None:
        mc = h.get("mc")
        if mc:
            n = self.calls.get(h["fn"], 0) + 1
            self.calls[h["fn"]] = n

    def exiting_after(self, h: dict) -> bool:
        mc: int = h.get("mc") or 0
        return mc > 0 and self.calls.get(h["fn"], 0) + 1 >= mc

    def task_error(self, name: str, e: BaseException) -> exc.RayTaskError:
        if isinstance(e, exc.RayTaskError):
            return e  # an error flowing through: keep its origin
        return exc.RayTaskError(name, exc.format_remote_traceback(e), e, pid=self.pid,
                                ip=self.cw.node_ip)

    def encode_value(self, value: Any, oid: bytes, err: bool, contained: list) -> tuple[list, list]:
        try:
            frames, refs = serialization.serialize(value, "return value")
        except exc.RaySerializationError as se:
            # A fresh error without the unpicklable value in its __cause__ chain.
            cause = exc.RaySerializationError(str(se))
            frames, refs = serialization.serialize(
                exc.RayTaskError(self.cw.current_task_name, str(se), cause, pid=self.pid))
            err = True
        for r in refs:
            contained.append((r._id, r._owner))
        size = serialization.frames_size(frames)
        if size > config.INLINE_MAX and not err:
            try:
                total = self.cw._store(oid, frames, size)
            except exc.ObjectStoreFullError as e:  # no room for it: the task fails with that
                frames, _ = serialization.serialize(self.task_error(self.cw.current_task_name, e))
                return [INLINE, len(frames), True], frames
            return [STORED, self.cw.node_id, total], []
        return [INLINE, len(frames), err], frames

    def _lend_contained(self, contained: list, caller: list) -> None:
        # Refs inside a return value: the caller borrows them from now on.
        self.cw.lend(contained, caller)

    def reply_values(self, h: dict, owner: str, values: list) -> None:
        rets: list[Any] = []
        payload: list[Any] = []
        contained: list[Any] = []
        for i, v in enumerate(values):
            mine: list = []
            d, frames = self.encode_value(v, object_id_for(h["tid"], i + 1), False, mine)
            contained.extend((i, oid, owner) for oid, owner in mine)
            if d[0] == INLINE and d[2]:
                self.reply_error_frames(h, owner, frames)
                return
            rets.append(d)
            payload.extend(frames)
        rh = protocol.task_reply(h["tid"], rets)
        if contained:
            self._lend_contained([(oid, owner) for _, oid, owner in contained], h["own"])
            rh["contained"] = pack_contained(contained)
        self._send_reply(h, owner, rh, payload)

    def _send_reply(self, h: dict, owner: str, rh: dict, payload: list) -> None:
        exiting = self.exiting_after(h)
        if exiting:
            rh["exiting"] = True
        t0 = h.get("_t0")
        if t0 is not None:  # the owner pipelines a key's tasks only if they are short
            rh["dt"] = round(time.monotonic() - t0, 6)
        self.cw.conns.send(owner, rh, payload)
        if exiting:
            # The owner returns the lease with exit=True and the raylet then ends
            # this process: exiting here could lose the reply still queued in ZeroMQ.
            self.cw.raylet.send({"t": protocol.WORKER_EXITING, "wid": self.cw.worker_id})

    def reply_error(self, h: dict, owner: str, err: BaseException,
                    partial: list | None = None) -> None:
        try:
            frames, _ = serialization.serialize(err)
        except exc.RaySerializationError as why:
            if isinstance(err, exc.RayTaskError):
                err = err.with_unserializable_cause(why)
            else:
                err = exc.RayTaskError(h.get("name", ""), str(err), exc.RayError(str(why)),
                                       pid=self.pid)
            frames, _ = serialization.serialize(err)
        if partial and len(partial) < h["nret"]:
            self.reply_partial(h, owner, partial, frames)
            return
        self.reply_error_frames(h, owner, frames)

    def reply_partial(self, h: dict, owner: str, values: list, err_frames: list) -> None:
        """A generator with a static num_returns raised after yielding ``values``: Ray keeps
        what it yielded; the returns it never reached hold the error."""
        rets: list[Any] = []
        payload: list[Any] = []
        contained: list[Any] = []
        for i, v in enumerate(values):
            mine: list = []
            d, frames = self.encode_value(v, object_id_for(h["tid"], i + 1), False, mine)
            if d[0] == INLINE and d[2]:
                self.reply_error_frames(h, owner, frames)
                return
            contained.extend((i, oid, o) for oid, o in mine)
            rets.append(d)
            payload.extend(frames)
        for _ in range(h["nret"] - len(values)):
            rets.append([INLINE, len(err_frames), True])
            payload.extend(err_frames)
        rh = protocol.task_reply(h["tid"], rets, err=True)
        if contained:
            self._lend_contained([(oid, o) for _, oid, o in contained], h["own"])
            rh["contained"] = pack_contained(contained)
        self._send_reply(h, owner, rh, payload)

    def reply_error_frames(self, h: dict, owner: str, frames: list) -> None:
        n = max(h["nret"], 1)
        rets = [[INLINE, len(frames), True]] * n
        self._send_reply(h, owner, protocol.task_reply(h["tid"], rets, err=True),
                         list(frames) * n)

    def run_streaming(self, h: dict, owner: str, fn, args, kwargs) -> None:
        i = 0
        name = h.get("name", "")
        try:
            gen = fn(*args, **kwargs)
            if not inspect.isgenerator(gen):
                raise TypeError(f"{name} returned {type(gen).__name__}, not a generator, "
                                "but its num_returns is 'streaming'")
            for v in gen:
                contained: list = []
                d, frames = self.encode_value(v, object_id_for(h["tid"], i + 1), False, contained)
                gh = protocol.generator_item(h["tid"], i, d)
                if contained:
                    self._lend_contained(contained, h["own"])
                    gh["contained"] = pack_contained([(0, oid, owner) for oid, owner in contained])
                self.cw.conns.send(owner, gh, frames)
                i += 1
        except KeyboardInterrupt:
            if self.interrupting != h["tid"]:
                raise
            err: BaseException = exc.TaskCancelledError(TaskID(h["tid"]))
            self._stream_error(h, owner, i, err)
            i += 1
        except Exception as e:
            self._stream_error(h, owner, i, self.task_error(name, e))
            i += 1
        self._send_reply(h, owner, protocol.task_reply(h["tid"], [], gen_n=i), [])

    def _stream_error(self, h: dict, owner: str, i: int, err: BaseException) -> None:
        frames, _ = serialization.serialize(err)
        self.cw.conns.send(owner, protocol.generator_item(h["tid"], i, [INLINE, len(frames), True]),
                           frames)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="zray-worker")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--raylet", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--shm-prefix", required=True)
    p.add_argument("--node-ip", default="127.0.0.1")
    a = p.parse_args(argv)
    _die_with_parent()
    with open(os.path.join(a.session_dir, "secret"), "rb") as f:
        secret = f.read()
    cw = CoreWorker(mode="worker", session_dir=a.session_dir, node_id=bytes.fromhex(a.node_id),
                    raylet_ipc=a.raylet, secret=secret, job_id=b"\0\0\0\0", node_ip=a.node_ip,
                    worker_id=bytes.fromhex(a.worker_id), shm_prefix=a.shm_prefix)
    worker_state.set_current(cw)
    ex = Executor(cw)
    h, _ = cw.request(a.raylet, {"t": protocol.REGISTER_CLIENT, "kind": "worker",
                                 "wid": cw.worker_id, "addr": cw.address_packed, "pid": os.getpid()})
    cw.gcs = h["gcs"]
    cw.registered_gcs_status(h.get("gcs_down", ""))
    cw.gcs_address = h.get("gcs_address", "")
    sys.stdout = LogStream(ex, False, sys.stdout)
    sys.stderr = LogStream(ex, True, sys.stderr)
    # After the swap, so that log records of tasks reach the driver too.
    # force: the zygote inherited the raylet's handlers.
    setup_process_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    # Only our SIGINT (from a cancel) should interrupt a task.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ex.run_forever()


if __name__ == "__main__":
    main()
