"""Actors on one node: creation, calls in order, handles passed around, named actors,
options, per-method num_returns and streaming methods, errors, kill and terminate.

Runs against zray by default, against Ray with ZRAY_TEST_BACKEND=ray (backend.py).
"""

from __future__ import annotations

import gc
import os
import time

import pytest
from backend import IS_RAY, exceptions, pid_alive, ray, run_example, wait_until

pytestmark = pytest.mark.timeout(120)


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def slow_append(self, log, x, delay, started=None):
        if started:
            open(started, "w").close()
        time.sleep(delay)
        log.append(x)
        return list(log)


@ray.remote
class Log:
    def __init__(self):
        self.items = []

    def add(self, x, delay=0.0):
        if delay:
            time.sleep(delay)
        self.items.append(x)

    def items_(self):
        return list(self.items)


def test_state_and_order(ray_start):
    c = Counter.remote(10)
    assert ray.get(c.inc.remote()) == 11
    refs = [c.inc.remote() for _ in range(200)]
    assert ray.get(refs) == list(range(12, 212))
    assert ray.get(c.get.remote()) == 211


def test_calls_run_in_submission_order_even_when_slow_first(ray_start):
    lg = Log.remote()
    lg.add.remote(0, 0.3)  # a slow first call does not let later ones overtake it
    for i in range(1, 20):
        lg.add.remote(i)
    assert ray.get(lg.items_.remote()) == list(range(20))


def test_actor_keeps_one_process(ray_start):
    c = Counter.remote()
    pids = set(ray.get([c.pid.remote() for _ in range(20)]))
    assert len(pids) == 1 and os.getpid() not in pids


def test_kwargs_and_objectref_args(ray_start):
    c = Counter.remote(start=5)
    assert ray.get(c.inc.remote(k=2)) == 7
    ref = ray.put(3)
    assert ray.get(c.inc.remote(ref)) == 10  # a top-level ref is resolved
    assert ray.get(c.inc.remote(k=ref)) == 13

    @ray.remote
    def slow(x):
        time.sleep(0.3)
        return x

    # A pending ref: the call waits for it, and later calls keep their order.
    r1 = c.inc.remote(slow.remote(100))
    r2 = c.get.remote()
    assert ray.get([r1, r2]) == [113, 113]


def test_large_args_and_results(ray_start):
    np = pytest.importorskip("numpy")

    @ray.remote
    class Holder:
        def __init__(self, arr):
            self.arr = arr

        def total(self):
            return float(self.arr.sum())

        def double(self, x):
            return x * 2

    a = np.arange(1_000_000, dtype=np.float64)
    h = Holder.remote(a)
    assert ray.get(h.total.remote()) == float(a.sum())
    out = ray.get(h.double.remote(a))
    assert out.shape == a.shape and out[-1] == a[-1] * 2


def test_handle_passed_to_task_and_actor(ray_start):
    c = Counter.remote()

    @ray.remote
    def bump(counter, n):
        return ray.get([counter.inc.remote() for _ in range(n)])[-1]

    assert ray.get(bump.remote(c, 5)) == 5

    @ray.remote
    class Caller:
        def __init__(self, counter):
            self.counter = counter

        def call(self, n):
            for _ in range(n):
                self.counter.inc.remote()
            return ray.get(self.counter.get.remote())

    caller = Caller.remote(c)
    assert ray.get(caller.call.remote(10)) == 15
    # Handles inside containers too.
    assert ray.get(bump.remote([c][0], 1)) == 16


def test_actor_created_in_task_returned_to_driver(ray_start):
    @ray.remote
    def make():
        a = Counter.remote(100)
        ray.get(a.inc.remote())
        return a

    a = ray.get(make.remote())
    assert ray.get(a.inc.remote()) == 102


def test_method_num_returns(ray_start):
    @ray.remote
    class M:
        @ray.method(num_returns=2)
        def two(self):
            return 1, 2

        @ray.method(num_returns=0)
        def nothing(self):
            return None

        def one(self):
            return (1, 2)

    m = M.remote()
    a, b = m.two.remote()
    assert ray.get([a, b]) == [1, 2]
    assert m.nothing.remote() is None
    assert ray.get(m.one.remote()) == (1, 2)
    r1, r2 = m.one.options(num_returns=2).remote()
    assert ray.get([r1, r2]) == [1, 2]


