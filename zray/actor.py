"""@zray.remote on a class: ActorClass, ActorHandle, ActorMethod; get_actor, kill, method.

``Cls.remote(*args)`` registers the actor with the GCS, which places it on a
node and runs its constructor in a worker dedicated to it; the handle returns at
once. ``handle.method.remote(*args)`` sends the call straight to that worker
(actor_submitter.py); the GCS only says where the actor is.
"""

from __future__ import annotations

import hashlib
import inspect
import threading
import types
from typing import Any

from zray import actor_submitter, serialization, worker_state
from zray import options as opt
from zray.exceptions import ActorClassInheritanceException  # (Ray: ray.actor.*)
from zray.ids import ActorID
from zray.remote_function import check_export_size
from zray.signature import actor_specs
from zray.signature import check as _check_args

_METHOD_OPTIONS = {"num_returns", "max_task_retries", "retry_exceptions", "concurrency_group",
                   "name", "enable_task_events", "_generator_backpressure_num_objects"}
_SPECIAL = ("__ray_terminate__", "__ray_ready__", "__ray_call__")


def method(*args: Any, **kwargs: Any) -> Any:
    """Per-method options of an actor class, e.g. ``@zray.method(num_returns=2)``."""
    if args:
        raise ValueError("The @zray.method decorator must be called with keyword arguments, "
                         "e.g. @zray.method(num_returns=2)")
    for k in kwargs:
        if k not in _METHOD_OPTIONS:
            raise ValueError(f"Invalid option keyword {k} for actor methods. Valid ones are "
                             f"{sorted(_METHOD_OPTIONS)}.")
    _check_method_options(kwargs)

    def deco(fn: Any) -> Any:
        fn.__zray_method_options__ = dict(kwargs)
        return fn

    return deco


def _check_method_options(o: dict) -> None:
    if o.get("num_returns") is not None:  # None: the method's default (Ray)
        n = o["num_returns"]
        if n not in ("streaming", "dynamic") and (isinstance(n, bool) or not isinstance(n, int)
                                                  or n < 0):
            raise ValueError(f"num_returns must be a non-negative int or 'streaming', got {n!r}")
    if "max_task_retries" in o:
        opt.check_retries("max_task_retries", o["max_task_retries"])


