"""zray: a Ray-compatible runtime for Python tasks and actors, on ZeroMQ.

``import zray as ray`` and Ray driver scripts keep working.

The public names load on first use (PEP 562): the GCS and raylet processes import
modules of this package without paying for the driver API at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ActorClass": "zray.actor",
    "ActorHandle": "zray.actor",
    "get_actor": "zray.actor",
    "kill": "zray.actor",
    "method": "zray.actor",
    "available_resources": "zray.api",
    "cancel": "zray.api",
    "cluster_resources": "zray.api",
    "get": "zray.api",
    "get_gpu_ids": "zray.api",
    "init": "zray.api",
    "is_initialized": "zray.api",
    "nodes": "zray.api",
    "put": "zray.api",
    "remote": "zray.api",
    "shutdown": "zray.api",
    "wait": "zray.api",
    "ObjectID": "zray.object_ref",
    "ObjectRef": "zray.object_ref",
    "ObjectRefGenerator": "zray.object_ref",
    "get_runtime_context": "zray.runtime_context",
}
_SUBMODULES = {"exceptions", "util", "cluster_utils", "runtime_context", "actor", "types"}

__all__ = sorted([*_LAZY, "exceptions", "util"])


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is not None:
        # The API registers zray.init as the hook lower modules use to start zray
        # on first use (worker_state.ensure_initialized).
        importlib.import_module("zray.api")
        value = getattr(importlib.import_module(mod), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        importlib.import_module("zray.api")
        return importlib.import_module("zray." + name)
    raise AttributeError(f"module 'zray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)


if TYPE_CHECKING:  # for type checkers and IDEs
    from zray import exceptions, util  # noqa: F401
    from zray.actor import ActorClass, ActorHandle, get_actor, kill, method  # noqa: F401
    from zray.api import (  # noqa: F401
        available_resources,
        cancel,
        cluster_resources,
        get,
        get_gpu_ids,
        init,
        is_initialized,
        nodes,
        put,
        remote,
        shutdown,
        wait,
    )
    from zray.object_ref import ObjectID, ObjectRef, ObjectRefGenerator  # noqa: F401
    from zray.runtime_context import get_runtime_context  # noqa: F401
