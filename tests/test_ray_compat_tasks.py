"""Ray semantics of small task/actor API corners (issue 10, compat-tasks).

Each test says what Ray does and what we decided where Ray leaves room.
"""

from __future__ import annotations

import pytest
from backend import ray


# ---------------------------------------------------------------- signature at .remote()
def test_task_signature_checked_at_remote(ray_start):
    """Ray binds the arguments to inspect.signature(fn) in .remote(): a misfit call raises
    TypeError in the caller at once, before anything is submitted."""

    @ray.remote
    def f1():
        return 1

    @ray.remote
    def f2(x, y=0, *, z, **kw):
        return x, y, z, kw

    @ray.remote
    def f3(a, /, b, *rest):
        return a, b, rest

    for call in (lambda: f1.remote(3), lambda: f1.remote(x=3),
                 lambda: f2.remote(1, z=1, x=2), lambda: f2.remote(1, 2),
                 lambda: f2.remote(1, 2, 3, z=0), lambda: f3.remote(1),
                 lambda: f3.remote(a=1, b=2), lambda: f1.options(num_cpus=1).remote(1)):
        with pytest.raises(TypeError):
            call()
    assert ray.get(f1.remote()) == 1
    assert ray.get(f2.remote(1, z=3, w=4)) == (1, 0, 3, {"w": 4})
    assert ray.get(f3.remote(1, b=2)) == (1, 2, ())
    assert ray.get(f3.remote(1, 2, 3, 4)) == (1, 2, (3, 4))


def test_actor_signature_checked_at_remote(ray_start):
    """Ray checks actor constructor and method calls the same way; a class without
    __init__ takes no constructor arguments; static/class methods have no self to drop."""

    @ray.remote
    class A:
        def __init__(self, x, y=1):
            self.v = x + y

        def get(self, k, *, scale=1):
            return self.v * k * scale

        @staticmethod
        def st(a, b):
            return a + b

        @classmethod
        def cm(cls, a):
            return a

    @ray.remote
    class Empty:
        pass

    with pytest.raises(TypeError):
        A.remote()
    with pytest.raises(TypeError):
        A.remote(0, 1, 2)
    with pytest.raises(TypeError):
        A.remote(0, x=1)
    with pytest.raises(TypeError):
        Empty.remote(1)
    a = A.remote(1, y=2)
    with pytest.raises(TypeError):
        a.get.remote()
    with pytest.raises(TypeError):
        a.get.remote(1, 2)
    with pytest.raises(TypeError):
        a.get.remote(1, bad=2)
    with pytest.raises(TypeError):
        a.st.remote(1)
    with pytest.raises(TypeError):
        a.cm.remote(1, 2)
    assert ray.get(a.get.remote(2, scale=10)) == 60
    assert ray.get(a.st.remote(1, 2)) == 3
    assert ray.get(a.cm.remote(5)) == 5
    assert ray.get(Empty.remote().__ray_ready__.remote())


# ---------------------------------------------------------------- small API names
def test_small_api_names(ray_start):
    """Names Ray's public API has: ray.ObjectID (the legacy alias of ObjectRef), ray.types,
    ray.util.get_node_ip_address, ObjectRef.from_random, two exception classes."""
    import importlib

    assert ray.ObjectID is ray.ObjectRef
    assert ray.ObjectRef[int].__origin__ is ray.ObjectRef  # generic, for annotations
    assert isinstance(ray.put(1), ray.ObjectID)
    types = importlib.import_module(ray.__name__ + ".types")
    assert types.ObjectRef is ray.ObjectRef
    assert ray.types.ObjectRef is ray.ObjectRef
    ip = ray.util.get_node_ip_address()
    assert ip == ray.nodes()[0]["NodeManagerAddress"]
    a, b = ray.ObjectRef.from_random(), ray.ObjectRef.from_random()
    assert isinstance(a, ray.ObjectRef) and a != b and len(a.binary()) == len(ray.put(1).binary())
    assert issubclass(ray.exceptions.ObjectRefStreamEndOfStreamError, ray.exceptions.RayError)
    actor_mod = importlib.import_module(ray.__name__ + ".actor")
    assert issubclass(actor_mod.ActorClassInheritanceException, TypeError)
    assert actor_mod.ActorClassInheritanceException is \
        ray.exceptions.ActorClassInheritanceException


