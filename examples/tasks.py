# ruff: noqa: I001
"""Seed example "Tasks": remote functions, .remote() and ray.get, tasks in parallel.

From spec/ray-tasks-seed.txt, verbatim but for the import line (`import zray as ray`).
The four slow tasks are never waited for: the driver exits while they run, and the
runtime it started must stop with it.
"""

# --- seed begin ---
import zray as ray
import time


# A regular Python function.
def normal_function():
    return 1


# By adding the `@ray.remote` decorator, a regular Python function
# becomes a Ray remote function.
@ray.remote
def my_function():
    return 1


# To invoke this remote function, use the `remote` method.
# This will immediately return an object ref (a future) and then create
# a task that will be executed on a worker process.
obj_ref = my_function.remote()

# The result can be retrieved with ``ray.get``.
assert ray.get(obj_ref) == 1


@ray.remote
def slow_function():
    time.sleep(10)
    return 1


# Ray tasks are executed in parallel.
# All computation is performed in the background, driven by Ray's internal event loop.
for _ in range(4):
    # This doesn't block.
    slow_function.remote()
# --- seed end ---

print("tasks: my_function ->", ray.get(obj_ref), "; four slow tasks started, the driver exits without waiting")
