"""``ray.util.annotations``: Ray's API-stability markers, for code written against Ray.

The markers document; they change nothing, except ``Deprecated(warning=True)``, which
makes a call emit ``RayDeprecationWarning``.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any

_STABILITY = ("stable", "beta", "alpha")


class RayDeprecationWarning(DeprecationWarning):
    """Warned when a deprecated zray (Ray) API is used."""


def _marker(name: str, check: Callable[[dict], None]) -> Callable:
    def marker(*args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]  # bare @Marker
        if args:
            raise TypeError(f"@{name} takes keyword arguments only")
        check(kwargs)
        return lambda obj: obj

    marker.__name__ = marker.__qualname__ = name
    return marker


def _check_public(kwargs: dict) -> None:
    unknown = set(kwargs) - {"stability", "api_group"}
    if unknown:
        raise TypeError(f"@PublicAPI got unknown arguments {sorted(unknown)}")
    if kwargs.get("stability", "stable") not in _STABILITY:
        raise ValueError(f"stability must be one of {_STABILITY}, "
                         f"not {kwargs['stability']!r}")


def _check_developer(kwargs: dict) -> None:
    if kwargs:
        raise TypeError(f"@DeveloperAPI got unknown arguments {sorted(kwargs)}")


PublicAPI = _marker("PublicAPI", _check_public)
PublicAPI.__doc__ = ("Mark a public API: ``@PublicAPI`` or "
                     "``@PublicAPI(stability='alpha'|'beta'|'stable', api_group=...)``.")
DeveloperAPI = _marker("DeveloperAPI", _check_developer)
DeveloperAPI.__doc__ = "Mark an API for advanced users and library authors."


def Deprecated(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (Ray's name)
    """Mark a deprecated API: ``@Deprecated`` or ``@Deprecated(message=..., warning=True)``
    (warning=True: each call or instantiation warns RayDeprecationWarning)."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    if args:
        raise TypeError("@Deprecated takes keyword arguments only")
    unknown = set(kwargs) - {"message", "warning"}
    if unknown:
        raise TypeError(f"@Deprecated got unknown arguments {sorted(unknown)}")
    message = kwargs.get("message", "")
    if not kwargs.get("warning", False):
        return lambda obj: obj

    def decorate(obj: Any) -> Any:
        text = f"{getattr(obj, '__qualname__', obj)} is deprecated. {message}".strip()
        if inspect.isclass(obj):
            init = obj.__init__

            @functools.wraps(init)
            def __init__(self: Any, *a: Any, **k: Any) -> None:
                warnings.warn(text, RayDeprecationWarning, stacklevel=2)
                init(self, *a, **k)

            obj.__init__ = __init__  # type: ignore[method-assign]
            return obj

        @functools.wraps(obj)
        def wrapper(*a: Any, **k: Any) -> Any:
            warnings.warn(text, RayDeprecationWarning, stacklevel=2)
            return obj(*a, **k)

        return wrapper

    return decorate


__all__ = ["Deprecated", "DeveloperAPI", "PublicAPI", "RayDeprecationWarning"]
