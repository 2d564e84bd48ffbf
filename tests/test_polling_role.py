"""The polling role (CoreWorker._wait_until): a thread blocked in get/wait/request polls
the inbound sockets itself; other waiting threads follow; the I/O thread polls when no
user thread does. These tests drive its hand-overs for real (zray internals)."""

import os
import signal
import sys
import threading
import time

import pytest
from backend import IS_RAY, run_driver, touch, wait_for_file, wait_until

import zray

pytestmark = pytest.mark.skipif(IS_RAY, reason="zray's polling role")

if not IS_RAY:
    from zray import protocol, worker_state
    from zray.core_worker import IO, PENDING


@pytest.fixture(scope="module")
def cluster():
    if zray.is_initialized():
        zray.shutdown()
    zray.init(num_cpus=4)
    yield worker_state.current()
    zray.shutdown()


@zray.remote
def sleepy(s, v=None):
    time.sleep(s)
    return v


@zray.remote
def gated(gate, v=None):
    """Runs until the test opens ``gate``: a get of it waits exactly as long as the test says."""
    wait_for_file(gate, 120)
    return v


@pytest.fixture
def gate(tmp_path):
    """A closed gate; opened at the end of the test so that no task outlives it."""
    path = tmp_path / "gate"
    yield str(path)
    touch(path)


@zray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n


class Waiting(threading.Thread):
    """A thread in zray.get(ref, timeout); its result or exception ends up in .out."""

    def __init__(self, ref, timeout=None):
        super().__init__(daemon=True)
        self.ref, self.timeout, self.out = ref, timeout, None

    def run(self):
        try:
            self.out = zray.get(self.ref, timeout=self.timeout)
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            self.out = e


def _leading(cw, thread) -> bool:
    return cw._leader == thread.ident


def test_replies_for_other_threads_arrive_while_one_thread_polls(cluster, gate):
    cw = cluster
    slow = Waiting(gated.remote(gate, "slow"))
    slow.start()
    assert wait_until(lambda: _leading(cw, slow), 10), "the waiting thread never polled"
    a = Counter.remote()
    # Each reply is received by the polling thread and hands its value to us (a follower);
    # the polling thread's own get cannot end before the gate opens.
    assert [zray.get(a.inc.remote()) for _ in range(30)] == list(range(1, 31))
    assert zray.get([sleepy.remote(0, i) for i in range(20)]) == list(range(20))
    assert _leading(cw, slow), "the role moved while its holder still waited"
    touch(gate)
    slow.join(30)
    assert slow.out == "slow"


def test_get_with_timeout_while_another_thread_polls(cluster, gate, tmp_path):
    cw = cluster
    slow = Waiting(gated.remote(gate, "slow"))
    slow.start()
    assert wait_until(lambda: _leading(cw, slow), 10)
    t0 = time.monotonic()
    with pytest.raises(zray.exceptions.GetTimeoutError):  # a follower's own timeout...
        zray.get(gated.remote(str(tmp_path / "never")), timeout=0.3)
    assert time.monotonic() - t0 >= 0.29  # ...not early
    assert slow.is_alive() and _leading(cw, slow)  # ...nor waiting for the leader's get
    touch(gate)
    touch(tmp_path / "never")
    slow.join(30)
    assert slow.out == "slow"


def test_leader_timing_out_hands_the_role_to_a_follower(cluster, gate, tmp_path):
    cw = cluster
    first = Waiting(gated.remote(str(tmp_path / "first")), timeout=0.5)
    first.start()
    assert wait_until(lambda: _leading(cw, first), 10)
    second = Waiting(gated.remote(gate, "second"))  # no timeout: follows, then leads
    second.start()
    first.join(30)
    assert isinstance(first.out, zray.exceptions.GetTimeoutError)
    touch(tmp_path / "first")
    assert wait_until(lambda: _leading(cw, second), 10), "the role was not handed over"
    touch(gate)
    second.join(30)
    assert second.out == "second"


def test_pings_answered_while_a_user_thread_polls(cluster, gate):
    cw = cluster
    slow = Waiting(gated.remote(gate, "slow"))
    slow.start()
    assert wait_until(lambda: _leading(cw, slow), 10)
    # A request to ourselves: the PING, then the PONG, are both handled by that thread
    # (whose own get cannot end before the gate opens).
    for _ in range(20):
        cw.request(cw.address.ipc, {"t": protocol.PING}, timeout=30)
    assert _leading(cw, slow)
    touch(gate)
    slow.join(30)


def test_idle_sync_actor_answers_pings_from_its_polling_main_thread(cluster):
    cw = cluster
    a = Counter.remote()
    assert zray.get(a.inc.remote()) == 1
    addr = cw.actor_submitter.actors[a._zray_aid].addr
    time.sleep(0.1)
    for _ in range(20):  # the actor idles: its main thread waits for a call, polling
        cw.request(addr, {"t": protocol.PING}, timeout=5)
    assert zray.get(a.inc.remote()) == 2


