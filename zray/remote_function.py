"""@zray.remote on a function: RemoteFunction and its .options()."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

from zray import options as opt
from zray import serialization, worker_state
from zray.signature import check as _check_args
from zray.signature import spec_of

FUNCTION_SIZE_WARN = 10**7  # Ray's thresholds for a pickled function or actor class
FUNCTION_SIZE_ERROR = 10**8


def check_export_size(kind: str, name: str, blob: bytes) -> None:
    """Ray refuses a pickled function/class over 100 MB (and warns over 10 MB): it is
    almost always a large object captured by the definition by accident."""
    n = len(blob)
    if n < FUNCTION_SIZE_WARN:
        return
    tip = (" Check that its definition is not implicitly capturing a large array or other "
           "object in scope. Tip: use zray.put() to put large objects in the object store.")
    mib = n // (1024 * 1024)
    if n > FUNCTION_SIZE_ERROR:
        raise ValueError(f"The {kind} {name} is too large ({mib} MiB > "
                         f"FUNCTION_SIZE_ERROR_THRESHOLD={FUNCTION_SIZE_ERROR // (1024 * 1024)} "
                         f"MiB).{tip}")
    import logging

    logging.getLogger("zray").warning("The %s %s is very large (%d MiB).%s", kind, name, mib, tip)


_NONE_IS_DEFAULT = ("num_returns", "max_retries", "max_calls")


def _default_num_returns(task_options: dict) -> dict:
    """Ray reads None for these options as "the default" (num_returns: 1, or streaming for
    a generator)."""
    if any(task_options.get(k, 0) is None for k in _NONE_IS_DEFAULT):
        task_options = {k: v for k, v in task_options.items()
                        if not (v is None and k in _NONE_IS_DEFAULT)}
    return task_options


class RemoteFunction:
    """A function that runs as a task: call ``.remote()`` to run it."""

    def __init__(self, function: Any, task_options: dict):
        task_options = _default_num_returns(task_options)
        opt.validate(task_options)
        self._function = function
        self._function_name = getattr(function, "__name__", "function")
        self._module = getattr(function, "__module__", "")
        self._default_options = {**opt.TASK_DEFAULTS, **task_options}
        if "num_returns" not in task_options and inspect.isgeneratorfunction(function):
            # A generator without num_returns streams its values (Ray >= 2.8).
            self._default_options["num_returns"] = "streaming"
        if self._default_options.get("num_gpus") and "max_calls" not in task_options:
            self._default_options["max_calls"] = 1  # Ray: GPU tasks release their worker
        self._prepare(self._default_options)
        self._sig = spec_of(function)
        self._blob: bytes | None = None
        self._fn_id: bytes | None = None
        self.__doc__ = function.__doc__
        self.__name__ = self._function_name
        self.__wrapped__ = function

    @staticmethod
    def _prepare(o: dict) -> None:
        o["_resources"] = opt.task_resources(o)
        if o["num_returns"] == "dynamic":
            o["num_returns"] = "streaming"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            "Remote functions cannot be called directly. Instead of running "
            f"'{self._module}.{self._function_name}()', try "
            f"'{self._module}.{self._function_name}.remote()'.")

    def _export(self, cw: Any) -> bytes:
        if self._fn_id is None:
            blob = serialization.dumps_plain(self._function)
            check_export_size("remote function", f"{self._module}.{self._function_name}", blob)
            self._blob = blob
            self._fn_id = hashlib.sha1(self._blob).digest()
        cw.export_function(self._fn_id, self._blob)
        return self._fn_id

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        """Run the function as a task; returns ObjectRef(s) at once."""
        return self._submit(args, kwargs, self._default_options)

    def _remote(self, args: Any = None, kwargs: dict | None = None, **task_options: Any) -> Any:
        """Ray's ``f._remote(args=[...], kwargs={...}, **options)`` spelling."""
        target = self.options(**task_options) if task_options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def _submit(self, args: tuple, kwargs: dict, o: dict) -> Any:
        _check_args(self._sig, self._function_name, args, kwargs)  # Ray: TypeError at once
        cw = worker_state.ensure_initialized()
        fn_id = self._export(cw)
        return cw.submit_task(fn_id, o.get("name") or self._function_name, args, kwargs, o)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        """Override options for the calls made through the returned object."""
        task_options = _default_num_returns(task_options)
        opt.validate(task_options)
        o = {**self._default_options, **task_options}
        if "num_gpus" in task_options and task_options["num_gpus"] and "max_calls" not in task_options:
            o["max_calls"] = 1
        self._prepare(o)
        return _OptionsWrapper(self, o)

    def bind(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("Ray DAGs (.bind) are not supported by zray yet")

    def __repr__(self) -> str:
        return f"RemoteFunction({self._module}.{self._function_name})"


class _OptionsWrapper:
    def __init__(self, rf: RemoteFunction, o: dict):
        self._rf = rf
        self._o = o

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._rf._submit(args, kwargs, self._o)

    def options(self, **task_options: Any) -> _OptionsWrapper:
        for k in _NONE_IS_DEFAULT:
            if task_options.get(k, 0) is None:
                task_options[k] = self._rf._default_options[k]
        opt.validate(task_options)
        o = {**self._o, **task_options}
        self._rf._prepare(o)
        return _OptionsWrapper(self._rf, o)
