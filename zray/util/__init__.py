"""zray.util: Ray's ``ray.util`` helpers that zray has."""

from __future__ import annotations

from zray.util.actor_pool import ActorPool
from zray.util.helpers import as_completed, map_unordered


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors: in this job's namespace, or (all_namespaces=True)
    ``{"name", "namespace"}`` dicts for every namespace."""
    from zray.actor import list_named_actors as _list

    return _list(all_namespaces)


__all__ = ["ActorPool", "as_completed", "list_named_actors", "map_unordered"]
