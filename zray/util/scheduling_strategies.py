"""Scheduling strategies, with Ray's names (``ray.util.scheduling_strategies``).

Besides these classes a task or actor takes ``scheduling_strategy="DEFAULT"``
(the hybrid policy: pack onto the local node until it is about half busy, then
prefer the least busy node) or ``"SPREAD"`` (the least busy node first, round
robin among equals). See docs/ARCHITECTURE.md, "Scheduling across nodes".
"""

from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run a task or actor on one node, named by its hex id (``zray.nodes()[i]["NodeID"]``).

    If the node is alive and has the resources at all, the task runs there (and
    waits there while the node is busy). If the node is dead, unknown, or could
    never fit the task: with ``soft=False`` the task fails with
    ``TaskUnschedulableError`` (raised by ``zray.get``); with ``soft=True`` it runs
    wherever the default policy puts it. ``_spill_on_unavailable=True`` (soft only)
    also lets it run elsewhere while the node is busy.
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False):
        if not isinstance(node_id, str):
            node_id = node_id.hex()
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable
        self._validate_attributes()

    def _validate_attributes(self) -> None:
        bad = ValueError(
            f"Invalid node_id '{self.node_id}'. Node ID must be a valid hex string. To get a "
            "list of all nodes and their IDs in your cluster, use zray.nodes().")
        try:
            raw = bytes.fromhex(self.node_id)
        except ValueError:
            raise bad from None
        if not raw or raw == b"\xff" * len(raw) or raw == b"\0" * len(raw):
            raise bad
        if self._spill_on_unavailable and not self.soft:
            raise ValueError("_spill_on_unavailable cannot be set when soft is False. Please "
                             "set soft to True to use _spill_on_unavailable.")
        if self._fail_on_unavailable and self.soft:
            raise ValueError("_fail_on_unavailable cannot be set when soft is True. Please "
                             "set soft to False to use _fail_on_unavailable.")

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


__all__ = ["NodeAffinitySchedulingStrategy"]
