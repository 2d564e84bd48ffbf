"""zray.util.multiprocessing.Pool (Ray's ``ray.util.multiprocessing``), on a real cluster."""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections import Counter

import pytest
from backend import IS_RAY, exceptions, ray

if IS_RAY:
    from ray.util.multiprocessing import Pool, TimeoutError
else:
    from zray.util.multiprocessing import Pool, TimeoutError


@ray.remote(num_cpus=0)
class Gate:
    def __init__(self):
        self.ev = asyncio.Event()

    async def wait(self):
        await self.ev.wait()

    async def open(self):
        self.ev.set()


def pid_of(i):
    return i, os.getpid()


def square(x):
    return x * x


def fail_on(args):
    i, bad = args
    if i in bad:
        raise KeyError(f"item {i}")
    return i


def gated(args):
    i, gate = args
    ray.get(gate.wait.remote())
    return i


@pytest.fixture
def pool4(ray_start):
    p = Pool(processes=4)
    yield p
    p.terminate()
    p.join()


def test_map_in_order_spread_over_every_process(pool4):
    results = pool4.map(pid_of, range(400))
    assert [i for i, _ in results] == list(range(400))
    per_pid = Counter(pid for _, pid in results)
    assert len(per_pid) == 4 and min(per_pid.values()) >= 50
    assert pool4.map(square, []) == []
    assert pool4.map(square, range(10), chunksize=3) == [x * x for x in range(10)]
    assert pool4.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
    assert pool4.starmap(lambda a, b: a + b, zip([1, 2], [3, 4]), chunksize=1) == [4, 6]


def test_map_raises_the_functions_exception(pool4):
    with pytest.raises(KeyError, match="item 7"):
        pool4.map(fail_on, [(i, {7}) for i in range(20)])


def test_apply_and_apply_async(pool4):
    def f(a, b, k1=None, k2=None):
        return (a, b, k1, k2)

    assert pool4.apply(f, (1, 2), {"k2": 3}) == (1, 2, None, 3)
    assert pool4.apply(f, (1, 2), kwds={"k1": 4}) == (1, 2, 4, None)
    with pytest.raises(TypeError):
        pool4.apply(f, (1,))
    gate = Gate.remote()
    res = pool4.apply_async(gated, ((5, gate),))
    res.wait(timeout=0.05)
    assert not res.ready()
    with pytest.raises(ValueError, match="not ready"):
        res.successful()
    with pytest.raises(TimeoutError):
        res.get(timeout=0.05)
    ray.get(gate.open.remote())
    assert res.get(timeout=60) == 5
    assert res.ready() and res.successful()
    bad = pool4.apply_async(fail_on, ((1, {1}),))
    bad.wait(timeout=60)
    assert bad.ready() and not bad.successful()
    with pytest.raises(KeyError):
        bad.get()


def test_map_async_and_callbacks(pool4):
    gate = Gate.remote()
    res = pool4.map_async(gated, [(i, gate) for i in range(40)])
    assert not res.ready()
    with pytest.raises(TimeoutError):
        res.get(timeout=0.05)
    ray.get(gate.open.remote())
    assert res.get(timeout=60) == list(range(40))
    assert res.successful()

    got: queue.Queue = queue.Queue()
    ok = pool4.map_async(fail_on, [(i, ()) for i in range(30)], callback=got.put,
                         error_callback=got.put)
    assert sorted(got.get(timeout=60)) == list(range(30))
    ok.wait()
    bad = pool4.map_async(fail_on, [(i, {2, 20}) for i in range(30)], callback=got.put,
                          error_callback=got.put)
    err = got.get(timeout=60)
    assert isinstance(err, KeyError)
    bad.wait()
    assert not bad.successful()
    one = pool4.apply_async(square, (7,), callback=got.put)
    assert got.get(timeout=60) == 49 and one.get() == 49
    time.sleep(0.2)
    assert got.empty()  # each callback ran exactly once


@pytest.mark.parametrize("use_iter", [False, True])
def test_imap_ordered_with_errors_as_values(pool4, use_iter):
    items = [(i, {2, 50}) for i in range(100)]
    it = pool4.imap(fail_on, iter(items) if use_iter else items, chunksize=11)
    out = list(it)
    assert len(out) == 100
    for i, r in enumerate(out):
        if i in (2, 50):
            assert isinstance(r, KeyError)  # Ray's imap yields the exception, not raises
        else:
            assert r == i
    with pytest.raises(StopIteration):
        it.next()


