"""Errors: Ray's exception hierarchy, task errors that are also their original class,
errors flowing through dependent tasks, crashing workers and their retries."""

from __future__ import annotations

import os
import re

import pytest
from backend import count_lines, exceptions, ray

# ---------------------------------------------------------------- hierarchy

HIERARCHY = {
    # name: the bases it must have (besides itself)
    "RayError": [Exception],
    "RayTaskError": ["RayError"],
    "TaskCancelledError": ["RayError"],
    "WorkerCrashedError": ["RayError"],
    "GetTimeoutError": ["RayError", TimeoutError],
    "ObjectLostError": ["RayError"],
    "OwnerDiedError": ["ObjectLostError"],
    "ObjectFetchTimedOutError": ["ObjectLostError"],
    "ReferenceCountingAssertionError": ["ObjectLostError", AssertionError],
    "ObjectFreedError": ["ObjectLostError"],
    "ObjectReconstructionFailedError": ["ObjectLostError"],
    # (Ray 2.60 no longer has ObjectReconstructionFailedMaxAttemptsExceededError nor
    # ObjectReconstructionFailedLineageEvictedError.)
    "ObjectStoreFullError": ["RayError"],
    "OutOfMemoryError": ["RayError"],
    "OutOfDiskError": ["RayError"],
    "CrossLanguageError": ["RayError"],
    "AsyncioActorExit": ["RayError"],
    "TaskPlacementGroupRemoved": ["RayError"],
    "RayActorError": ["RayError"],
    "ActorDiedError": ["RayActorError"],
    "ActorUnavailableError": ["RayActorError"],
    "ActorUnschedulableError": ["RayError"],
    "TaskUnschedulableError": ["RayError"],
    "LocalRayletDiedError": ["RayError"],
    "NodeDiedError": ["RayError"],
    "RaySystemError": ["RayError"],
    "RuntimeEnvSetupError": ["RayError"],
    "PendingCallsLimitExceeded": ["RayError"],
}