def test_list_named_actors_all_namespaces(ray_start):
    """list_named_actors(all_namespaces=True) gives {"name", "namespace"} dicts (Ray)."""

    @ray.remote(num_cpus=0)
    class A:
        pass

    a = A.options(name="lna-x", namespace="lna-ns").remote()
    b = A.options(name="lna-y").remote()
    ray.get([a.__ray_ready__.remote(), b.__ray_ready__.remote()])
    names = ray.util.list_named_actors(all_namespaces=True)
    assert {"name": "lna-x", "namespace": "lna-ns"} in names
    ns = ray.get_runtime_context().namespace
    assert {"name": "lna-y", "namespace": ns} in names
    assert "lna-y" in ray.util.list_named_actors() and "lna-x" not in ray.util.list_named_actors()
    ray.kill(a)
    ray.kill(b)


# ---------------------------------------------------------------- num_returns
def test_num_returns_none_means_default(ray_start):
    """Ray treats num_returns=None in @remote/.options() as the default: 1 for a function,
    streaming for a generator function, the method's own default for an actor method."""

    @ray.remote(num_returns=None)
    def one():
        return 1

    @ray.remote(num_returns=2)
    def two():
        return 1, 2

    @ray.remote
    def gen():
        yield 1
        yield 2

    @ray.remote
    class A:
        @ray.method(num_returns=2)
        def pair(self):
            return 3, 4

        @ray.method(num_returns=None)
        def single(self):
            return 5

    assert ray.get(one.remote()) == 1
    assert ray.get(one.options(num_returns=None).remote()) == 1
    # None restores the decorator's default, also after another override.
    assert ray.get(two.options(num_returns=None).remote()) == [1, 2]
    assert ray.get(two.options(num_returns=1).options(num_returns=None).remote()) == [1, 2]
    assert [ray.get(r) for r in gen.options(num_returns=None).remote()] == [1, 2]
    a = A.remote()
    assert ray.get(a.pair.options(num_returns=None).remote()) == [3, 4]
    assert ray.get(a.single.remote()) == 5


@pytest.mark.parametrize("use_actor", [False, True])
def test_static_generator_error_keeps_yielded_values(ray_start, use_actor):
    """A generator with a static num_returns that raises midway: Ray keeps the values it
    yielded before the error; the returns it never reached raise RayTaskError."""

    def body(n):
        for i in range(n - 2):
            yield [i]
        raise ValueError("midway")

    if use_actor:
        @ray.remote
        class G:
            def gen(self, n):
                yield from body(n)

        fn = G.remote().gen
    else:
        fn = ray.remote(max_retries=0)(body)
    r1, r2, r3, r4 = fn.options(num_returns=4).remote(4)
    assert ray.get(r1) == [0]
    assert ray.get(r2) == [1]
    for r in (r3, r4):
        with pytest.raises(ray.exceptions.RayTaskError) as ei:
            ray.get(r)
        assert isinstance(ei.value.cause, ValueError) and "midway" in str(ei.value)
    # Too many values is still an error for every return (Ray's docs).
    @ray.remote(num_returns=2)
    def too_many():
        yield from range(3)

    a, b = too_many.remote()
    for r in (a, b):
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(r)


def test_static_generator_error_retried_by_retry_exceptions(ray_start):
    """retry_exceptions=[ValueError] reads the error of a partial reply (not the yielded
    values before it) to decide on a retry."""

    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    c = Counter.remote()

    @ray.remote(num_returns=2, max_retries=2, retry_exceptions=[ValueError])
    def flaky(c):
        yield "first"
        if ray.get(c.inc.remote()) < 3:
            raise ValueError("again")
        yield "second"

    assert ray.get(list(flaky.remote(c))) == ["first", "second"]
    assert ray.get(c.inc.remote()) == 4


# ---------------------------------------------------------------- init / Cluster
def test_init_local_starts_a_new_cluster(ray_fresh, monkeypatch):
    """Ray: address="local" starts a new local cluster, even when RAY_ADDRESS names
    another one (here one that does not exist, so connecting would fail)."""
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("ZRAY_ADDRESS", "127.0.0.1:1")
    info = ray.init("local", num_cpus=1)
    assert ray.is_initialized() and info["address"] != "127.0.0.1:1"
    assert ray.get(ray.put(7)) == 7
    ray.shutdown()
    ray.init(address="local", num_cpus=1)
    assert ray.cluster_resources()["CPU"] == 1


def test_cluster_address_before_head_is_none():
    """Ray's Cluster().address is None until the head node is added."""
    import importlib

    cluster_utils = importlib.import_module(ray.__name__ + ".cluster_utils")
    c = cluster_utils.Cluster(shutdown_at_exit=False)
    try:
        assert c.address is None
    finally:
        c.shutdown()


