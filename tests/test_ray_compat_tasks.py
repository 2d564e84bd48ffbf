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
