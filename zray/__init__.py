"""zray: a Ray-compatible runtime for Python tasks and actors, on ZeroMQ.

``import zray as ray`` and Ray driver scripts keep working.
"""

from zray import exceptions, util
from zray.actor import ActorClass, ActorHandle, get_actor, kill, method
from zray.api import (
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
from zray.object_ref import ObjectRef, ObjectRefGenerator
from zray.runtime_context import get_runtime_context

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "ObjectRefGenerator",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "util",
    "wait",
]
