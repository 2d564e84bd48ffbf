"""zray.util: Ray's ``ray.util`` helpers that zray has."""

from __future__ import annotations

from zray.util.actor_pool import ActorPool
from zray.util.helpers import as_completed, map_unordered


def list_named_actors(all_namespaces: bool = False) -> list:
    """Names of the live named actors: in this job's namespace, or (all_namespaces=True)
    ``{"name", "namespace"}`` dicts for every namespace."""
    from zray.actor import list_named_actors as _list

    return _list(all_namespaces)


def get_node_ip_address(address: str = "8.8.8.8:53") -> str:
    """The IP address of this node: the one zray uses when connected, else the loopback
    address (zray's default node address; no probe packet is sent, unlike Ray's)."""
    from zray import worker_state

    cw = worker_state.current()
    if cw is not None and getattr(cw, "node_ip", None):
        return cw.node_ip
    return "127.0.0.1"


__all__ = ["ActorPool", "as_completed", "get_node_ip_address", "list_named_actors",
           "map_unordered"]
