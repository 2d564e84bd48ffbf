"""A first zray driver: run it with `python examples/hello.py`.

It shows the core task API. A Ray user knows all of it already: the only change from a
Ray script is the import line.
"""

import time

import zray as ray

# Start a local cluster on this machine (zray.shutdown() or the end of the script stops it).
ray.init(num_cpus=4)


@ray.remote
def square(x):
    return x * x


# .remote() returns at once with an ObjectRef (a future); ray.get waits for the value.
refs = [square.remote(i) for i in range(8)]
print("squares:", ray.get(refs))


# Tasks run in parallel: four 1-second tasks take about one second.
@ray.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


start = time.time()
ray.get([nap.remote(1) for _ in range(4)])
print(f"four 1 s tasks took {time.time() - start:.1f} s")

# Put a value in the object store once and pass its ref to many tasks:
# each task receives the value, not the ref.
numbers = ray.put(list(range(1000)))


@ray.remote
def total(values):
    return sum(values)


print("sum:", ray.get(total.remote(numbers)))

# ray.wait returns the refs that are ready, and those that are not, in input order.
refs = [nap.remote(0), nap.remote(2)]
ready, not_ready = ray.wait(refs, num_returns=1)
print(f"wait: {len(ready)} ready, {len(not_ready)} not ready")


# Several return values, and options chosen per call.
@ray.remote(num_returns=2)
def divmod_task(a, b):
    return divmod(a, b)


q, r = divmod_task.remote(17, 5)
print("divmod(17, 5):", ray.get(q), ray.get(r))
print("with 2 CPUs:", ray.get(square.options(num_cpus=2).remote(12)))


# A task's exception is raised by ray.get, and `except` on its own class catches it.
@ray.remote
def fails():
    raise ValueError("this task failed")


try:
    ray.get(fails.remote())
except ValueError as e:
    print("caught:", type(e).__name__, "-", str(e).strip().splitlines()[-1])

print("resources:", {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")})
ray.shutdown()
print("hello from zray: done")
