"""A test actor both util test files use: tasks block in ``wait(k)`` until ``open(k)``."""

from __future__ import annotations

import asyncio

from backend import ray


@ray.remote(num_cpus=0)
class Gate:
    """Per-key events: tasks block in wait(k) until the test calls open(k)."""

    def __init__(self):
        self.events: dict = {}

    def _ev(self, k):
        return self.events.setdefault(k, asyncio.Event())

    async def wait(self, k):
        await self._ev(k).wait()

    async def open(self, k):
        self._ev(k).set()
