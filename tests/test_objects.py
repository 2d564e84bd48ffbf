"""Objects: get, put, wait, large values in shared memory, freeing, serialisation errors."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from backend import IS_RAY, exceptions, ray, shm_segments, touch, wait_for_file, wait_until


@ray.remote
def echo(x):
    return x


@ray.remote
def sleep_then(value, seconds):
    time.sleep(seconds)
    return value


@ray.remote
def wait_then(value, path, timeout=60):
    """Return ``value`` once the file at ``path`` exists."""
    wait_for_file(path, timeout)
    return value


@ray.remote
def fail(message):
    raise ValueError(message)


# ---------------------------------------------------------------- get


def test_get_one_ref_or_a_list_in_order(ray_start):
    assert ray.get(echo.remote(5)) == 5
    # Finish in reverse order; get keeps the input order.
    refs = [sleep_then.remote(i, 0.3 * (3 - i)) for i in range(4)]
    assert ray.get(refs) == [0, 1, 2, 3]
    assert ray.get([]) == []
    mixed = [ray.put("a"), echo.remote("b"), ray.put("c")]
    assert ray.get(mixed) == ["a", "b", "c"]


def test_get_timeout_raises_get_timeout_error(ray_start, tmp_path):
    ref = wait_then.remote(1, str(tmp_path / "go"))
    with pytest.raises(exceptions.GetTimeoutError) as info:
        ray.get(ref, timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, exceptions.RayError)
    with pytest.raises(TimeoutError):
        ray.get([ray.put(0), ref], timeout=0.1)
    touch(tmp_path / "go")
    assert ray.get(ref, timeout=60) == 1


def test_get_raises_as_soon_as_any_input_failed(ray_start, tmp_path):
    go = tmp_path / "go"
    blocked = wait_then.remote("late", str(go), 120)
    with pytest.raises(ValueError, match="early failure"):
        ray.get([blocked, fail.remote("early failure")])
    # `blocked` only finishes once the test creates `go`, after this get.
    touch(go)
    assert ray.get(blocked) == "late"


def test_get_rejects_what_is_not_a_ref(ray_start):
    # Ray: get(1) -> ValueError("Invalid type of object refs, <class 'int'>, is given...");
    # get([ref, 1]) -> TypeError("Attempting to call `get` on the value 1, which is not
    # an ray.ObjectRef.")
    with pytest.raises((TypeError, ValueError)):
        ray.get(1)
    with pytest.raises((TypeError, ValueError)):
        ray.get([ray.put(1), 1])


# ---------------------------------------------------------------- put


@pytest.mark.parametrize(
    "value",
    [None, 0, "text", b"\x00bytes", [1, {"a": (2, 3)}], {"big": b"x" * (3 << 20)}],
    ids=["none", "int", "str", "bytes", "nested", "large"],
)
def test_put_get_round_trip(ray_start, value):
    ref = ray.put(value)
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref) == value
    assert ray.get(echo.remote(ref)) == value


def test_put_of_an_object_ref_raises_type_error(ray_start):
    ref = ray.put(1)
    # Ray: TypeError("Calling 'put' on an ray.ObjectRef is not allowed. If you really want
    # to do this, you can wrap the ray.ObjectRef in a list and call 'put' on it.")
    with pytest.raises(TypeError):
        ray.put(ref)
    (inner,) = ray.get(ray.put([ref]))  # wrapped in a list it is allowed, and stays a ref
    assert ray.get(inner) == 1


# ---------------------------------------------------------------- wait


def test_wait_returns_ready_and_not_ready_in_input_order(ray_start, tmp_path):
    go = str(tmp_path / "go")
    refs = [
        wait_then.remote(0, go),
        sleep_then.remote(1, 0.0),
        wait_then.remote(2, go),
        ray.put(3),
        wait_then.remote(4, go),
    ]
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=60)
    assert ready == [refs[1], refs[3]]
    assert not_ready == [refs[0], refs[2], refs[4]]

    ready, not_ready = ray.wait(refs, num_returns=3, timeout=0.3)  # times out with 2
    assert ready == [refs[1], refs[3]]
    assert not_ready == [refs[0], refs[2], refs[4]]

    touch(go)
    ready, not_ready = ray.wait(refs, num_returns=5, timeout=60)
    assert ready == refs and not_ready == []


def test_wait_defaults_to_one(ray_start, tmp_path):
    go = str(tmp_path / "go")
    refs = [wait_then.remote(0, go), sleep_then.remote(1, 0.1), sleep_then.remote(2, 0.1)]
    assert wait_until(lambda: len(ray.wait(refs, num_returns=3, timeout=0)[0]) == 2, 30)
    ready, not_ready = ray.wait(refs)
    assert len(ready) == 1 and len(not_ready) == 2
    assert ready[0] in refs[1:]
    assert [r for r in refs if r not in ready] == not_ready
    touch(go)


def test_wait_timeout_and_fetch_local(ray_start, tmp_path):
    go = str(tmp_path / "go")
    refs = [wait_then.remote(i, go) for i in range(2)]
    assert ray.wait(refs, num_returns=1, timeout=0.5) == ([], refs)
    assert ray.wait(refs, num_returns=2, timeout=0) == ([], refs)
    touch(go)
    ready, not_ready = ray.wait(refs, num_returns=2, timeout=60, fetch_local=False)
    assert ready == refs and not_ready == []


def test_blocked_wait_wakes_for_the_last_ref_and_counts_failures(ray_start, tmp_path):
    go = str(tmp_path / "go")
    refs = [wait_then.remote(i, go) for i in range(2)]
    last = fail.remote("boom")  # the cluster has 4 CPUs: this runs beside the two waiting
    ready, not_ready = ray.wait([*refs, last], timeout=60)  # blocks until the failure
    assert ready == [last] and not_ready == refs
    touch(go)


def test_wait_loop_drains_every_ref_once(ray_start):
    # The shape of ray_perf's "wait 1k refs": wait on what the last call left.
    import random

    rng = random.Random(7)
    refs = [sleep_then.remote(i, rng.choice([0, 0, 0.001, 0.02])) for i in range(300)]
    seen = []
    not_ready = refs
    while not_ready:
        ready, rest = ray.wait(not_ready, num_returns=min(3, len(not_ready)), timeout=60)
        assert ready, "wait timed out"
        assert len(ready) + len(rest) == len(not_ready)
        assert [r for r in not_ready if r not in ready] == rest  # input order kept
        seen.extend(ready)
        not_ready = rest
    assert sorted(ray.get(seen)) == list(range(300))


def test_wait_on_a_returned_list_changed_in_place(ray_start, tmp_path):
    # zray reuses the ids of the list wait() returned last (the wait-loop idiom);
    # a list changed in place afterwards must still be answered right.
    go = str(tmp_path / "go")
    refs = [ray.put(0), wait_then.remote(1, go), wait_then.remote(2, go)]
    _, not_ready = ray.wait(refs, timeout=60)
    assert not_ready == refs[1:]
    not_ready[0] = 5
    with pytest.raises(TypeError):
        ray.wait(not_ready, timeout=0)
    done = ray.put("x")
    not_ready[0] = done  # same length, another ref: found although its id is new
    ready, rest = ray.wait(not_ready, timeout=30)
    assert ready == [done] and rest == [refs[2]]
    late = sleep_then.remote("late", 0.2)
    rest[0] = late  # ... and waited for, when it becomes ready later
    ready, rest = ray.wait(rest, timeout=30)
    assert ready == [late] and rest == []
    touch(go)


def test_wait_validation_errors(ray_start):
    ref = ray.put(1)
    # Ray's messages, for the record:
    # - a single ref: TypeError("wait() expected a list of ray.ObjectRef or
    #   ray.ObjectRefGenerator, got a single ray.ObjectRef or ray.ObjectRefGenerator ...")
    # - a tuple: TypeError("wait() expected a list of ..., got <class 'tuple'>")
    # - a non-ref in the list: TypeError("... got list containing <class 'int'>")
    # - duplicates: ValueError("Wait requires a list of unique ray_waitables.")
    # - num_returns > len: ValueError("num_returns cannot be greater than the number of
    #   ray_waitables provided to ray.wait.")
    # - num_returns <= 0: ValueError("Invalid number of objects to return 0.")
    # - timeout < 0: ValueError("The 'timeout' argument must be nonnegative. Received -1")
    with pytest.raises(TypeError):
        ray.wait(ref)
    with pytest.raises(TypeError):
        ray.wait((ref,))
    with pytest.raises(TypeError):
        ray.wait([ref, 1])
    with pytest.raises(ValueError, match="unique"):
        ray.wait([ref, ref])
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait([ref], num_returns=2)
    with pytest.raises(ValueError):
        ray.wait([ref], num_returns=0)
    with pytest.raises(ValueError):
        ray.wait([ref], num_returns=-1)
    with pytest.raises(ValueError, match="timeout"):
        ray.wait([ref], timeout=-1)
    # An empty list is fine (num_returns=1 is not checked against it).
    assert ray.wait([]) == ([], [])


# ---------------------------------------------------------------- large values


@ray.remote
def inspect_array(arr):
    return {
        "nbytes": arr.nbytes,
        "writeable": bool(arr.flags.writeable),
        "has_base": arr.base is not None,
        "sum": float(arr.sum()),
    }


def test_large_numpy_array_is_read_without_copy_in_a_task(ray_start):
    arr = np.arange(10 * 1024 * 1024 // 8, dtype=np.float64)  # 10 MB
    expected = float(arr.sum())
    for arg in (ray.put(arr), arr):  # an explicit put, and a large argument
        info = ray.get(inspect_array.remote(arg))
        assert info["nbytes"] == arr.nbytes
        assert info["sum"] == expected
        # As in Ray: the array is a read-only view of the shared-memory store.
        assert info["writeable"] is False
        assert info["has_base"] is True
    got = ray.get(ray.put(arr))
    assert np.array_equal(got, arr)
    assert not got.flags.writeable  # the driver reads it from the store too (Ray does)


def test_small_and_large_results_of_tasks(ray_start):
    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    small, large = ray.get([make.remote(10), make.remote(20 << 20)])
    assert small.tolist() == [7] * 10
    assert large.nbytes == 20 << 20 and int(large[-1]) == 7 and int(large.sum()) == 7 * (20 << 20)


def _new_large_segments(before: dict[str, int], min_size: int) -> set[str]:
    return {n for n, size in shm_segments().items() if n not in before and size >= min_size}


def test_object_is_freed_when_no_ref_remains(ray_start):
    if IS_RAY:
        # The only backend-specific skip: Ray's plasma store does not use one file per
        # object in /dev/shm, so there is nothing to count.
        pytest.skip("Ray keeps objects in one plasma arena, not in /dev/shm/zray* segments")
    size = 8 << 20
    before = shm_segments()
    ref = ray.put(np.ones(size, dtype=np.uint8))
    ours = wait_until(lambda: _new_large_segments(before, size), 10)
    assert ours, "a large put made no /dev/shm/zray* segment"
    del ref
    gc.collect()
    assert wait_until(lambda: not (ours & set(shm_segments())), 15), (
        f"segments {sorted(ours & set(shm_segments()))} outlived the last ObjectRef"
    )

    # The same for a task's large result, once the driver drops its ref.
    before = shm_segments()
    ref = inspect_array.remote(np.zeros(size, dtype=np.uint8))  # the argument is stored
    assert ray.get(ref)["nbytes"] == size
    made = _new_large_segments(before, size)
    del ref
    gc.collect()
    assert wait_until(lambda: not (made & set(shm_segments())), 15), (
        f"segments {sorted(made & set(shm_segments()))} outlived the task and its refs"
    )


@ray.remote
def sum_after(container, go):
    wait_for_file(go, 60)
    return float(ray.get(container[0]).sum())


def test_a_borrowed_ref_keeps_the_object_alive(ray_start, tmp_path):
    go = tmp_path / "go"
    arr = np.ones(4 << 20, dtype=np.uint8)
    ref = ray.put(arr)
    result = sum_after.remote([ref], str(go))  # the task borrows the ref (nested)
    del ref  # the driver's last ref goes; the task's borrowed one keeps the object
    gc.collect()
    time.sleep(0.5)
    touch(go)
    assert ray.get(result, timeout=60) == float(arr.sum())


# ---------------------------------------------------------------- serialisation errors


def test_put_of_an_unserialisable_value_names_its_type(ray_start):
    # Ray: TypeError("Could not serialize the put value <unlocked _thread.lock object at
    # 0x...>: ... cannot pickle '_thread.lock' object ..."), after printing a report.
    with pytest.raises(TypeError) as info:
        ray.put(threading.Lock())
    assert "lock" in str(info.value)
    assert ray.get(ray.put(1)) == 1  # the runtime keeps working


def test_remote_with_an_unserialisable_argument_names_its_type(ray_start):
    # Ray: TypeError("Could not serialize the argument <unlocked _thread.lock object ...>
    # for a task or actor test_objects.echo: ...")
    with pytest.raises(TypeError) as info:
        echo.remote(threading.Lock())
    assert "lock" in str(info.value)
    assert ray.get(echo.remote(2)) == 2


_LOCK = threading.Lock()


def test_remote_function_that_captures_an_unserialisable_value(ray_start):
    @ray.remote
    def uses_lock():
        return _LOCK.locked()

    # Ray: TypeError("Could not serialize the function test_objects.uses_lock: ...
    # cannot pickle '_thread.lock' object"), raised by .remote().
    with pytest.raises(TypeError) as info:
        uses_lock.remote()
    assert "lock" in str(info.value)
    assert ray.get(echo.remote(3)) == 3


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("_Unpicklable refuses to be pickled")


def test_task_returning_an_unserialisable_value_fails_at_get(ray_start):
    @ray.remote
    def returns_bad():
        return _Unpicklable()

    with pytest.raises(exceptions.RayError) as info:
        ray.get(returns_bad.remote())
    assert "_Unpicklable" in str(info.value)
    assert ray.get(echo.remote(4)) == 4
