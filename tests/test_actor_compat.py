"""Ray's actor semantics that Ray's own test suite checks (issue 10): placement vs. held
resources of a default actor, the actor class showing the user class, graceful shutdown
hooks, why an actor died, and which handles keep an actor alive.

Runs against zray by default, against Ray with ZRAY_TEST_BACKEND=ray (backend.py).
"""

from __future__ import annotations

import os
import time

import pytest
from backend import IS_RAY, ray, wait_until

pytestmark = pytest.mark.timeout(180)


@ray.remote
class Plain:
    def ping(self):
        return "pong"


@ray.remote(num_cpus=1)
class OneCpu:
    def ping(self):
        return "pong"


@ray.remote
def plain_task():
    return 7


# --- resources: 1 CPU to place a default actor, 0 to keep it ------------------------------
def test_default_actors_hold_no_cpu(ray_fresh):
    """Ray: an actor without num_cpus needs 1 CPU to be scheduled and holds 0 once created,
    so any number of them start on a 1-CPU node, created at once (not one after the other),
    and a task still finds the CPU free."""
    ray_fresh(num_cpus=1)
    actors = [Plain.remote() for _ in range(5)]
    assert ray.get([a.ping.remote() for a in actors], timeout=90) == ["pong"] * 5
    time.sleep(1.5)  # a report that would show a held CPU has come by now
    assert ray.available_resources().get("CPU") == 1.0
    assert ray.get(plain_task.remote(), timeout=60) == 7


def test_explicit_num_cpus_actor_holds_its_cpus(ray_fresh):
    """Ray: an explicit num_cpus is held for the actor's lifetime: a second 1-CPU actor
    on a 1-CPU node stays pending until the first is gone."""
    ray_fresh(num_cpus=1)
    a = OneCpu.remote()
    assert ray.get(a.ping.remote(), timeout=60) == "pong"
    # The view of available resources follows the raylets' reports: wait for it.
    assert wait_until(lambda: ray.available_resources().get("CPU", 0.0) == 0.0, timeout=30)
    b = OneCpu.remote()
    ready, _ = ray.wait([b.ping.remote()], timeout=3)
    assert not ready
    ray.kill(a)
    assert ray.get(b.ping.remote(), timeout=60) == "pong"


@pytest.mark.skipif(IS_RAY, reason="zray's raylet scheduler, driven directly")
def test_scheduler_grant_takes_only_the_hold():
    """Three actor leases queued while one worker starts: each grant takes only its hold,
    so the pass goes on to the next request (asks for its worker) instead of stalling."""
    from zray.raylet import scheduler as sch

    s = sch.NodeScheduler({"CPU": 1})
    s.node_id = b"n"
    s.handle(sch.WorkersStarting(1))
    for i in range(3):
        s.handle(sch.LeaseRequested(sch.LeaseRequest(i, "gcs", {"CPU": 1.0}, hold={})))
    acts = s.handle(sch.WorkerRegistered(b"w1"))
    assert [type(a) for a in acts] == [sch.Grant, sch.StartWorkers]
    acts = s.handle(sch.WorkerRegistered(b"w2"))
    assert [type(a) for a in acts] == [sch.Grant, sch.StartWorkers]
    acts = s.handle(sch.WorkerRegistered(b"w3"))
    assert [type(a) for a in acts] == [sch.Grant]
    assert s.available() == {"CPU": 1.0}


# --- the actor class shows the user's class ----------------------------------------------
class _Grand:
    GRAND = 2

    @staticmethod
    def grand_static():
        return "gs"


@ray.remote
class Shown(_Grand):
    X = 3

    def __init__(self, x=0):
        self.x = x
        # An instance attribute named like a method: callers still reach the method.
        self.step = "an attribute"

    @classmethod
    def make(cls, x):
        return cls(x)

    @classmethod
    def cm(cls):
        return Shown.X + Shown.GRAND

    @staticmethod
    def sm():
        return "sm"

    def step(self):
        return "method"

    def from_inside(self):
        # Inside the actor the name is the actor class again (pickled with the class).
        return Shown.X, Shown.GRAND, Shown.cm(), Shown.sm(), Shown.grand_static()

    def get_x(self):
        return self.x