def _int_at_least(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"The option {name!r} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"The option {name!r} must be >= {lo}, got {v}")


ACTOR_DEFAULTS: dict[str, Any] = {
    "num_cpus": None, "num_gpus": None, "resources": None, "name": None, "namespace": None,
    "lifetime": None, "get_if_exists": False, "max_restarts": 0, "max_task_retries": 0,
    "max_concurrency": None, "max_pending_calls": -1, "scheduling_strategy": None,
    "memory": None, "accelerator_type": None, "runtime_env": None, "concurrency_groups": None,
    "_metadata": None,
}


def _validate(o: dict) -> None:
    opt.validate(o, for_actor=True)
    if o.get("lifetime") not in (None, "detached", "non_detached"):
        raise ValueError("actor `lifetime` argument must be one of 'detached', 'non_detached' "
                         f"and 'None', got {o['lifetime']!r}")
    if "max_restarts" in o:
        opt.check_retries("max_restarts", o["max_restarts"])
    if "max_task_retries" in o:
        opt.check_retries("max_task_retries", o["max_task_retries"])
    if o.get("max_concurrency") is not None:
        mc = o["max_concurrency"]
        if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {mc!r}")
    if o.get("max_pending_calls") is not None:
        _int_at_least("max_pending_calls", o["max_pending_calls"], -1)
        if o["max_pending_calls"] == 0:
            raise ValueError("max_pending_calls must be -1 (no limit) or >= 1")
    if o.get("namespace") is not None and (not isinstance(o["namespace"], str)
                                           or not o["namespace"]):
        raise TypeError("namespace must be a non-empty str or None")
    if o.get("get_if_exists") and not o.get("name"):
        raise ValueError("The actor name must be specified to use `get_if_exists`.")
    if o.get("name") == "":
        raise ValueError("Actor name cannot be an empty string.")


def _resources(o: dict) -> tuple[dict, dict]:
    """(what placing the actor needs, what it holds while alive): Ray's rule is 1 CPU to
    place a default actor and 0 for its lifetime; an explicit num_cpus is held."""
    res = opt.task_resources({**o, "num_cpus": 1 if o.get("num_cpus") is None
                              else o["num_cpus"]})
    hold = opt.task_resources({**o, "num_cpus": o.get("num_cpus") or 0})
    return res, hold


def _methods(cls: type) -> tuple[dict, dict, bool]:
    """Method name -> num_returns, method name -> max_task_retries, and whether async."""
    nret: dict = {}
    retries: dict = {}
    is_async = False
    for name, fn in inspect.getmembers(cls, predicate=lambda m: inspect.isfunction(m)
                                       or inspect.ismethod(m)):
        raw = inspect.getattr_static(cls, name, fn)
        if isinstance(raw, (staticmethod, classmethod)):
            fn = raw.__func__
        mo = getattr(fn, "__zray_method_options__", None) or getattr(
            fn, "__ray_method_options__", None) or {}
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            is_async = True
        n = mo.get("num_returns")
        if n is None:
            n = "streaming" if (inspect.isgeneratorfunction(fn)
                                or inspect.isasyncgenfunction(fn)) else 1
        if n == "dynamic":
            n = "streaming"
        nret[name] = n
        if mo.get("max_task_retries") is not None:
            retries[name] = mo["max_task_retries"]
    return nret, retries, is_async


class ActorClass:
    """A class decorated with @zray.remote: create actors with ``.remote()``."""

    def __init__(self, cls: type, options: dict):
        _validate(options)
        self.__ray_actor_class__ = cls
        self._cls = cls
        self._default_options = {**ACTOR_DEFAULTS, **options}
        nret, retries, is_async = _methods(cls)
        self._meta: dict[str, Any] = {"cls": cls.__name__, "methods": nret, "retries": retries,
                      "async": is_async, "sigs": actor_specs(cls)}
        self._blob: bytes | None = None
        self._fn_id: bytes | None = None
        self.__name__ = cls.__name__
        # Ray's ActorClass.__ray_metadata__ (its tests read .class_name from it).
        self.__ray_metadata__ = types.SimpleNamespace(
            class_name=cls.__name__, module=cls.__module__, modified_class=cls,
            method_meta=types.SimpleNamespace(methods=nret))
        self.__qualname__ = getattr(cls, "__qualname__", cls.__name__)
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __getattr__(self, name: str) -> Any:
        # Ray's ActorClass derives from the user's class: its class attributes,
        # classmethods and staticmethods are reachable on it (classmethods bound to the
        # user's class, so a factory `cls(...)` makes a plain local instance).
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)
        try:
            return getattr(cls, name)
        except AttributeError:
            raise AttributeError(f"'ActorClass({cls.__name__})' object has no attribute "
                                 f"'{name}'") from None

    def __dir__(self) -> list:
        return sorted(set(super().__dir__()) | set(dir(self._cls)))

    def __mro_entries__(self, bases: tuple) -> tuple:
        # `class Derived(SomeActorClass)`: Ray refuses it with this TypeError subclass.
        raise ActorClassInheritanceException(
            f"Attempted to define a subclass of actor class '{self._cls.__name__}'. "
            "Inheriting from actor classes is not currently supported. You can instead "
            "inherit from a non-actor base class and make the derived class an actor class "
            "(with @zray.remote).")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Actors cannot be instantiated directly. Instead of "
                        f"'{self._cls.__name__}()', use '{self._cls.__name__}.remote()'.")

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        """Create an actor; returns its handle at once."""
        return self._submit(args, kwargs, self._default_options)

    def options(self, **actor_options: Any) -> _ActorOptions:
        """Override options for the actors created through the returned object."""
        _validate(actor_options)
        return _ActorOptions(self, {**self._default_options, **actor_options})

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by zray yet")

    def _export(self, cw: Any) -> bytes:
        if self._fn_id is None:
            blob = serialization.dumps_plain(self._cls)
            check_export_size("actor", self.__name__, blob)
            self._blob = blob
            self._fn_id = hashlib.sha1(self._blob).digest()
        cw.export_function(self._fn_id, self._blob)
        return self._fn_id

    def _remote(self, args: Any = None, kwargs: dict | None = None,
                **actor_options: Any) -> ActorHandle:
        """Ray's ``Cls._remote(args=[...], kwargs={...}, **options)`` spelling."""
        target = self.options(**actor_options) if actor_options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def _submit(self, args: tuple, kwargs: dict, o: dict) -> ActorHandle:
        _check_args(self._meta["sigs"].get("__init__"), f"{self.__name__}.__init__", args, kwargs)
        cw = worker_state.ensure_initialized()
        if o.get("get_if_exists") and o.get("name"):
            try:
                return get_actor(o["name"], o.get("namespace"))
            except ValueError:
                pass  # create it (the GCS settles a race between two creators)
        o = dict(o)
        o["_resources"], o["_hold"] = _resources(o)
        meta = dict(self._meta)
        meta["max_task_retries"] = o.get("max_task_retries") or 0
        meta["max_pending_calls"] = o.get("max_pending_calls") or -1
        meta["restartable"] = bool(o.get("max_restarts"))
        if o.get("max_concurrency") and not meta["async"]:
            meta["threaded"] = True
        fn_id = self._export(cw)
        aid, meta, owned = actor_submitter.submitter(cw).create(fn_id, meta, args, kwargs, o)
        return ActorHandle(aid, meta, owned=owned)

    def __repr__(self) -> str:
        return f"ActorClass({self._cls.__module__}.{self._cls.__name__})"