def test_streaming_generator_method(ray_start):
    @ray.remote
    class G:
        def gen(self, n):
            for i in range(n):
                yield i * 10

        def gen_fail(self):
            yield 1
            raise ValueError("stream broke")

    g = G.remote()
    gen = g.gen.remote(5)
    assert [ray.get(r) for r in gen] == [0, 10, 20, 30, 40]
    it = g.gen_fail.remote()
    assert ray.get(next(it)) == 1
    with pytest.raises(ValueError, match="stream broke"):
        ray.get(next(it))


def test_method_exception_keeps_actor_alive(ray_start):
    @ray.remote
    class E:
        def __init__(self):
            self.n = 0

        def boom(self):
            self.n += 1
            raise KeyError("nope")

        def count(self):
            return self.n

    e = E.remote()
    with pytest.raises(KeyError):
        ray.get(e.boom.remote())
    with pytest.raises(exceptions.RayTaskError) as info:
        ray.get(e.boom.remote())
    assert "nope" in str(info.value)
    assert ray.get(e.count.remote()) == 2


def test_exception_in_init(ray_start):
    @ray.remote
    class Bad:
        def __init__(self):
            raise ZeroDivisionError("bad init")

        def f(self):
            return 1

    b = Bad.remote()
    for _ in range(2):
        with pytest.raises(exceptions.ActorDiedError) as info:
            ray.get(b.f.remote())
        assert isinstance(info.value, exceptions.RayActorError)
        assert "bad init" in str(info.value)
        assert "ZeroDivisionError" in str(info.value)


def test_direct_instantiation_and_bad_options(ray_start):
    with pytest.raises(TypeError, match=r"Counter.remote\(\)"):
        Counter()
    with pytest.raises(ValueError, match="foo"):
        Counter.options(foo=1)
    with pytest.raises(ValueError, match="max_calls"):
        ray.remote(max_calls=1)(type("X", (), {}))
    c = Counter.remote()
    with pytest.raises(AttributeError, match="nosuch"):
        _ = c.nosuch
    with pytest.raises(TypeError):
        c.inc()


def test_named_actors(ray_start):
    a = Counter.options(name="counter-a").remote(1)
    b = ray.get_actor("counter-a")
    assert ray.get(b.inc.remote()) == 2
    assert ray.get(a.get.remote()) == 2
    with pytest.raises(ValueError, match="counter-a"):
        Counter.options(name="counter-a").remote()
    same = Counter.options(name="counter-a", get_if_exists=True).remote(99)
    assert ray.get(same.get.remote()) == 2
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor")
    # Namespaces keep names apart.
    other = Counter.options(name="counter-a", namespace="elsewhere").remote(50)
    assert ray.get(ray.get_actor("counter-a", namespace="elsewhere").get.remote()) == 50
    ray.kill(other)
    ray.kill(a)
    # The name is freed at death.
    wait_until(lambda: _lookup_fails("counter-a"), 10)
    with pytest.raises(ValueError):
        ray.get_actor("counter-a")
    c = Counter.options(name="counter-a").remote(7)
    assert ray.get(ray.get_actor("counter-a").get.remote()) == 7
    ray.kill(c)


def _lookup_fails(name):
    try:
        ray.get_actor(name)
        return False
    except ValueError:
        return True


def test_get_actor_from_task(ray_start):
    keep = Counter.options(name="shared-counter").remote(40)  # noqa: F841 (in scope)

    @ray.remote
    def use():
        return ray.get(ray.get_actor("shared-counter").inc.remote())

    assert ray.get(use.remote()) == 41
    ray.kill(ray.get_actor("shared-counter"))


def test_kill(ray_start):
    c = Counter.remote()
    ray.get(c.inc.remote())
    ray.kill(c)
    with pytest.raises(exceptions.RayActorError) as info:
        ray.get(c.inc.remote())
    assert isinstance(info.value, exceptions.ActorDiedError)
    assert "kill" in str(info.value)
    with pytest.raises(ValueError):
        ray.kill("not an actor")


def test_kill_interrupts_running_call(ray_start, tmp_path):
    c = Counter.remote()
    ray.get(c.get.remote())
    started = tmp_path / "started"
    ref = c.slow_append.remote([], 1, 30, str(started))
    assert wait_until(started.exists, 30)
    ray.kill(c)
    with pytest.raises(exceptions.RayActorError):  # long before the 30 s call would end
        ray.get(ref, timeout=20)


