# ruff: noqa: I001, UP028
"""Seed example "Multiple returns": num_returns, and a generator with num_returns.

From spec/ray-tasks-seed.txt, verbatim but for the import line (`import zray as ray`).
The seed shows two blocks; the second one reuses `ray` from the first.
"""

# --- seed begin ---
import zray as ray


# By default, a Ray task only returns a single Object Ref.
@ray.remote
def return_single():
    return 0, 1, 2


object_ref = return_single.remote()
assert ray.get(object_ref) == (0, 1, 2)


# However, you can configure Ray tasks to return multiple Object Refs.
@ray.remote(num_returns=3)
def return_multiple():
    return 0, 1, 2


object_ref0, object_ref1, object_ref2 = return_multiple.remote()
assert ray.get(object_ref0) == 0
assert ray.get(object_ref1) == 1
assert ray.get(object_ref2) == 2
# --- seed end ---

# --- seed begin ---
@ray.remote(num_returns=3)
def return_multiple_as_generator():
    for i in range(3):
        yield i

# NOTE: Similar to normal functions, these objects will not be available
# until the full task is complete and all returns have been generated.
a, b, c = return_multiple_as_generator.remote()
# --- seed end ---

# Not from the seed: check what the generator returned.
assert ray.get([a, b, c]) == [0, 1, 2]
print("multiple returns OK")
