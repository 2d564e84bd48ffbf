"""The polling role: which thread receives a CoreWorker's inbound messages.

Exactly one thread at a time may use the inbound sockets: the "leader", named
by ``cw._leader`` (changed under ``cw.lock``, which also orders the sockets'
use between threads). A thread that blocks in get/wait/request takes the role
if it is free and handles every message that comes (its own reply included)
until it may return: no thread hand-off. Other waiting threads are followers:
the leader's handlers wake them. The I/O thread polls when no user thread does:
it takes the role once nobody has taken it for one to two LEAD_IDLE_S periods
(so a loop of short gets keeps it), at once after a non-sticky wait
(``Waiter.sticky``), and gives it up when a follower asks (a byte in the wake
pipe), at the next message boundary. The I/O thread also runs the timers
(``cw._tick``) every TICK_S.

On the main thread, runtime code run by a leading user thread is guarded from
SIGINT (Ctrl-C, or a task cancel): the signal is held back until the handler
is done, then raised.
"""

from __future__ import annotations

import _signal
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

# CoreWorker._leader when the I/O thread polls (otherwise a thread ident, or None).
IO = -1
# The polling role left free by a user thread goes back to the I/O thread once no
# thread has taken it for this long (messages wait at most about twice this then).
LEAD_IDLE_S = 0.002
# The I/O thread's period (timers, liveness, lease returns).
TICK_S = 0.05

_zmq_poll = zmq.zmq_poll
_PIPE = object()


def _release_all(lock: Any) -> int:
    """Release a re-entrant lock held (possibly several times) by this thread; the depth.

    Public API only: RLock.release() raises RuntimeError once this thread holds it no more.
    """
    depth = 0
    while True:
        try:
            lock.release()
        except RuntimeError:
            return depth
        depth += 1


class Waiter:
    """A thread blocked in ``CoreWorker._wait_until``, and how to wake it (lock held).

    A follower sleeps on its Condition. The leader sleeps in zmq poll: another
    thread wakes it through the wake pipe; its own handlers need no wake-up (it
    checks again after every batch of messages).
    """

    __slots__ = ("cw", "ident", "cond", "leading", "sticky")

    def __init__(self, cw: Any, sticky: bool | None = None):
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



class PollingRole:
    """The CoreWorker's polling machinery (a mixin: it shares the CoreWorker's lock)."""

    lock: Any
    inbound: Any
    _running: bool
    _decrefs: Any

    if TYPE_CHECKING:  # the CoreWorker's
        def _process_decrefs(self) -> None: ...
        def _handle(self, h: dict[str, Any], payload: list[Any]) -> None: ...
        def _tick(self, now: float) -> None: ...

    def _init_polling(self) -> None:
        """(from CoreWorker.__init__, once ``lock`` and ``inbound`` exist)"""
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
        self._sigint = False
        self.io_thread = threading.Thread(target=self._io_loop, name="zray-io", daemon=True)

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
                    depth = _release_all(self.lock)
                    try:
                        self._lead_poll(1000 if left is None else min(1000, int(left * 1000) + 1))
                    finally:
                        for _ in range(depth):
                            self.lock.acquire()
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

    def _stop_polling(self) -> None:
        """At shutdown: stop the I/O thread and any user thread still polling."""
        self._running = False
        with self.lock:
            self._io_cond.notify_all()
        self._poke()
        self.io_thread.join(timeout=2)
        deadline = time.monotonic() + 2
        while self._leader is not None and time.monotonic() < deadline:
            self._poke()  # a user thread still polls: it stops at its next wake-up
            time.sleep(0.005)

    def _close_wake_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