def test_actor_class_shows_user_class(ray_start):
    """Ray's ActorClass derives from the user's class: class attributes (inherited too),
    classmethods (bound to the user's class: a factory makes a plain local instance) and
    staticmethods are reachable on it, in the driver and inside the actor."""
    assert Shown.X == 3 and Shown.GRAND == 2
    assert Shown.cm() == 5 and Shown.sm() == "sm" and Shown.grand_static() == "gs"
    local = Shown.make(4)
    assert local.get_x() == 4 and not isinstance(local, ray.actor.ActorHandle)
    a = Shown.remote(1)
    assert ray.get(a.from_inside.remote(), timeout=60) == (3, 2, 5, "sm", "gs")
    assert ray.get(a.step.remote(), timeout=60) == "method"
    with pytest.raises(AttributeError):
        Shown.no_such_attribute  # noqa: B018


def test_actor_class_dir():
    public = {n for n in dir(Shown) if not n.startswith("_")}
    assert {"remote", "options", "bind", "step", "cm", "sm", "X", "GRAND"} <= public


def test_actor_class_cannot_be_subclassed():
    with pytest.raises(ray.exceptions.ActorClassInheritanceException,
                       match="Inheriting from actor classes is not currently supported"):
        class Derived(Shown):  # noqa: F841
            pass
    assert issubclass(ray.exceptions.ActorClassInheritanceException, TypeError)


def test_remote_with_empty_parentheses_is_refused():
    """Ray: @ray.remote() must be bare or carry keyword arguments."""
    with pytest.raises(Exception):  # noqa: B017 - Ray raises AssertionError, zray TypeError
        @ray.remote()
        class A:  # noqa: F841
            pass


# --- graceful shutdown: __ray_shutdown__ and atexit ----------------------------------------
@ray.remote
class Hooks:
    def __init__(self, path):
        import atexit

        self.path = path
        atexit.register(self._write, "atexit")

    def _write(self, what):
        with open(self.path, "a") as f:
            f.write(what + "\n")

    def __ray_shutdown__(self):
        self._write("shutdown")

    def ready(self):
        return True

    def leave(self):
        ray.actor.exit_actor()


def _lines(path, want, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                got = f.read().split()
        except FileNotFoundError:
            got = []
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["exit_actor", "__ray_terminate__", "out_of_scope", "kill"])
def test_graceful_exit_runs_shutdown_hooks(ray_start, tmp_path, how):
    """Ray: __ray_shutdown__ then the atexit handlers run when an actor ends gracefully
    (exit_actor, __ray_terminate__, all handles gone); ray.kill runs neither."""
    path = str(tmp_path / "hooks.txt")
    a = Hooks.remote(path)
    assert ray.get(a.ready.remote(), timeout=60)
    if how == "exit_actor":
        ray.wait([a.leave.remote()], timeout=60)
    elif how == "__ray_terminate__":
        ray.wait([a.__ray_terminate__.remote()], timeout=60)
    elif how == "out_of_scope":
        del a
    else:
        ray.kill(a)
    if how == "kill":
        assert _lines(path, [], timeout=3) == []
    else:
        assert _lines(path, ["shutdown", "atexit"]) == ["shutdown", "atexit"]


# --- why an actor died -------------------------------------------------------------------
@ray.remote
class Mortal:
    def ping(self):
        return os.getpid()

    def sleep(self, s):
        time.sleep(s)

    def leave(self):
        ray.actor.exit_actor()

    def crash(self):
        os._exit(1)

    def make_child(self):
        self.child = Mortal.remote()
        ray.get(self.child.ping.remote())
        return [self.child]


def _death(call):
    with pytest.raises(ray.exceptions.RayActorError) as info:
        ray.get(call, timeout=60)
    assert isinstance(info.value, ray.exceptions.ActorDiedError)
    return str(info.value)


def test_death_says_killed_by_ray_kill(ray_start):
    a = Mortal.remote()
    ray.get(a.ping.remote(), timeout=60)
    running = a.sleep.remote(30)
    time.sleep(0.3)
    ray.kill(a)
    # Ray's own tests look for exactly this sentence.
    assert "The actor is dead because it was killed by `ray.kill`" in _death(running)
    assert "killed by `ray.kill`" in _death(a.ping.remote())


def test_death_says_exit_actor_and_terminate(ray_start):
    a = Mortal.remote()
    ray.get(a.ping.remote(), timeout=60)
    ray.wait([a.leave.remote()], timeout=60)
    assert "exit_actor() was called" in _death(a.ping.remote())
    b = Mortal.remote()
    ray.get(b.ping.remote(), timeout=60)
    ray.wait([b.__ray_terminate__.remote()], timeout=60)
    assert "__ray_terminate__ was called" in _death(b.ping.remote())