def test_terminate_after_queued_calls(ray_start):
    lg = Log.remote()
    refs = [lg.add.remote(i, 0.05) for i in range(5)]
    last = lg.items_.remote()
    term = lg.__ray_terminate__.remote()
    ray.get(refs)
    assert ray.get(last) == list(range(5))
    with pytest.raises(exceptions.RayActorError):
        ray.get(term)
    with pytest.raises(exceptions.ActorDiedError):
        ray.get(lg.items_.remote())


def test_exit_actor(ray_start):
    @ray.remote
    class Quitter:
        def quit(self):
            ray.actor.exit_actor()

        def ping(self):
            return "pong"

    q = Quitter.remote()
    assert ray.get(q.ping.remote()) == "pong"
    with pytest.raises(exceptions.RayActorError):
        ray.get(q.quit.remote())
    with pytest.raises(exceptions.RayActorError):
        ray.get(q.ping.remote())


def test_runtime_context(ray_start):
    @ray.remote
    class Ctx:
        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.was_current_actor_reconstructed

    a = Ctx.remote()
    aid, restarted = ray.get(a.ids.remote())
    assert aid == a._actor_id.hex()
    assert restarted is False
    assert ray.get_runtime_context().get_actor_id() is None


def test_out_of_scope_actor_ends(ray_start):
    c = Counter.remote()
    pid = ray.get(c.pid.remote())
    del c
    gc.collect()
    assert wait_until(lambda: not pid_alive(pid), 15), "the actor outlived its last handle"


def test_temporary_handle_still_runs_its_call(ray_start):
    assert ray.get(Counter.remote(3).inc.remote()) == 4


def test_default_actors_hold_no_cpu(ray_start):
    actors = [Counter.remote() for _ in range(8)]  # more than the 4 CPUs
    assert ray.get([a.inc.remote() for a in actors]) == [1] * 8
    held = Counter.options(num_cpus=1).remote()
    ray.get(held.inc.remote())
    assert wait_until(lambda: ray.available_resources().get("CPU") == 3.0, 10)
    ray.kill(held)
    assert wait_until(lambda: ray.available_resources().get("CPU") == 4.0, 10)
    for a in actors:
        ray.kill(a)


def test_custom_resource_unsatisfiable_actor_pending(ray_start):
    a = Counter.options(resources={"nonexistent": 1}).remote()
    ref = a.inc.remote()
    ready, _ = ray.wait([ref], timeout=1.0)
    assert ready == []
    ray.kill(a)
    with pytest.raises(exceptions.RayActorError):
        ray.get(ref, timeout=20)


def test_max_pending_calls(ray_start):
    if IS_RAY:
        pytest.skip("Ray checks this limit per caller the same way; exact timing differs")
    c = Counter.options(max_pending_calls=2).remote()
    ray.get(c.get.remote())
    r1 = c.slow_append.remote([], 1, 0.5)
    r2 = c.get.remote()
    with pytest.raises(exceptions.PendingCallsLimitExceeded):
        c.get.remote()
    ray.get([r1, r2])


def test_list_named_actors(ray_start):
    a = Counter.options(name="listed-1").remote()
    b = Counter.options(name="listed-2", namespace="another").remote()
    ray.get([a.get.remote(), b.get.remote()])
    names = ray.util.list_named_actors()
    assert "listed-1" in names and "listed-2" not in names
    everywhere = ray.util.list_named_actors(all_namespaces=True)
    assert {"name": "listed-2", "namespace": "another"} in everywhere
    ray.kill(a)
    ray.kill(b)


def test_gpu_actor_and_env_vars(ray_fresh):
    ray_fresh(num_cpus=2, num_gpus=2)

    @ray.remote(num_gpus=1, runtime_env={"env_vars": {"ZRAY_ACTOR_TEST": "yes"}})
    class G:
        def info(self):
            return (ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                    os.environ.get("ZRAY_ACTOR_TEST"))

    a, b = G.remote(), G.remote()
    (ga, ca, ea), (gb, cb, eb) = ray.get([a.info.remote(), b.info.remote()])
    assert len(ga) == 1 and len(gb) == 1 and set(map(int, ga + gb)) == {0, 1}
    assert ca == str(ga[0]) and cb == str(gb[0])
    assert ea == eb == "yes"
    assert wait_until(lambda: ray.available_resources().get("GPU", 0) == 0, 10)


def test_actors_example(tmp_path):
    proc = run_example("actors.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if not x.startswith("(")]
    assert lines == ["[11, 12, 13]", "13 26", "113", "1", str(list(range(10))), "ok",
                     "the call failed with the actor's process", "restarted", "killed"]