class _ActorOptions:
    def __init__(self, ac: ActorClass, o: dict):
        self._ac = ac
        self._o = o

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        return self._ac._submit(args, kwargs, self._o)

    def options(self, **actor_options: Any) -> _ActorOptions:
        _validate(actor_options)
        return _ActorOptions(self._ac, {**self._o, **actor_options})

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by zray yet")


def make_actor_class(cls: type, options: dict) -> ActorClass:
    if any(k == "max_calls" for k in options):
        raise ValueError("Invalid option keyword max_calls for actors. max_calls applies to "
                         "remote functions only.")
    return ActorClass(cls, options)


# The actor whose call's arguments this thread is encoding now (ActorHandle._call): a
# handle to that same actor, sent to it, is passed on weak (see ActorHandle).
_sending = threading.local()


class ActorHandle:
    """A handle to an actor: ``handle.method.remote(...)``; picklable, usable anywhere.

    A *weak* handle (Ray's: from ``get_actor()``, ``get_runtime_context().current_actor``,
    or one sent to the actor it names) works the same but does not keep the actor
    alive: only its owner's other handles do, so its owner ends it when they are gone.
    """

    def __init__(self, aid: bytes, meta: dict, owned: bool = False, weak: bool = False):
        self._zray_aid = aid
        self._zray_meta = meta
        self._zray_cw = None
        self._zray_weak = weak
        cw = worker_state.current()
        if cw is not None:
            self._zray_cw = cw
            if not weak:
                actor_submitter.submitter(cw).handle_made(aid, meta, owned)

    @property
    def _actor_id(self) -> ActorID:
        return ActorID(self._zray_aid)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_zray_"):
            raise AttributeError(name)
        methods = self._zray_meta.get("methods", {})
        if name in methods or name in _SPECIAL:
            return ActorMethod(self, name, methods.get(name, 1))
        raise AttributeError(f"'ActorHandle' object has no attribute '{name}'")

    def _call(self, name: str, args: tuple, kwargs: dict, nret: Any, retries: Any,
              call_name: str | None) -> Any:
        sigs = self._zray_meta.get("sigs")
        if sigs:  # Ray: a call that does not fit the method's signature fails at once
            _check_args(sigs.get(name), name, args, kwargs)
        cw = worker_state.ensure_initialized()
        if retries is None:
            retries = self._zray_meta.get("retries", {}).get(
                name, self._zray_meta.get("max_task_retries", 0))
        s = actor_submitter.submitter(cw)
        if not (args or kwargs):
            return s.submit(self._zray_aid, self._zray_meta, name, args, kwargs, nret, retries,
                            call_name)
        outer = getattr(_sending, "aid", None)
        _sending.aid = self._zray_aid
        try:
            return s.submit(self._zray_aid, self._zray_meta, name, args, kwargs, nret, retries,
                            call_name)
        finally:
            _sending.aid = outer

    def __reduce__(self):
        # A weak handle stays weak; a handle sent to the very actor it names becomes weak
        # there (an actor's handle to itself must not keep it alive: Ray's self-handle
        # rule). Any other pickled handle may keep the actor alive from elsewhere.
        weak = self._zray_weak or getattr(_sending, "aid", None) == self._zray_aid
        if not weak:
            cw = self._zray_cw
            s = cw.actor_submitter if cw is not None else None
            if s is not None:
                s.escaped(self._zray_aid)
        return (_rebuild_handle, (self._zray_aid, self._zray_meta, weak))

    def __del__(self):
        cw = self.__dict__.get("_zray_cw")
        if cw is not None and not self.__dict__.get("_zray_weak"):
            s = cw.actor_submitter  # none made yet: no call was ever sent
            if s is not None:
                s.handle_dropped(self._zray_aid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._zray_aid == self._zray_aid

    def __hash__(self) -> int:
        return hash(self._zray_aid)

    def __repr__(self) -> str:
        return f"Actor({self._zray_meta.get('cls', 'Actor')}, {self._zray_aid.hex()})"

    def __dir__(self) -> list:
        # As in Ray: the actor's methods only (for autocompletion), __init__ and the
        # built-in actor methods included.
        return sorted({"__init__", *_SPECIAL, *self._zray_meta.get("methods", {})})


def _rebuild_handle(aid: bytes, meta: dict, weak: bool = False) -> ActorHandle:
    return ActorHandle(aid, meta, owned=False, weak=weak)


class ActorMethod:
    """``handle.method``: call it with ``.remote()``."""

    def __init__(self, handle: ActorHandle, name: str, num_returns: Any,
                 retries: Any = None, call_name: str | None = None):
        self._handle = handle  # a strong ref: `A.remote().f.remote()` keeps the actor
        self._name = name
        self._num_returns = num_returns
        self._retries = retries
        self._call_name = call_name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._handle._call(self._name, args, kwargs, self._num_returns, self._retries,
                                  self._call_name)

    def _remote(self, args: Any = None, kwargs: dict | None = None, **o: Any) -> Any:
        """Ray's ``handle.m._remote(args=[...], kwargs={...}, **options)`` spelling."""
        target = self.options(**o) if o else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def options(self, **o: Any) -> ActorMethod:
        for k in o:
            if k not in _METHOD_OPTIONS:
                raise ValueError(f"Invalid option keyword {k} for actor methods. Valid ones are "
                                 f"{sorted(_METHOD_OPTIONS)}.")
        _check_method_options(o)
        n = o.get("num_returns", self._num_returns)
        if n is None:
            n = self._handle._zray_meta.get("methods", {}).get(self._name, 1)
        if n == "dynamic":
            n = "streaming"
        return ActorMethod(self._handle, self._name, n, o.get("max_task_retries", self._retries),
                           o.get("name", self._call_name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("Actor methods cannot be called directly. Instead of running "
                        f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by zray yet")

    def __repr__(self) -> str:
        return f"ActorMethod({self._name})"


# ------------------------------------------------------------------ functions
def get_actor(name: str, namespace: str | None = None) -> ActorHandle:
    """The handle of a named actor (in the job's namespace unless one is given)."""
    from zray import protocol

    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    if namespace is not None and not isinstance(namespace, str):
        raise TypeError("namespace must be a str or None")
    cw = worker_state.ensure_initialized()
    s = actor_submitter.submitter(cw)
    ns = namespace if namespace is not None else s.job_namespace()
    r, _ = cw.request(cw.gcs, {"t": protocol.GET_ACTOR, "name": name, "ns": ns})
    if not r.get("found"):
        raise ValueError(
            f"Failed to look up actor with name '{name}'. This could because 1. You are "
            "trying to look up a named actor you didn't create. 2. The named actor died. "
            "3. You did not use a namespace matching the namespace of the actor.")
    # Ray: a handle got by name is weak (it does not keep a non-detached actor alive).
    return ActorHandle(r["aid"], r.get("meta") or {}, owned=False, weak=True)


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors (in this job's namespace, or all of them)."""
    from zray import protocol

    cw = worker_state.ensure_initialized()
    ns = actor_submitter.submitter(cw).job_namespace()
    r, _ = cw.request(cw.gcs, {"t": protocol.GET_ACTOR, "list": True, "all": all_namespaces,
                               "ns": ns})
    actors = r.get("actors") or []
    if all_namespaces:
        return [{"name": a["name"], "namespace": a["namespace"]} for a in actors]
    return [a["name"] for a in actors]


def kill(actor: ActorHandle, *, no_restart: bool = True) -> None:
    """Kill an actor at once (running calls are interrupted, queued ones fail).

    With ``no_restart=False`` it is restarted if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise ValueError("zray.kill() only supported for actors. For tasks, try "
                         f"zray.cancel(). Got: {type(actor).__name__}.")
    cw = worker_state.ensure_initialized()
    actor_submitter.submitter(cw).kill(actor._zray_aid, no_restart)


class ActorExit(BaseException):
    """Raised by exit_actor() inside an actor: end it after this call (actor_executor.py)."""


def exit_actor() -> None:
    """Called inside an actor method: end the actor once this call returns."""
    cw = worker_state.current()
    if cw is None or getattr(cw, "current_actor_id", None) is None:
        raise TypeError("exit_actor API is called on a non-actor worker.")
    raise ActorExit()


__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "get_actor", "kill",
           "list_named_actors", "method", "make_actor_class"]
