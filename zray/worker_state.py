"""The process's CoreWorker (driver or worker), set by init() or the worker main.

The modules below the public API call ``ensure_initialized()`` rather than
importing ``api`` (which imports them): api.py registers ``zray.init`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_core_worker: Any = None
_init_hook: Callable[[], Any] | None = None


def current() -> Any:
    return _core_worker


def set_current(cw: Any) -> None:
    global _core_worker
    _core_worker = cw


def set_init_hook(fn: Callable[[], Any]) -> None:
    """``fn()`` starts or connects zray with default options and returns the CoreWorker."""
    global _init_hook
    _init_hook = fn


def ensure_initialized() -> Any:
    """The CoreWorker; in a driver that has not called zray.init(), init() first (as Ray)."""
    cw = _core_worker
    if cw is None:
        if _init_hook is None:
            raise RuntimeError("zray is not initialized: call zray.init() first")
        cw = _init_hook()
    return cw
