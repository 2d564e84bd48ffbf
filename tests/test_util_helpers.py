"""zray.util.as_completed / map_unordered (Ray's ``ray.util.helpers``), on a real cluster."""

from __future__ import annotations

import pytest
from backend import ray
from gate import Gate


@ray.remote(num_cpus=0)
def gated(x, gate):
    ray.get(gate.wait.remote(x))
    return x


@ray.remote
def square(x):
    return x * x


@ray.remote
def boom(x):
    raise ValueError(f"bad {x}")


def _open(gate, k):
    ray.get(gate.open.remote(k))


@pytest.mark.parametrize("yield_obj_refs", [False, True])
def test_as_completed_yields_in_completion_order(ray_start, yield_obj_refs):
    gate = Gate.remote()
    inputs = [5, 4, 3, 2, 1]
    refs = [gated.remote(x, gate) for x in inputs]
    it = ray.util.as_completed(refs, chunk_size=1, yield_obj_refs=yield_obj_refs)
    got = []
    for k in reversed(inputs):  # finish them last-submitted first
        _open(gate, k)
        item = next(it)
        got.append(ray.get(item) if yield_obj_refs else item)
        if yield_obj_refs:
            assert item in refs
    assert got == [1, 2, 3, 4, 5]
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_chunks_wait_for_a_full_batch(ray_start):
    gate = Gate.remote()
    refs = [gated.remote(x, gate) for x in range(4)]
    it = ray.util.as_completed(refs, chunk_size=2, timeout=None)
    _open(gate, 3)
    # One ready is not a batch of two: the iterator still waits.
    ready, _ = ray.wait([refs[3]], timeout=60)
    assert ready
    _open(gate, 1)
    # Within a batch, the order of refs is kept (wait preserves input order).
    assert [next(it), next(it)] == [1, 3]
    _open(gate, 0)
    _open(gate, 2)
    assert sorted(it) == [0, 2]


def test_as_completed_timeout_bounds_each_wait_not_the_whole(ray_start):
    gate = Gate.remote()
    refs = [gated.remote(x, gate) for x in range(2)]
    it = ray.util.as_completed(refs, chunk_size=2, timeout=0.2)
    # With a timeout a batch may be short: the first wait returns after 0.2 s with
    # what is ready, and the iteration goes on until every ref is done.
    _open(gate, 0)
    assert next(it) == 0
    _open(gate, 1)
    assert next(it) == 1
    assert list(it) == []


def test_as_completed_errors_and_bad_arguments(ray_start):
    with pytest.raises(ValueError, match="chunk_size"):
        list(ray.util.as_completed([square.remote(1)], chunk_size=0))
    with pytest.raises(ValueError, match="num_returns"):
        list(ray.util.as_completed([square.remote(1)], num_returns=1))
    assert list(ray.util.as_completed([])) == []
    with pytest.raises(ValueError, match="bad 3"):
        list(ray.util.as_completed([boom.remote(3)]))


def test_map_unordered_all_results(ray_start):
    out = list(ray.util.map_unordered(square, range(30), chunk_size=4))
    assert sorted(out) == [x * x for x in range(30)]
    refs = list(ray.util.map_unordered(square, range(5), yield_obj_refs=True,
                                       backpressure_size=None))
    assert sorted(ray.get(refs)) == [0, 1, 4, 9, 16]


def test_map_unordered_backpressure_bounds_tasks_in_flight(ray_start):
    gate = Gate.remote()

    class Fn:  # fn only needs .remote(item); count how many are started
        started = 0

        def remote(self, x):
            Fn.started += 1
            return gated.remote(x, gate)

    it = ray.util.map_unordered(Fn(), range(6), backpressure_size=2, chunk_size=1)
    _open(gate, 1)
    assert next(it) == 1
    # Two started, then the iterator blocked in wait until one finished.
    assert Fn.started == 2
    for k in (0, 2, 3, 4, 5):
        _open(gate, k)
    assert sorted(it) == [0, 2, 3, 4, 5]
    assert Fn.started == 6


def test_map_unordered_bad_arguments(ray_start):
    with pytest.raises(ValueError, match="backpressure_size"):
        list(ray.util.map_unordered(square, [1], backpressure_size=0))
    with pytest.raises(ValueError, match="chunk_size"):
        list(ray.util.map_unordered(square, [1], chunk_size=0))
