"""What a driver's terminal shows: tasks' print() and logging output, prefixed like
Ray's "(function_name pid=1234)", and the warning about a task no node can run."""

from __future__ import annotations

import re

from backend import DriverRun

PRINT_DRIVER = """
import logging
import os
import sys

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def say_hello(x):
    print("hello from task", x)
    print("error stream of task", x, file=sys.stderr)
    logging.getLogger("user.logger").warning("log record from task %s", x)
    return os.getpid()


pid = ray.get(say_hello.remote(7))
print("TASK PID", pid, flush=True)
sys.stdin.read()  # stay up until the test has seen the output
ray.shutdown()
"""


def test_task_print_and_logging_reach_the_driver_with_a_prefix(tmp_path):
    run = DriverRun(PRINT_DRIVER, tmp_path)
    try:
        m = run.wait_for_output(r"TASK PID (\d+)", 120)
        assert m, run.output
        pid = m.group(1)
        # Ray: "(say_hello pid=9089) hello from task 7" (in colour), for stdout, stderr
        # and logging alike.
        for text in ("hello from task 7", "error stream of task 7", "log record from task 7"):
            pattern = rf"\(say_hello pid={pid}\)\s.*{re.escape(text)}"
            assert run.wait_for_output(pattern, 30), f"no {pattern!r} in:\n{run.output}"
    finally:
        rc = run.finish()
    assert rc == 0, run.output


INFEASIBLE_DRIVER = """
import sys

import zray as ray

ray.init(num_cpus=2)


@ray.remote
def f():
    return 1


ref = f.options(resources={"nonexistent": 1}).remote()
ready, not_ready = ray.wait([ref], timeout=1)
print("WAITED", len(ready), len(not_ready), not_ready == [ref], flush=True)
print("GET", ray.get(f.remote()), flush=True)  # the cluster still works
sys.stdin.read()  # stay up until the test has seen the warning
ray.shutdown()
"""


def test_a_task_no_node_can_run_stays_pending_with_a_warning(tmp_path):
    run = DriverRun(INFEASIBLE_DRIVER, tmp_path)
    try:
        assert run.wait_for_output(r"WAITED 0 1 True", 120), run.output
        assert run.wait_for_output(r"GET 1", 60), run.output
        # Ray, some seconds later (from its autoscaler): "(autoscaler +34s) Error: No
        # available node types can fulfill resource request {'CPU': 1.0, 'nonexistent':
        # 1.0}. Add suitable node types to this cluster to resolve this issue."
        # What is required: a line that names the resource the task asks for.
        warning = run.wait_for_output(r"^(?!.*WAITED).*nonexistent.*$", 60)
        assert warning, f"no warning naming the resource in:\n{run.output}"
        assert re.search(r"warn|error|cannot|infeasible|unschedulable", warning.group(0), re.I)
    finally:
        rc = run.finish()
    assert rc == 0, run.output
