"""The process's CoreWorker (driver or worker), set by init() or the worker main."""

from __future__ import annotations

from typing import Any

_core_worker: Any = None


def current() -> Any:
    return _core_worker


def set_current(cw: Any) -> None:
    global _core_worker
    _core_worker = cw