# ---------------------------------------------------------------- cancel
def test_cancel_borrowed_ref_goes_to_owner(ray_start):
    """Ray forwards ray.cancel() on a borrowed ref to the ref's owner, which cancels the
    task (CancelRemoteTask); the borrower's call returns at once without error."""
    import time

    @ray.remote
    def slow():
        time.sleep(120)
        return "finished"

    @ray.remote
    def canceller(refs):
        ray.cancel(refs[0])
        return "sent"

    ref = slow.remote()
    time.sleep(0.5)  # let it start (a queued task is cancelled too, either way works)
    assert ray.get(canceller.remote([ref]), timeout=60) == "sent"
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=60)


def test_is_canceled_in_keyboard_interrupt_of_a_task(ray_start):
    """Ray: a normal task interrupted by ray.cancel() sees is_canceled() True in its
    KeyboardInterrupt handler, and a value it then returns is its result."""

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self):
            self.waiting = 0

        async def wait(self):
            import asyncio

            self.waiting += 1
            await asyncio.sleep(120)

        def waiters(self):
            return self.waiting

    @ray.remote
    def task(gate):
        assert not ray.get_runtime_context().is_canceled()
        try:
            ray.get(gate.wait.remote())
        except KeyboardInterrupt:
            if ray.get_runtime_context().is_canceled():
                return "canceled_via_keyboard_interrupt"
            return "interrupted but not canceled"
        return "completed"

    import time

    gate = Gate.remote()
    ref = task.remote(gate)
    deadline = time.monotonic() + 60
    while ray.get(gate.waiters.remote()) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ray.cancel(ref)
    assert ray.get(ref, timeout=60) == "canceled_via_keyboard_interrupt"


