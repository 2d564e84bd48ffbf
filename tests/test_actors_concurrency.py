"""Async actors (an event loop, calls interleave) and threaded actors (max_concurrency).

Runs against zray by default, against Ray with ZRAY_TEST_BACKEND=ray (backend.py).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from backend import IS_RAY, exceptions, ray, wait_until

pytestmark = pytest.mark.timeout(120)


@ray.remote
class AsyncWaiter:
    def __init__(self):
        self.event = asyncio.Event()
        self.active = 0
        self.peak = 0

    async def wait(self):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await self.event.wait()
        self.active -= 1
        return "done"

    async def release(self):
        self.event.set()
        return True

    async def peak_(self):
        return self.peak

    async def sleep(self, t):
        await asyncio.sleep(t)
        return t

    async def hold(self, t):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(t)
        self.active -= 1
        return t

    def sync_method(self):
        return "sync ok"

    async def fail(self):
        raise ValueError("async failure")

    async def agen(self, n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i


def test_async_calls_interleave(ray_start):
    a = AsyncWaiter.remote()
    waits = [a.wait.remote() for _ in range(50)]
    ready, _ = ray.wait(waits, timeout=0.5)
    assert ready == []  # all blocked on the event, none finished
    assert ray.get(a.release.remote()) is True  # ran although 50 calls are waiting
    assert ray.get(waits) == ["done"] * 50
    assert ray.get(a.peak_.remote()) == 50


def test_async_concurrency_and_sync_method(ray_start):
    a = AsyncWaiter.remote()
    waits = [a.wait.remote() for _ in range(20)]
    assert wait_until(lambda: ray.get(a.peak_.remote()) == 20, 30)  # all 20 at once
    assert ray.get(a.release.remote()) is True
    assert ray.get(waits) == ["done"] * 20
    assert ray.get(a.sync_method.remote()) == "sync ok"


def test_async_max_concurrency(ray_start):
    a = AsyncWaiter.options(max_concurrency=2).remote()
    assert ray.get([a.hold.remote(0.5) for _ in range(4)]) == [0.5] * 4
    assert ray.get(a.peak_.remote()) == 2  # two at a time: never more, and they did overlap


def test_async_errors_and_generators(ray_start):
    a = AsyncWaiter.remote()
    with pytest.raises(ValueError, match="async failure"):
        ray.get(a.fail.remote())
    assert [ray.get(r) for r in a.agen.remote(4)] == [0, 1, 2, 3]
    assert ray.get(a.sleep.remote(0)) == 0  # still alive


def test_await_refs_inside_async_actor(ray_start):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Gatherer:
        async def total(self, n):
            vals = await asyncio.gather(*[square.remote(i) for i in range(n)])
            return sum(vals)

    g = Gatherer.remote()
    assert ray.get(g.total.remote(10)) == sum(i * i for i in range(10))


def test_cancel_async_call(ray_start):
    a = AsyncWaiter.remote()
    ref = a.wait.remote()
    assert wait_until(lambda: ray.get(a.peak_.remote()) >= 1, 30)  # it is awaiting
    ray.cancel(ref)
    with pytest.raises((exceptions.TaskCancelledError, asyncio.CancelledError)):
        ray.get(ref, timeout=10)
    assert ray.get(a.sleep.remote(0)) == 0


@ray.remote
class Threaded:
    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.barrier_hits = 0

    def work(self, t):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(t)
        with self.lock:
            self.active -= 1
        return threading.get_ident()

    def peak_(self):
        return self.peak


def test_threaded_actor(ray_start):
    a = Threaded.options(max_concurrency=4).remote()
    idents = ray.get([a.work.remote(0.5) for _ in range(8)])
    assert len(set(idents)) > 1
    assert ray.get(a.peak_.remote()) == 4


def test_sync_actor_runs_one_call_at_a_time(ray_start):
    a = Threaded.remote()
    ray.get([a.work.remote(0.05) for _ in range(6)])
    assert ray.get(a.peak_.remote()) == 1


def test_cancel_queued_and_running_sync_calls(ray_start, tmp_path):
    # Ray: a queued actor call never runs; a running one of a sync actor is not
    # interrupted (actors have state) but sees is_canceled(), and get raises.
    @ray.remote
    class Slow:
        def __init__(self):
            self.saw_cancel = False
            self.runs = 0

        def spin(self, t, started=None):
            if started:
                open(started, "w").close()
            self.runs += 1
            end = time.monotonic() + t
            while time.monotonic() < end:
                if ray.get_runtime_context().is_canceled():
                    self.saw_cancel = True
                    return "stopped early"
                time.sleep(0.01)
            return "finished"

        def state(self):
            return self.saw_cancel, self.runs

    s = Slow.remote()
    ray.get(s.state.remote())
    started = tmp_path / "started"
    running = s.spin.remote(10, str(started))
    queued = s.spin.remote(10)
    assert wait_until(started.exists, 30)
    ray.cancel(queued)
    ray.cancel(running)
    for r in (running, queued):
        with pytest.raises(exceptions.TaskCancelledError):
            ray.get(r, timeout=15)
    saw_cancel, runs = ray.get(s.state.remote(), timeout=15)
    assert saw_cancel
    assert runs in (1, 2)  # Ray may start the queued one, which then sees is_canceled()


def test_terminate_async_actor_after_pending(ray_start):
    if IS_RAY:
        pytest.skip("Ray may end an async actor before its pending calls finish; zray "
                    "runs the calls submitted before __ray_terminate__ first")
    a = AsyncWaiter.remote()
    sleeps = [a.sleep.remote(0.3) for _ in range(3)]
    term = a.__ray_terminate__.remote()
    assert ray.get(sleeps) == [0.3] * 3
    with pytest.raises(exceptions.RayActorError):
        ray.get(term)
    with pytest.raises(exceptions.RayActorError):
        ray.get(a.sleep.remote(0))


def test_refs_returned_and_streamed_by_actors(ray_start):
    @ray.remote
    class Maker:
        def make(self):
            return [ray.put(i) for i in range(3)]

        async def astream(self):
            for i in range(2):
                yield [ray.put(i * 10)]

    m = Maker.remote()
    refs = ray.get(m.make.remote())
    assert ray.get(refs) == [0, 1, 2]
    got = [ray.get(ray.get(r)[0]) for r in m.astream.remote()]
    assert got == [0, 10]


@pytest.mark.slow
def test_microbenchmark_actor_cases_run(ray_fresh):
    if IS_RAY:
        pytest.skip("runs zray's microbenchmark module")
    from zray import microbenchmark

    results = microbenchmark.main(ray, filter="actor", duration=0.2, warmup=0.05, settle=0.0,
                                  raise_errors=True, init_kwargs={"num_cpus": 2})
    names = {name for name, _, _ in results}
    for case in ("1:1 actor calls sync", "1:1 actor calls async", "1:1 actor calls concurrent",
                 "1:n actor calls async", "n:n actor calls async",
                 "n:n actor calls with arg async", "1:1 async-actor calls sync",
                 "1:1 async-actor calls async", "1:1 async-actor calls with args async",
                 "1:n async-actor calls async", "n:n async-actor calls async"):
        assert case in names
    assert all(rate > 0 for _, rate, _ in results)