def test_role_returns_to_the_io_thread_after_gets_stop(cluster):
    cw = cluster
    a = Counter.remote()
    for _ in range(50):
        zray.get(a.inc.remote())
    assert wait_until(lambda: cw._leader == IO, 2), "the I/O thread never polled again"
    ref = sleepy.remote(0.05, "later")  # its reply comes while no user thread waits
    e = cw.objects[ref._id]
    assert wait_until(lambda: e.state != PENDING, 5), "a reply nobody waited for was not received"
    assert zray.get(ref, timeout=0) == "later"


def _io_thread_cpu(cw) -> float:
    import psutil

    for t in psutil.Process().threads():
        if t.id == cw.io_thread.native_id:
            return t.user_time + t.system_time
    raise AssertionError("no I/O thread")


def test_io_thread_sleeps_while_a_user_thread_polls(cluster):
    cw = cluster
    slow = Waiting(sleepy.remote(2, "slow"))
    slow.start()
    assert wait_until(lambda: _leading(cw, slow), 10)
    c0 = _io_thread_cpu(cw)
    for _ in range(50):
        with cw.lock:  # as a worker's non-sticky get leaves it, just before another takes it
            cw._io_take = True
            cw._io_cond.notify()
        time.sleep(0.02)
    assert _io_thread_cpu(cw) - c0 < 0.3, "the I/O thread spins while another thread polls"
    slow.join(10)
    assert slow.out == "slow"


def test_many_threads_waiting_at_once(cluster):
    a = Counter.remote()
    errors = []

    def loop(i):
        try:
            for j in range(100):
                if j % 3 == 0:
                    assert zray.get(sleepy.remote(0, (i, j)), timeout=30) == (i, j)
                elif j % 3 == 1:
                    zray.get(a.inc.remote(), timeout=30)
                else:
                    ready, _ = zray.wait([sleepy.remote(0.001)], timeout=30)
                    assert len(ready) == 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    assert zray.get(a.inc.remote()) == 1 + 6 * 33


_CTRL_C = """
import os, signal, threading, time
import zray
zray.init(num_cpus=2)

@zray.remote
def f(s, v):
    time.sleep(s)
    return v

zray.get(f.remote(0, 0))
for i in range(3):
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        zray.get(f.remote(5, 1))
        print("NOT INTERRUPTED", flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [zray.get(f.remote(0, j)) for j in range(20)] == list(range(20))
print("OK", flush=True)
zray.shutdown()
"""


def test_ctrl_c_in_get_leaves_the_runtime_usable(tmp_path):
    r = run_driver(_CTRL_C, tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("INTERRUPTED") == 3 and "NOT INTERRUPTED" not in r.stdout
    assert r.stdout.rstrip().endswith("OK")


_SHUTDOWN = """
import threading, time
import zray
from zray import worker_state
zray.init(num_cpus=2)

@zray.remote
def f():
    time.sleep(3600)  # never ends by itself

ref = f.remote()
t = threading.Thread(target=lambda: zray.get(ref), daemon=True)
t.start()
cw = worker_state.current()
deadline = time.monotonic() + 60
while cw._leader != t.ident:  # that thread polls now
    assert time.monotonic() < deadline, "the get never took the polling role"
    time.sleep(0.01)
zray.shutdown()
print("SHUTDOWN", flush=True)
"""


def test_shutdown_while_another_thread_polls(tmp_path):
    # Shutdown must not wait for the polling thread's get (of a task that never ends).
    r = run_driver(_SHUTDOWN, tmp_path, timeout=120)
    assert r.returncode == 0 and "SHUTDOWN" in r.stdout, r.stdout + r.stderr


def test_ctrl_c_during_a_handler_is_held_until_it_is_done(cluster, monkeypatch):
    """SIGINT while the main thread runs a message handler: the handler completes, then
    KeyboardInterrupt is raised (a reply cut in half would leave its ref pending)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    cw = cluster
    from zray.core_worker import CoreWorker

    real = CoreWorker._handlers[protocol.TASK_REPLY]
    hit = []
    target = []

    def reply_with_ctrl_c(self, h, payload):
        if h["tid"] in target and threading.current_thread() is threading.main_thread():
            hit.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the signal is pending: Python code runs on
        real(self, h, payload)

    monkeypatch.setitem(CoreWorker._handlers, protocol.TASK_REPLY, reply_with_ctrl_c)
    for _ in range(20):  # until the reply is handled by this thread, polling in get
        zray.get(sleepy.remote(0))
        ref = sleepy.remote(0.05, "v")
        target[:] = [ref._id[:16]]
        try:
            zray.get(ref)
        except KeyboardInterrupt:
            pass
        if hit:
            break
    monkeypatch.setitem(CoreWorker._handlers, protocol.TASK_REPLY, real)
    assert hit, "the reply was never handled by the main thread"
    assert cw.objects[ref._id].state != PENDING, "the handler was cut short"
    assert zray.get(ref) == "v"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigint_handler_is_left_alone_when_not_the_default(cluster):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("needs the main thread")
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGINT, mine)
    try:
        assert zray.get(sleepy.remote(0.2, "x")) == "x"
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, old)


if __name__ == "__main__":
    sys.exit(pytest.main([os.path.abspath(__file__), "-q"]))
