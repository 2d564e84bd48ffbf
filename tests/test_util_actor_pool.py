"""zray.util.ActorPool (Ray's ``ray.util.ActorPool``), on a real cluster."""

from __future__ import annotations

import os

import pytest
from backend import exceptions, ray
from gate import Gate


@ray.remote(num_cpus=0)
class Worker:
    def __init__(self, gate=None):
        self.gate = gate

    def double(self, v):
        return 2 * v

    def gated(self, v):
        ray.get(self.gate.wait.remote(v))
        return v

    def pid(self, _):
        return os.getpid()

    def fail(self, v):
        raise ValueError(f"bad {v}")

    def die(self, _):
        os._exit(1)


def double(a, v):
    return a.double.remote(v)


def test_map_is_ordered_and_uses_every_actor(ray_start):
    actors = [Worker.remote() for _ in range(3)]
    pool = ray.util.ActorPool(actors)
    assert list(pool.map(double, range(20))) == [2 * v for v in range(20)]
    pids = set(pool.map(lambda a, v: a.pid.remote(v), range(9)))
    assert len(pids) == 3
    assert sorted(pool.map_unordered(double, range(10))) == [2 * v for v in range(10)]


def test_submit_get_next_and_free_actors(ray_start):
    a1 = Worker.remote()
    pool = ray.util.ActorPool([a1])
    assert pool.has_free() and not pool.has_next()
    pool.submit(double, 1)
    pool.submit(double, 2)  # no idle actor: waits in the pool's queue
    assert not pool.has_free()
    assert pool.pop_idle() is None
    assert pool.has_next()
    assert pool.get_next() == 2
    assert pool.get_next() == 4
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    assert pool.pop_idle() == a1
    assert not pool.has_free()
    pool.push(a1)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)
    a2 = Worker.remote()
    pool.push(a2)
    assert sorted(pool.map(double, [1, 2])) == [2, 4]


def test_unordered_returns_first_finished(ray_start):
    gate = Gate.remote()
    pool = ray.util.ActorPool([Worker.remote(gate) for _ in range(3)])
    for v in (1, 2, 3):
        pool.submit(lambda a, v: a.gated.remote(v), v)
    ray.get(gate.open.remote(3))
    assert pool.get_next_unordered(timeout=60) == 3
    # After an unordered get the next in order (1) is still pending, but get_next is
    # refused only once no later index is left: here 1 and 2 are left, still refused as
    # the return index moved past them.
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    ray.get(gate.open.remote(1))
    ray.get(gate.open.remote(2))
    assert sorted([pool.get_next_unordered(), pool.get_next_unordered()]) == [1, 2]


def test_timeouts(ray_start):
    gate = Gate.remote()
    pool = ray.util.ActorPool([Worker.remote(gate)])
    pool.submit(lambda a, v: a.gated.remote(v), 1)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.1)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)
    assert pool.has_next()  # a plain timeout keeps the task
    ray.get(gate.open.remote(1))
    assert pool.get_next(timeout=60) == 1

    pool.submit(lambda a, v: a.gated.remote(v), 2)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next()  # dropped, actor back in the pool
    assert pool.has_free()
    ray.get(gate.open.remote(2))
    pool.submit(lambda a, v: a.gated.remote(v), 3)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next_unordered(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next()
    ray.get(gate.open.remote(3))


def test_map_drops_earlier_unfetched_results(ray_start):
    gate = Gate.remote()
    pool = ray.util.ActorPool([Worker.remote(gate)])
    pool.submit(lambda a, v: a.gated.remote(v), 1)  # not finished, never taken
    results = pool.map(double, [5, 6])
    # As in Ray, the dropped call still runs on its actor: the new ones queue behind it.
    ray.get(gate.open.remote(1))
    assert list(results) == [10, 12]


def test_task_error_keeps_the_actor(ray_start):
    pool = ray.util.ActorPool([Worker.remote()])
    pool.submit(lambda a, v: a.fail.remote(v), 7)
    pool.submit(double, 8)
    with pytest.raises(ValueError, match="bad 7"):
        pool.get_next()
    assert pool.get_next() == 16
    assert pool.has_free()


def test_dead_actor_leaves_the_pool(ray_start):
    dying, healthy = Worker.remote(), Worker.remote()
    pool = ray.util.ActorPool([healthy, dying])  # submit takes the last idle first
    pool.submit(lambda a, v: a.die.remote(v), 0)
    pool.submit(double, 1)
    with pytest.raises(exceptions.RayActorError):
        pool.get_next()
    assert pool.get_next() == 2
    # Only the healthy actor is left: all later work runs there.
    assert list(pool.map(double, range(4))) == [0, 2, 4, 6]
    assert pool.pop_idle() == healthy
    assert pool.pop_idle() is None


@ray.remote(num_cpus=0)
class Pair:
    @ray.method(num_returns=2)
    def both(self, v):
        return v, -v


def test_fn_may_return_a_list_of_refs(ray_start):
    pool = ray.util.ActorPool([Pair.remote() for _ in range(2)])
    for v in range(4):
        pool.submit(lambda a, v: a.both.remote(v), v)
    assert [pool.get_next(timeout=60) for _ in range(4)] == [[v, -v] for v in range(4)]
    pool.submit(lambda a, v: a.both.remote(v), 9)
    with pytest.raises(TypeError, match="one ObjectRef"):
        pool.get_next_unordered()
    assert pool.get_next(timeout=60) == [9, -9]