def test_death_says_worker_died(ray_start):
    a = Mortal.remote()
    ray.get(a.ping.remote(), timeout=60)
    assert "worker process has died" in _death(a.crash.remote())
    assert "worker process has died" in _death(a.ping.remote())


def test_death_says_owner_died(ray_start):
    parent = Mortal.remote()
    [child] = ray.get(parent.make_child.remote(), timeout=60)
    ray.get(child.ping.remote(), timeout=60)
    ray.kill(parent)
    assert "owner has died" in _death(child.sleep.remote(60))


# --- weak handles: which handles keep an actor alive -----------------------------------
@ray.remote
class Holder:
    def hold(self, handles):
        self.handles = handles  # stored: a strong handle here would keep its actor alive

    def ping(self):
        return True


@ray.remote
class Selfish:
    def take(self, me):
        return me == ray.get_runtime_context().current_actor

    def give_self(self, holder):
        ray.get(holder.hold.remote([ray.get_runtime_context().current_actor]))

    def give_by_name(self, name, holder):
        ray.get(holder.hold.remote([ray.get_actor(name)]))

    def pid(self):
        return os.getpid()


def _pid_gone(pid, timeout=60.0):
    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return wait_until(gone, timeout=timeout)


def test_actor_given_its_own_handle_still_exits(ray_start):
    """Ray: an actor passed a handle to itself is not kept alive by it; it ends when its
    last handle outside goes (we decided: such a handle is weak in the actor, even if the
    actor stores it)."""
    a = Selfish.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    for _ in range(3):
        assert ray.get(a.take.remote(a), timeout=60) is True
    del a
    assert _pid_gone(pid)


def test_current_actor_handle_is_weak(ray_start):
    """get_runtime_context().current_actor, stored by another actor, does not keep the
    actor alive."""
    holder = Holder.remote()
    a = Selfish.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    ray.get(a.give_self.remote(holder), timeout=60)
    del a
    assert _pid_gone(pid)
    assert ray.get(holder.ping.remote(), timeout=60)


def test_get_actor_handles_are_weak(ray_start):
    """Ray: a handle from get_actor() is weak: after the creator's handle goes, a
    non-detached named actor ends although get_actor() handles were used, kept, and
    passed to another actor that stores them."""
    holder = Holder.remote()
    a = Selfish.options(name="weakly-named").remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    kept = []
    for _ in range(3):
        h = ray.get_actor("weakly-named")
        assert ray.get(h.pid.remote(), timeout=60) == pid
        kept.append(h)
    ray.get(holder.hold.remote(kept), timeout=60)
    other = Selfish.remote()
    ray.get(other.give_by_name.remote("weakly-named", holder), timeout=60)
    del a
    assert _pid_gone(pid)

    def removed():
        try:
            ray.get_actor("weakly-named")
        except ValueError:
            return True
        return False
    assert wait_until(removed, timeout=30)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(kept[0].pid.remote(), timeout=60)


def test_strong_handle_passed_elsewhere_keeps_actor(ray_start):
    """The counterpart: a handle from the creator, stored by another actor, still keeps
    the actor alive after the creator's own handle goes (zray counts it as escaped)."""
    holder = Holder.remote()
    a = Selfish.remote()
    pid = ray.get(a.pid.remote(), timeout=60)
    ray.get(holder.hold.remote([a]), timeout=60)
    del a
    assert not _pid_gone(pid, timeout=3)


def test_actor_handle_dir_lists_methods(ray_start):
    """Ray: dir(handle) is the actor's methods, __init__ and __ray_ready__/__ray_call__/
    __ray_terminate__ (what autocompletion shows); ActorClass.__ray_metadata__.class_name."""
    @ray.remote
    class Foo:
        def method_one(self) -> None:
            pass

    f = Foo.remote()
    assert set(dir(f)) == {"__init__", "method_one", "__ray_ready__", "__ray_call__",
                           "__ray_terminate__"}
    assert {n for n in dir(f.method_one) if not n.startswith("_")} == {"options", "remote",
                                                                       "bind"}
    assert {n for n in dir(Foo) if not n.startswith("_")} == {"method_one", "options",
                                                              "remote", "bind"}
    assert Foo.__ray_metadata__.class_name == "Foo"
