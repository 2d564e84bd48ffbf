"""Actors: stateful workers. Run: python examples/actors.py (works with `import ray` too)."""

import asyncio

import zray as ray

ray.init()


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, by=1):
        self.value += by
        return self.value

    @ray.method(num_returns=2)
    def value_and_double(self):
        return self.value, 2 * self.value


counter = Counter.remote(10)
print(ray.get([counter.increment.remote() for _ in range(3)]))  # [11, 12, 13]: in order
v, d = counter.value_and_double.remote()
print(ray.get(v), ray.get(d))  # 13 26


@ray.remote
def use(c):  # handles can be passed to tasks (and to other actors)
    return ray.get(c.increment.remote(100))


print(ray.get(use.remote(counter)))  # 113

# Named actors are found from anywhere in the job (while a handle to them is in scope,
# unless they are detached: lifetime="detached").
named = Counter.options(name="global_counter").remote()
print(ray.get(ray.get_actor("global_counter").increment.remote()))  # 1


@ray.remote
class AsyncWorker:  # async def methods: one event loop, calls interleave
    async def work(self, i):
        await asyncio.sleep(0.1)
        return i


w = AsyncWorker.remote()
print(ray.get([w.work.remote(i) for i in range(10)]))  # about 0.1 s in all


@ray.remote(max_restarts=1)
class Fragile:
    def crash(self):
        import os

        os._exit(1)

    def ping(self):
        return "restarted" if ray.get_runtime_context().was_current_actor_reconstructed else "ok"


f = Fragile.remote()
print(ray.get(f.ping.remote()))  # ok
try:
    ray.get(f.crash.remote())
except ray.exceptions.RayActorError:
    print("the call failed with the actor's process")
print(ray.get(f.ping.remote()))  # restarted

ray.kill(counter)
try:
    ray.get(counter.increment.remote())
except ray.exceptions.ActorDiedError:
    print("killed")
