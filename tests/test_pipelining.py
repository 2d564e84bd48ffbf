"""Pipelined tasks: a worker may get the next short task before the current one ends.

zray pushes a second task to a busy leased worker when the scheduling key's tasks are
known to be short and more are queued than lease requests can take (see
docs/ARCHITECTURE.md, "Pipelining"). What a user must never see from that:

- a short task stuck behind a long one (the worker hands queued tasks back);
- a deadlock when the running task waits for a task queued behind it;
- a task that never started failing because the worker in front of it crashed.

Ray runs one task per worker at a time, so these tests hold under Ray too.
"""

from __future__ import annotations

import os
import time

import pytest
from backend import ray, touch, wait_for_file, wait_until

pytestmark = pytest.mark.timeout(60)


@ray.remote(max_retries=0)
def short(i):
    return i


@ray.remote(max_retries=0)
def long_task(gate):
    wait_for_file(gate, 60)  # runs until the test opens the gate
    return "long"


def _warm(n=40):
    # Makes the key's recent run times short, so the owner pipelines.
    assert ray.get([short.remote(i) for i in range(n)]) == list(range(n))


def test_short_tasks_not_stuck_behind_a_long_one(ray_fresh, tmp_path):
    ray_fresh(num_cpus=2)
    _warm()
    gate = tmp_path / "gate"
    slow = long_task.remote(str(gate))
    refs = [short.remote(i) for i in range(40)]
    try:
        # The long task runs until the gate opens, after this: a short queued behind it
        # must have been handed back to run elsewhere, or this get cannot succeed.
        assert ray.get(refs, timeout=30) == list(range(40))
    finally:
        touch(gate)
    assert ray.get(slow, timeout=30) == "long"


@ray.remote(num_cpus=0)
class Box:
    def __init__(self):
        self.v = None

    def set(self, v):
        self.v = v

    def get(self):
        return self.v


@ray.remote(max_retries=0)
def waiter(box):
    # Waits for refs of tasks submitted after it: some may queue behind it.
    while True:
        v = ray.get(box.get.remote())
        if v is not None:
            return sum(ray.get(v[0]))
        time.sleep(0.01)


def test_running_task_waits_for_tasks_queued_behind_it(ray_fresh):
    ray_fresh(num_cpus=1)
    box = Box.remote()
    ray.get(box.get.remote())
    _warm()
    w = waiter.remote(box)
    refs = [short.remote(i) for i in range(30)]
    box.set.remote([refs])
    assert ray.get(w, timeout=30) == sum(range(30))


@ray.remote(max_retries=0)
def crash_soon():
    time.sleep(0.003)
    os._exit(1)


def test_tasks_queued_behind_a_crashed_task_still_run(ray_fresh):
    ray_fresh(num_cpus=2)
    for _ in range(3):
        _warm()
        bad = crash_soon.remote()
        refs = [short.remote(i) for i in range(40)]
        # max_retries=0: a short that never started must not count as crashed.
        assert ray.get(refs, timeout=30) == list(range(40))
        with pytest.raises(ray.exceptions.WorkerCrashedError):
            ray.get(bad, timeout=30)


def test_cancel_of_a_task_queued_behind_another(ray_fresh, tmp_path):
    ray_fresh(num_cpus=1)
    _warm()
    gate = tmp_path / "gate"
    first = long_task.remote(str(gate))
    refs = [short.remote(i) for i in range(30)]
    for r in refs[::2]:
        ray.cancel(r)
    # All still queued (the one CPU is busy until the gate opens): each cancel lands.
    assert wait_until(lambda: len(ray.wait(refs[::2], num_returns=15, timeout=0)[0]) == 15, 30)
    touch(gate)
    for i, r in enumerate(refs):
        if i % 2:
            assert ray.get(r, timeout=20) == i
        else:
            with pytest.raises(ray.exceptions.TaskCancelledError):
                ray.get(r, timeout=20)
    assert ray.get(first, timeout=20) == "long"