def test_imap_unordered_returns_as_finished(pool4):
    gate = Gate.remote()
    # Item 0 blocks its actor; everything else finishes first.
    items = [(0, gate)] + [(i, None) for i in range(1, 12)]

    def f(args):
        i, g = args
        if g is not None:
            ray.get(g.wait.remote())
        return i

    it = pool4.imap_unordered(f, items)
    first = [it.next(timeout=60) for _ in range(11)]
    assert sorted(first) == list(range(1, 12))
    with pytest.raises(TimeoutError):
        it.next(timeout=0.1)
    ray.get(gate.open.remote())
    assert it.next(timeout=60) == 0
    with pytest.raises(StopIteration):
        next(it)


def test_imap_timeout_then_resume_in_order(pool4):
    gate = Gate.remote()

    def f(args):
        i, g = args
        if i == 3:
            ray.get(g.wait.remote())
        return i

    it = pool4.imap(f, ((i, gate) for i in range(10)))
    assert [it.next(timeout=60) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(TimeoutError):
        it.next(timeout=0.1)
    ray.get(gate.open.remote())
    assert list(it) == list(range(3, 10))


def test_imap_reads_input_lazily(pool4):
    gate = Gate.remote()
    pulled = []

    def gen():
        for i in range(1000):
            pulled.append(i)
            yield (i, gate)

    it = pool4.imap(gated, gen(), chunksize=2)
    # Nothing can finish: one batch of 2 per actor was read from the input, no more.
    with pytest.raises(TimeoutError):
        it.next(timeout=0.2)
    assert len(pulled) == 8
    ray.get(gate.open.remote())
    assert list(it) == list(range(1000))


def test_imap_non_iterable_warns(pool4):
    with pytest.warns(DeprecationWarning, match="non-iterable"):
        assert list(pool4.imap(square, 3)) == [9]


def test_initializer_and_maxtasksperchild(ray_start, tmp_path):
    def init(d):
        (d / str(os.getpid())).write_text("hi")

    pool = Pool(processes=3, initializer=init, initargs=(tmp_path,))
    # The constructor returns once every initializer has run.
    assert len(os.listdir(tmp_path)) == 3
    pool.terminate()
    pool.join()

    pool = Pool(4, maxtasksperchild=1)
    assert len({pid for _, pid in pool.map(pid_of, range(12))}) == 12
    pool.close()
    pool.join(timeout=60)


def test_close_lets_work_finish_and_refuses_more(ray_start):
    pool = Pool(processes=4)
    gate = Gate.remote()
    res = pool.map_async(gated, [(i, gate) for i in range(4)])
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(square, (1,))
    assert not res.ready()
    ray.get(gate.open.remote())
    pool.join()
    assert res.get(timeout=60) == [0, 1, 2, 3]


def test_terminate_fails_pending_work(ray_start):
    pool = Pool(processes=4)
    gate = Gate.remote()
    res = pool.map_async(gated, [(i, gate) for i in range(4)])
    pool.terminate()
    pool.join()
    res.wait(timeout=60)
    assert res.ready() and not res.successful()
    with pytest.raises(exceptions.RayError):
        res.get()


def test_context_manager_and_nested_pools(ray_start):
    def inner(x):
        with Pool() as p:
            return p.map(square, range(x))

    with Pool(processes=2) as pool:
        assert pool.map(inner, [2, 3]) == [[0, 1], [0, 1, 4]]
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


def test_pool_bad_sizes(ray_start):
    with pytest.raises(ValueError, match="only 4 CPUs"):
        Pool(processes=5)
    with pytest.raises(ValueError, match=">0"):
        Pool(processes=0)


def test_pool_starts_zray(ray_fresh):
    pool = Pool(processes=2)
    assert ray.is_initialized()
    assert int(ray.cluster_resources()["CPU"]) == 2
    assert len({pid for _, pid in pool.map(pid_of, range(8), chunksize=1)}) == 2
    pool.terminate()
    pool.join()


def test_callbacks_run_off_the_caller_thread(pool4):
    seen = []
    done = threading.Event()

    def cb(v):
        seen.append(threading.current_thread() is threading.main_thread())
        done.set()

    pool4.apply_async(square, (3,), callback=cb)
    assert done.wait(60)
    assert seen == [False]
