"""num_returns: fixed counts (0, 1, n), generators with a count, and streaming
generators (ObjectRefGenerator: next, for, async for, an error that ends the stream)."""

from __future__ import annotations

import asyncio
import os

import pytest
from backend import exceptions, ray, touch, wait_for_file, wait_until

# ---------------------------------------------------------------- num_returns as an int


@ray.remote(num_returns=3)
def three():
    return "a", "b", "c"


@ray.remote(num_returns=1)
def one_tuple():
    return 1, 2


@ray.remote(num_returns=0)
def nothing(path):
    touch(path)


def test_num_returns_three(ray_start):
    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, ray.ObjectRef) for r in refs)
    assert ray.get(refs) == ["a", "b", "c"]
    a, b, c = three.options(num_returns=3).remote()
    assert ray.get(c) == "c"


def test_num_returns_one_returns_a_single_ref(ray_start):
    ref = one_tuple.remote()
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == (1, 2)


def test_num_returns_zero_returns_none_and_runs(ray_start, tmp_path):
    path = tmp_path / "ran"
    assert nothing.remote(str(path)) is None
    assert wait_until(path.exists, 30), "a num_returns=0 task did not run"


def test_num_returns_set_by_options(ray_start):
    @ray.remote
    def pair():
        return 1, 2

    x, y = pair.options(num_returns=2).remote()
    assert ray.get([x, y]) == [1, 2]


def test_wrong_number_of_returns_is_an_error_at_get(ray_start):
    @ray.remote(num_returns=2)
    def returns_three():
        return 1, 2, 3

    @ray.remote(num_returns=2)
    def returns_scalar():
        return 1

    refs = returns_three.remote()  # .remote() itself does not fail
    assert len(refs) == 2
    # Ray: RayTaskError(ValueError)("Task returned 3 objects, but num_returns=2.")
    for ref in refs:
        with pytest.raises(exceptions.RayTaskError):
            ray.get(ref)
    # Ray: RayTaskError(TypeError)("object of type 'int' has no len()")
    with pytest.raises(exceptions.RayTaskError):
        ray.get(returns_scalar.remote())


# ---------------------------------------------------------------- generators with a count


@ray.remote(num_returns=3)
def gen_three():
    yield from range(3)


def test_generator_with_num_returns(ray_start):
    refs = gen_three.remote()
    assert len(refs) == 3
    assert ray.get(refs) == [0, 1, 2]


def test_generator_yielding_too_few_values_is_an_error_at_get(ray_start):
    @ray.remote(num_returns=3)
    def gen_two():
        yield 1
        yield 2

    # Ray: RayTaskError(ValueError)("Task returned 2 objects, but num_returns=3.")
    # (A generator that yields MORE than num_returns is not an error in Ray: the extra
    # values are dropped and only the worker's log says so; not tested.)
    with pytest.raises(exceptions.RayTaskError):
        ray.get(gen_two.remote())


# ---------------------------------------------------------------- streaming generators


@ray.remote
def paced(directory, n):
    """Yield i, then wait for the file `go<i>` before going on; `done` at the end."""
    for i in range(n):
        yield i
        wait_for_file(os.path.join(directory, f"go{i}"), 60)
    touch(os.path.join(directory, "done"))


def test_streaming_generator_refs_arrive_as_the_task_yields(ray_start, tmp_path):
    gen = paced.remote(str(tmp_path), 3)
    assert isinstance(gen, ray.ObjectRefGenerator)
    # Each value is there while the task is still blocked after yielding it.
    for i in range(3):
        ref = next(gen)
        assert isinstance(ref, ray.ObjectRef)
        assert ray.get(ref, timeout=30) == i
        assert not (tmp_path / "done").exists()
        touch(tmp_path / f"go{i}")
    with pytest.raises(StopIteration):
        next(gen)
    assert (tmp_path / "done").exists()
    with pytest.raises(StopIteration):  # and it stays exhausted
        next(gen)


@ray.remote
def count_to(n):
    for i in range(n):
        yield i * 10


def test_streaming_generator_for_loop(ray_start):
    values = [ray.get(ref) for ref in count_to.remote(5)]
    assert values == [0, 10, 20, 30, 40]
    assert list(count_to.remote(0)) == []


def test_streaming_generator_async_for(ray_start):
    async def consume():
        out = []
        async for ref in count_to.remote(4):
            out.append(await ref)
        return out

    assert asyncio.run(consume()) == [0, 10, 20, 30]


@ray.remote
def yields_then_fails():
    yield "first"
    yield "second"
    raise ValueError("generator failed")


def test_exception_in_a_streaming_generator_ends_the_stream_with_an_error_ref(ray_start):
    gen = yields_then_fails.remote()
    assert ray.get(next(gen)) == "first"
    assert ray.get(next(gen)) == "second"
    error_ref = next(gen)
    with pytest.raises(ValueError, match="generator failed") as info:
        ray.get(error_ref)
    assert isinstance(info.value, exceptions.RayTaskError)
    with pytest.raises(StopIteration):
        next(gen)


def test_streaming_generator_with_large_values(ray_start):
    @ray.remote
    def chunks():
        for i in range(3):
            yield bytes([i]) * (2 << 20)

    sizes = [(len(v), v[0]) for v in (ray.get(r) for r in chunks.remote())]
    assert sizes == [(2 << 20, 0), (2 << 20, 1), (2 << 20, 2)]
