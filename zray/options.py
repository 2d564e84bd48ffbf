"""Validation of @remote / .options() keywords, with Ray's names and errors."""

from __future__ import annotations

import numbers
from typing import Any

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "num_returns", "max_retries", "retry_exceptions",
    "max_calls", "name", "scheduling_strategy", "memory", "accelerator_type", "runtime_env",
    "_metadata",
}
ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "name", "namespace", "lifetime", "get_if_exists",
    "max_restarts", "max_task_retries", "max_concurrency", "max_pending_calls",
    "scheduling_strategy", "memory", "accelerator_type", "runtime_env", "concurrency_groups",
    "_metadata",
}

TASK_DEFAULTS: dict[str, Any] = {
    "num_cpus": 1, "num_gpus": 0, "resources": None, "num_returns": 1, "max_retries": 3,
    "retry_exceptions": False, "max_calls": 0, "name": None, "scheduling_strategy": None,
    "memory": None, "accelerator_type": None, "runtime_env": None, "_metadata": None,
}


def _number(name: str, v: Any, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"The option {name!r} must be a number, got {type(v).__name__}: {v!r}")
    if v < 0:
        raise ValueError(f"The option {name!r} must be >= 0, got {v!r}")
    if v and int(float(v) * 10000) == 0:  # Ray counts resources in units of 1/10000
        raise ValueError(f"The precision of the fractional quantity of resource {name} "
                         "cannot go beyond 0.0001")


def check_type(name: str, v: Any, types: tuple) -> None:
    """Ray's type error for an option keyword (bool is not an int here)."""
    if isinstance(v, bool) or not isinstance(v, types):
        raise TypeError(f"The type of keyword '{name}' must be {(*types, type(None))}, but "
                        f"received type {type(v)}")


def check_retries(name: str, v: Any) -> None:
    """max_retries, max_restarts, max_task_retries: None, -1 (infinite) or >= 0 (Ray)."""
    if v is None:
        return
    check_type(name, v, (int,))
    if v < -1:
        raise ValueError(f"The keyword '{name}' only accepts None, 0, -1 or a positive "
                         "integer, where -1 represents infinity.")


def validate(opts: dict, for_actor: bool = False) -> None:
    valid = ACTOR_OPTIONS if for_actor else TASK_OPTIONS
    kind = "actors" if for_actor else "remote functions"
    for k in opts:
        if k not in valid:
            raise ValueError(
                f"Invalid option keyword {k} for {kind}. Valid ones are {sorted(valid)}.")
    for k in ("num_cpus", "num_gpus", "memory"):
        if k in opts:
            _number(k, opts[k])
    if "resources" in opts and opts["resources"] is not None:
        res = opts["resources"]
        if not isinstance(res, dict):
            raise TypeError(f"The option 'resources' must be a dict, got {type(res).__name__}")
        for rk, rv in res.items():
            if rk in ("CPU", "GPU"):
                raise ValueError("Use the 'num_cpus' and 'num_gpus' keyword instead of 'CPU' "
                                 "and 'GPU' in 'resources' keyword")
            if not isinstance(rk, str):
                raise TypeError(f"Resource names must be strings, got {rk!r}")
            _number(rk, rv, allow_none=False)
    if opts.get("num_returns") is not None:
        n = opts["num_returns"]
        check_type("num_returns", n, (int, str))
        if (isinstance(n, int) and n < 0) or (isinstance(n, str)
                                              and n not in ("streaming", "dynamic")):
            raise ValueError("The keyword 'num_returns' only accepts None, a non-negative "
                             "integer, 'streaming' (for generators), or 'dynamic'.")
    if "max_retries" in opts:
        check_retries("max_retries", opts["max_retries"])
    if opts.get("max_calls") is not None:
        n = opts["max_calls"]
        check_type("max_calls", n, (int,))
        if n < 0:
            raise ValueError("The keyword 'max_calls' only accepts None, 0 or a positive "
                             "integer.")
    if "retry_exceptions" in opts:
        r = opts["retry_exceptions"]
        if not isinstance(r, bool):
            if not isinstance(r, (list, tuple)) or not all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in r):
                raise TypeError("The option 'retry_exceptions' must be a bool or a list of "
                                f"exception types, got {r!r}")
    if "name" in opts and opts["name"] is not None and not isinstance(opts["name"], str):
        raise TypeError(f"The option 'name' must be a str, got {type(opts['name']).__name__}")
    if opts.get("runtime_env") not in (None, {}):
        env = opts["runtime_env"]
        if not isinstance(env, dict) or set(env) - {"env_vars"}:
            raise ValueError("zray supports only runtime_env={'env_vars': {...}} so far, got "
                             f"{env!r}")


def task_resources(o: dict) -> dict:
    """The resource request of a task from its options."""
    res: dict = {}
    if o.get("num_cpus"):
        res["CPU"] = float(o["num_cpus"])
    if o.get("num_gpus"):
        res["GPU"] = float(o["num_gpus"])
    if o.get("memory"):
        res["memory"] = float(o["memory"])
    for k, v in (o.get("resources") or {}).items():
        if v:
            res[k] = float(v)
    return res
