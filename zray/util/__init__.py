"""zray.util: Ray's ``ray.util`` helpers that zray has."""

from __future__ import annotations


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors: in this job's namespace, or (all_namespaces=True)
    ``{"name", "namespace"}`` dicts for every namespace."""
    from zray.actor import list_named_actors as _list

    return _list(all_namespaces)


__all__ = ["list_named_actors"]