# ---------------------------------------------------------------- task errors
class _Unpicklable(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        import threading

        self.lock = threading.Lock()


class _Mine(Exception):
    pass


class _Final(Exception):
    def __init_subclass__(cls, **kw):
        raise TypeError("Cannot subclass this little exception class.")


def test_unpicklable_cause_becomes_ray_error(ray_start):
    """Ray: a cause that cannot be pickled is replaced by a RayError saying so (never
    None); the traceback text still names the original exception."""

    @ray.remote
    def f():
        raise _Unpicklable()

    with pytest.raises(ray.exceptions.RayTaskError) as ei:
        ray.get(f.remote())
    e = ei.value
    assert type(e.cause) is ray.exceptions.RayError
    assert "_Unpicklable" in str(e.cause) and "isn't serializable" in str(e.cause)
    assert "_Unpicklable" in str(e) and "holds a lock" in str(e)


def test_dual_exception_survives_pickling(ray_start):
    """The error ray.get raises is both RayTaskError and the user's class; pickled and
    loaded again (plain pickle, as a user would) it still is both."""
    import pickle

    @ray.remote
    def f():
        raise _Mine("mine")

    with pytest.raises(_Mine) as ei:
        ray.get(f.remote())
    e2 = pickle.loads(pickle.dumps(ei.value))
    assert isinstance(e2, _Mine) and isinstance(e2, ray.exceptions.RayTaskError)
    assert isinstance(e2.cause, _Mine) and str(e2.cause) == "mine"
    assert str(e2) == str(ei.value)


def test_warning_when_user_exception_cannot_be_subclassed(ray_start, caplog):
    """Ray warns (and raises a plain RayTaskError whose .cause is the user's exception)
    when the user's exception class refuses to be subclassed."""
    import logging

    @ray.remote
    def f():
        raise _Final("a final exception")

    with caplog.at_level(logging.WARNING):
        with pytest.raises(ray.exceptions.RayTaskError) as ei:
            ray.get(f.remote())
    assert not isinstance(ei.value, _Final)
    assert isinstance(ei.value.cause, _Final)
    assert "can't be subclassed" in caplog.text and "_Final" in caplog.text


# ---------------------------------------------------------------- process titles
def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def _eventually(fn, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_process_title_names_the_running_task(ray_start):
    """Ray titles a worker ray::<task> while it runs and ray::IDLE after; an actor
    ray::<Class>.<method> during a call (or the call's options(name=...)) and ray::<Class>
    between calls. zray uses Ray's exact titles (Ray's tests compare them)."""
    import os

    @ray.remote
    def busy_title():
        import setproctitle

        return os.getpid(), setproctitle.getproctitle()

    @ray.remote
    class Titled:
        def where(self):
            import setproctitle

            return os.getpid(), setproctitle.getproctitle()

    pid, title = ray.get(busy_title.remote())
    assert title == "ray::busy_title"
    _eventually(lambda: _cmdline(pid).startswith("ray::IDLE"))
    a = Titled.remote()
    pid, title = ray.get(a.where.remote())
    assert title == "ray::Titled.where"
    assert ray.get(a.where.options(name="custom").remote())[1] == "ray::custom"
    _eventually(lambda: _cmdline(pid) == "ray::Titled")


def test_underscore_remote_spelling(ray_start):
    """Ray's f._remote(args=[...], kwargs={...}, **options), also on actor classes and
    methods (used by Ray's own tests and some libraries)."""

    @ray.remote
    def f(n, k=0):
        return list(range(n + k))

    @ray.remote
    class A:
        def __init__(self, x, y=0):
            self.x, self.y = x, y

        def method(self, a, b=0):
            return self.x, self.y, a, b

    assert f._remote([0], num_returns=0) is None
    assert ray.get(f._remote(args=[1], kwargs={"k": 1})) == [0, 1]
    assert ray.get(f._remote(args=[2], num_returns=2)) == [0, 1]
    a = A._remote(args=[0], kwargs={"y": 1}, num_cpus=0)
    refs = a.method._remote(args=["t"], kwargs={"b": 2}, num_returns=4)
    assert ray.get(refs) == [0, 1, "t", 2]
    with pytest.raises(TypeError):
        f._remote(args=[1, 2, 3])


def test_option_errors_use_rays_messages():
    """Ray's option checks and messages (TypeError for a wrong type, ValueError for a wrong
    value, 1/10000 resource precision); None means the default for these keywords."""
    import re

    def f():
        return 1

    class A:
        pass

    t1 = "The type of keyword '{}' " + f"must be {(int, type(None))}, but received type {float}"
    for k in ("max_retries", "max_calls"):
        with pytest.raises(TypeError, match=re.escape(t1.format(k))):
            ray.remote(**{k: 0.5})(f)
    for k in ("max_restarts", "max_task_retries"):
        with pytest.raises(TypeError, match=re.escape(t1.format(k))):
            ray.remote(**{k: 0.5})(A)
    with pytest.raises(TypeError, match=re.escape(
            f"The type of keyword 'num_returns' must be {(int, str, type(None))}")):
        ray.remote(num_returns=0.5)(f)
    with pytest.raises(ValueError, match="'max_calls' only accepts None, 0 or a positive"):
        ray.remote(max_calls=-1)(f)
    with pytest.raises(ValueError, match="'num_returns' only accepts None, a non-negative"):
        ray.remote(num_returns=-1)(f)
    t2 = "The keyword '{}' only accepts None, 0, -1 or a positive integer"
    with pytest.raises(ValueError, match=t2.format("max_retries")):
        ray.remote(max_retries=-2)(f)
    for k in ("max_restarts", "max_task_retries"):
        with pytest.raises(ValueError, match=t2.format(k)):
            ray.remote(**{k: -2})(A)
    for kw, name in (({"num_gpus": 1e-7}, "num_gpus"),
                     ({"resources": {"custom_resource": 1e-7}}, "custom_resource")):
        with pytest.raises(ValueError, match=f"precision of the fractional quantity of "
                                             f"resource {name} cannot go beyond 0.0001"):
            ray.remote(**kw)(f)
    ray.remote(max_retries=None, max_calls=None, num_returns=None)(f)
    ray.remote(max_restarts=None, max_task_retries=None)(A)


def test_system_config_refused_when_connecting(ray_fresh):
    """Ray: _system_config belongs to the cluster's start; giving it when connecting to an
    existing cluster is a ValueError (before any attempt to connect)."""
    with pytest.raises(ValueError, match="_system_config"):
        ray.init(address="127.0.0.1:1", _system_config={"object_timeout_milliseconds": 200})
    assert not ray.is_initialized()


def test_oversized_function_refused(ray_start):
    """Ray refuses a function or actor class whose pickle is over 100 MB (it captured a
    large object by accident), with a ValueError naming it, at .remote()."""
    bar = bytearray(800 * 1024 * 125)

    @ray.remote
    class Big:
        def foo(self):
            return len(bar)

    @ray.remote
    def big():
        return len(bar)

    with pytest.raises(ValueError, match="The remote function .*big is too large"):
        big.remote()
    with pytest.raises(ValueError, match="The actor Big is too large"):
        Big.remote()


def test_signature_travels_with_the_handle(ray_start):
    """A handle from get_actor() or passed to a task checks calls the same way (the
    signatures travel in the handle, as Ray's do)."""

    @ray.remote(num_cpus=0)
    class S:
        def m(self, x, *, k=1):
            return x * k

    a = S.options(name="compat-sigs").remote()
    h = ray.get_actor("compat-sigs")
    assert ray.get(h.m.remote(2, k=3)) == 6
    with pytest.raises(TypeError):
        h.m.remote(1, 2)

    @ray.remote
    def use(handle):
        try:
            handle.m.remote()
        except TypeError:
            return "TypeError"
        return "no error"

    assert ray.get(use.remote(h)) == "TypeError"
    ray.kill(a)