@pytest.mark.parametrize("name", sorted(HIERARCHY))
def test_exception_hierarchy(name):
    cls = getattr(exceptions, name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    for base in HIERARCHY[name]:
        base_cls = getattr(exceptions, base) if isinstance(base, str) else base
        assert issubclass(cls, base_cls), f"{name} is not a subclass of {base_cls.__name__}"


def test_error_classes_are_distinct():
    # Catching one kind must not catch another.
    assert not issubclass(exceptions.TaskCancelledError, exceptions.RayTaskError)
    assert not issubclass(exceptions.WorkerCrashedError, exceptions.RayTaskError)
    assert not issubclass(exceptions.GetTimeoutError, exceptions.RayTaskError)
    assert not issubclass(exceptions.RayTaskError, exceptions.RayActorError)


# ---------------------------------------------------------------- task errors


@ray.remote
def fail(message):
    raise ValueError(message)


class CustomError(Exception):
    def __init__(self, code):
        super().__init__(f"custom error {code}")
        self.code = code


@ray.remote
def fail_custom(code):
    raise CustomError(code)


@ray.remote
def passthrough(x):
    return x


@ray.remote
def add_one(x):
    return x + 1


def test_task_error_is_both_ray_task_error_and_the_original_class(ray_start):
    ref = fail.remote("bad thing")
    with pytest.raises(ValueError) as info:
        ray.get(ref)
    err = info.value
    assert isinstance(err, exceptions.RayTaskError)
    assert isinstance(err, exceptions.RayError)
    assert isinstance(err.cause, ValueError) and str(err.cause) == "bad thing"
    # Ray's class is named "RayTaskError(ValueError)".
    assert type(err).__name__ == "RayTaskError(ValueError)"
    # A get of the same ref raises again.
    with pytest.raises(exceptions.RayTaskError):
        ray.get(ref)


def test_task_error_carries_the_remote_traceback(ray_start):
    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(fail.remote("traced"))
    text = str(info.value)
    # Ray: "ray::fail() (pid=4976, ip=192.0.2.2)\n  File \"/.../test_errors.py\", line 68,
    # in fail\n    raise ValueError(message)\n...\nValueError: traced"
    assert "fail()" in text
    assert re.search(r"pid=\d+", text)
    assert re.search(r'File ".*test_errors\.py", line \d+, in fail', text), text
    assert "raise ValueError(message)" in text
    assert "ValueError: traced" in text


def test_remote_traceback_starts_at_user_code(ray_start):
    """As Ray's: the executor's own frames are not shown, for tasks and actor methods."""

    @ray.remote
    class Failing:
        def method(self):
            raise KeyError("in a method")

    for call in (lambda: fail.remote("x"), lambda: Failing.remote().method.remote()):
        with pytest.raises(exceptions.RayTaskError) as info:
            ray.get(call())
        frames = re.findall(r'File "([^"]+)"', str(info.value))
        assert frames and frames[0].endswith("test_errors.py"), str(info.value)
        assert not any(os.sep + "zray" + os.sep in f for f in frames), str(info.value)


def test_custom_exception_class_and_its_attributes(ray_start):
    with pytest.raises(CustomError) as info:
        ray.get(fail_custom.remote(42))
    assert info.value.code == 42
    assert isinstance(info.value, exceptions.RayTaskError)


def test_error_flows_through_dependent_tasks(ray_start):
    failed = fail.remote("at the root")
    chained = add_one.remote(passthrough.remote(failed))
    with pytest.raises(ValueError) as info:
        ray.get(chained)
    assert isinstance(info.value, exceptions.RayTaskError)
    # Ray: "ray::add_one() ...\n  At least one of the input arguments for this task could
    # not be computed:\nray.exceptions.RayTaskError: ray::fail() ... ValueError: at the root"
    assert "at the root" in str(info.value)
    # A ref nested in a list is not resolved: the task runs, its get raises.
    @ray.remote
    def get_nested(refs):
        try:
            ray.get(refs[0])
        except ValueError as e:
            return "caught " + type(e.cause).__name__
        return "not raised"

    assert ray.get(get_nested.remote([failed])) == "caught ValueError"


def test_get_of_a_list_raises_the_first_failed_input(ray_start):
    refs = [passthrough.remote(1), fail.remote("in a list"), passthrough.remote(3)]
    with pytest.raises(ValueError, match="in a list"):
        ray.get(refs)
    assert ray.get(refs[0]) == 1 and ray.get(refs[2]) == 3


def test_exception_inside_get_in_a_task(ray_start):
    @ray.remote
    def outer():
        return ray.get(fail.remote("inner failure"))

    with pytest.raises(ValueError) as info:
        ray.get(outer.remote())
    assert "inner failure" in str(info.value)


# ---------------------------------------------------------------- crashing workers


@ray.remote
def crash_until(path, crashes):
    """Kill this worker process on the first ``crashes`` attempts; count in a file."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    attempts = count_lines(path)
    if attempts <= crashes:
        os._exit(1)
    return attempts


def test_worker_crash_without_retries_raises_worker_crashed_error(ray_start, tmp_path):
    path = tmp_path / "attempts"
    ref = crash_until.options(max_retries=0).remote(str(path), 1)
    # Ray: WorkerCrashedError("The worker died unexpectedly while executing this task.
    # Check python-core-worker-*.log files for more information.")
    with pytest.raises(exceptions.WorkerCrashedError):
        ray.get(ref, timeout=60)
    assert count_lines(path) == 1
    # The worker is replaced: the runtime keeps running tasks.
    assert ray.get([add_one.remote(i) for i in range(4)], timeout=60) == [1, 2, 3, 4]


def test_crashed_worker_is_replaced_and_task_retried(ray_start, tmp_path):
    path = tmp_path / "attempts"
    # Default max_retries is 3: three crashes, then the fourth attempt succeeds.
    assert ray.get(crash_until.remote(str(path), 3), timeout=90) == 4
    pids = (tmp_path / "attempts").read_text().split()
    assert len(set(pids)) == 4  # every attempt ran in a new worker


def test_max_retries_one(ray_start, tmp_path):
    ok, exhausted = tmp_path / "ok", tmp_path / "exhausted"
    assert ray.get(crash_until.options(max_retries=1).remote(str(ok), 1), timeout=60) == 2
    with pytest.raises(exceptions.WorkerCrashedError):
        ray.get(crash_until.options(max_retries=1).remote(str(exhausted), 2), timeout=60)
    assert count_lines(exhausted) == 2


@pytest.mark.slow
def test_default_retries_exhausted_then_worker_crashed_error(ray_start, tmp_path):
    path = tmp_path / "attempts"
    with pytest.raises(exceptions.WorkerCrashedError):
        ray.get(crash_until.remote(str(path), 10), timeout=120)
    assert count_lines(path) == 4  # the first attempt and 3 retries


@pytest.mark.slow
def test_max_retries_minus_one_retries_forever(ray_start, tmp_path):
    path = tmp_path / "attempts"
    ref = crash_until.options(max_retries=-1).remote(str(path), 4)  # more than the default 3
    assert ray.get(ref, timeout=120) == 5
