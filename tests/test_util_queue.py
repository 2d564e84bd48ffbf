"""zray.util.queue.Queue (Ray's ``ray.util.queue``), on a real cluster."""

from __future__ import annotations

import asyncio
import queue as stdlib_queue
import time

import pytest
from backend import IS_RAY, exceptions, ray

if IS_RAY:
    from ray.util.queue import Empty, Full, Queue
else:
    from zray.util.queue import Empty, Full, Queue


def test_fifo_sizes_and_nowait(ray_start):
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.size() == 0 and len(q) == 0
    for i in range(3):
        q.put(i)
    assert q.full() and q.qsize() == 3
    with pytest.raises(Full):
        q.put_nowait(9)
    with pytest.raises(Full):
        q.put(9, block=False)
    assert [q.get(), q.get_nowait(), q.get(block=False)] == [0, 1, 2]
    with pytest.raises(Empty):
        q.get_nowait()
    # Ray's Empty/Full are the standard library's, so `except queue.Empty` works.
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)
    q.shutdown()


def test_blocking_timeouts(ray_start):
    q = Queue(maxsize=1)
    t0 = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.3)
    assert time.monotonic() - t0 >= 0.25
    q.put("x")
    with pytest.raises(Full):
        q.put("y", timeout=0.3)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(1, timeout=-1)
    assert q.get(timeout=5) == "x"
    q.shutdown()


@ray.remote
def producer(q, items):
    for item in items:
        q.put(item)


@ray.remote
def consumer(q, n):
    return [q.get(timeout=60) for _ in range(n)]


def test_passed_to_tasks_and_blocking_get_wakes(ray_start):
    q = Queue()
    out = consumer.remote(q, 5)  # blocks in get until the producer's items arrive
    time.sleep(0.3)
    ray.get(producer.remote(q, list(range(5))))
    assert ray.get(out, timeout=60) == [0, 1, 2, 3, 4]
    assert q.empty()
    q.shutdown()


def test_blocked_put_resumes_when_a_slot_frees(ray_start):
    q = Queue(maxsize=1)
    q.put(0)
    done = producer.remote(q, [1])  # blocks: the queue is full
    ready, _ = ray.wait([done], timeout=0.5)
    assert not ready
    assert q.get() == 0
    ray.get(done, timeout=60)
    assert q.get(timeout=5) == 1
    q.shutdown()


def test_batches_are_all_or_nothing(ray_start):
    q = Queue(maxsize=4)
    q.put_nowait_batch([1, 2, 3])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([4, 5])
    assert q.qsize() == 3
    with pytest.raises(Empty, match="Cannot get 4 items"):
        q.get_nowait_batch(4)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(7)
    with pytest.raises(TypeError):
        q.get_nowait_batch("1")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    assert q.get() == 3
    q.shutdown()


def test_async_api(ray_start):
    q = Queue(maxsize=1)

    async def main():
        await q.put_async(1)
        with pytest.raises(Full):
            await q.put_async(2, block=False)
        with pytest.raises(Full):
            await q.put_async(2, timeout=0.2)
        assert await q.get_async() == 1
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(Empty):
            await q.get_async(timeout=0.2)
        getter = asyncio.ensure_future(q.get_async(timeout=30))
        await asyncio.sleep(0.2)
        await q.put_async("late")
        return await getter

    assert asyncio.run(main()) == "late"
    q.shutdown()


@ray.remote(num_cpus=0)
class AsyncConsumer:
    async def take(self, q, n):
        return [await q.get_async(timeout=60) for _ in range(n)]


def test_async_from_an_actor(ray_start):
    q = Queue()
    c = AsyncConsumer.remote()
    out = c.take.remote(q, 3)
    q.put_nowait_batch(["a", "b", "c"])
    assert ray.get(out, timeout=60) == ["a", "b", "c"]
    q.shutdown()


def test_actor_options_and_shutdown(ray_start):
    q = Queue(actor_options={"name": "util-queue-test", "num_cpus": 0})
    q.put(1)
    same = ray.get_actor("util-queue-test")
    assert ray.get(same.qsize.remote()) == 1
    q.shutdown()
    assert q.actor is None
    with pytest.raises(exceptions.RayActorError):
        ray.get(same.qsize.remote(), timeout=60)
    q2 = Queue()
    handle = q2.actor
    q2.shutdown(force=True)
    with pytest.raises(exceptions.RayActorError):
        ray.get(handle.qsize.remote(), timeout=60)
