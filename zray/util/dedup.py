"""A bounded memory of task ids a worker took (a duplicate PUSH_TASK is refused)."""

from __future__ import annotations

import collections


def task_key(h: dict) -> bytes:
    """What makes a PUSH_TASK unique: its task id and attempt number (as Ray's specs).

    A retry or a lineage re-run of a task is a new attempt; a task a worker handed back
    unstarted (TASKS_RETURNED) comes back with the same attempt, so the worker forgets
    it when it hands it back.
    """
    att = h.get("att")
    tid = h["tid"]
    return tid + att.to_bytes(4, "little") if isinstance(att, int) and 0 <= att < 1 << 32 \
        else tid


class RecentIds:
    """The last ``cap`` keys added; older ones are forgotten first (memory stays bounded)."""

    __slots__ = ("cap", "_ids")

    def __init__(self, cap: int = 1 << 16):
        self.cap = cap
        self._ids: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def add(self, key: bytes) -> bool:
        """Remember ``key``; False if it is already remembered (a duplicate)."""
        ids = self._ids
        if key in ids:
            return False
        ids[key] = None
        if len(ids) > self.cap:
            ids.popitem(last=False)
        return True

    def discard(self, key: bytes) -> None:
        self._ids.pop(key, None)

    def __contains__(self, key: bytes) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)
