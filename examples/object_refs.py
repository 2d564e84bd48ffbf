# ruff: noqa: I001
"""Seed example "Passing object refs to Ray tasks".

From spec/ray-tasks-seed.txt, verbatim but for the import line (`import zray as ray`).
"""

# --- seed begin ---
import zray as ray


@ray.remote
def my_function():
    return 1


@ray.remote
def function_with_an_argument(value):
    return value + 1


obj_ref1 = my_function.remote()
assert ray.get(obj_ref1) == 1

# You can pass an object ref as an argument to another Ray task.
obj_ref2 = function_with_an_argument.remote(obj_ref1)
assert ray.get(obj_ref2) == 2
# --- seed end ---

print("object_refs: my_function ->", ray.get(obj_ref1), "; function_with_an_argument ->", ray.get(obj_ref2))
