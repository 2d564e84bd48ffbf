"""Waiting for objects: get, wait, generators (the CoreWorker's blocking side).

A mixin of CoreWorker (zray/core_worker.py): it runs on the user's threads under
the CoreWorker's lock, blocks through the polling role (zray/polling.py), and is
woken by the owner's ``ObjectsReady`` and ``GeneratorEnded`` instructions
(``_x_objects_ready``, ``_x_generator_ended``): an entry's ``callbacks`` are the
waiters of ``get``; a blocked ``wait`` registers one ``_AnyWaiter`` for its whole
list and learns which objects became ready from the log of readied objects.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any

from zray import exceptions as exc
from zray import ids, protocol
from zray.object_ref import ObjectRef
from zray.owner import events as ev
from zray.owner import instructions as ins
from zray.owner.state import FAILED, PENDING
from zray.polling import Waiter, _AnyWaiter


class Waiting:
    """get/wait/generators of a CoreWorker (a mixin: the attributes are the CoreWorker's)."""

    lock: Any
    objects: dict
    mode: str
    current_task_id: bytes | None
    raylet: Any
    on_blocked: Any
    cv: threading.Condition
    _cv_waiters: int
    _any_waiters: list
    _ready_log: Any
    _ready_seq: int
    worker_id: bytes
    address_packed: list[Any]
    tasks: dict[bytes, Any]
    owner: Any

    if TYPE_CHECKING:  # the CoreWorker's (and its PollingRole's)
        def _wait_until(self, w: Waiter, ready: Any, deadline: float | None) -> bool: ...
        def _ensure_poller(self) -> None: ...
        def _entry_for(self, ref: ObjectRef) -> Any: ...
        def _ensure_fetch(self, oid: bytes, e: Any) -> None: ...
        def _value_of(self, oid: bytes, e: Any) -> Any: ...
        def _do(self, event: Any) -> None: ...

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

        def all_done() -> bool:
            return bool(st[0] >= need or (stop_on_fail and st[1]))

        return self._await_blocked(w, all_done, deadline, mine)

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
        entries: list[Any] = []
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
                        if ids_ is not None and oid in ids_:
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
    def _add_hits(refs: list, ready: list, hit_ids: Any, need: int) -> list:
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

    # ------------------------------------------------------------ generators
    def next_generator_ref(self, tid: bytes, i: int, timeout: float | None) -> ObjectRef | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        oid = ids.object_id_for(tid, i + 1)
        with self.lock:
            while True:
                e = self.objects.get(oid)
                if e is not None and e.state != PENDING:
                    ref = ObjectRef(oid, self.address_packed)
                    self._do(ev.GeneratorTaken(oid))
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
            return self.owner.generator_finished(tid, i)

    def generator_completed_ref(self, tid: bytes) -> ObjectRef:
        raise NotImplementedError("ObjectRefGenerator.completed() is not supported yet")

    def release_generator(self, tid: bytes, consumed: int) -> None:
        with self.lock:
            self._do(ev.GeneratorReleased(tid, consumed))

    # ------------------------------------- instructions (CoreWorker._EXEC)
    def _x_objects_ready(self, i: ins.ObjectsReady) -> None:
        """Objects became ready or failed: wake getters, waiters and generator readers."""
        if self._cv_waiters:
            self.cv.notify_all()
        aws = self._any_waiters
        log_ = self._ready_log
        for oid, e in zip(i.oids, i.entries):
            if aws:
                for aw in aws:
                    if oid in aw.ids:
                        aw.hit_ids.append(oid)
                        if len(aw.hit_ids) == aw.need:
                            aw.waiter.notify()
            log_.append(oid)  # for wait(): what became ready since its last call
            if e.callbacks:
                cbs, e.callbacks = e.callbacks, None
                for cb in cbs:
                    cb()
        self._ready_seq += len(i.oids)

    def _x_generator_ended(self, i: ins.GeneratorEnded) -> None:
        self.cv.notify_all()

