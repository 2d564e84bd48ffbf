"""Argument checks at ``.remote()``: a call that does not fit the signature fails at once.

Ray binds the arguments of every task, actor constructor and actor method call to the
function's ``inspect.signature`` and raises ``TypeError`` in the caller, before anything is
submitted. zray does the same from a compact spec (plain lists, so it travels inside an
actor handle's metadata through the GCS): a common call (positional arguments only, count
in range) costs two comparisons; anything else gets the full check, with the messages
``inspect.Signature.bind`` would give.
"""

from __future__ import annotations

import inspect
from typing import Any

_P = inspect.Parameter
_MANY = 1 << 30

# spec = [fast_lo, fast_hi, names, n_posonly, n_required, var_pos, kwonly, kwonly_required,
#         var_kw]; a call with no kwargs and fast_lo <= len(args) <= fast_hi fits.


def spec_of(fn: Any, drop_first: bool = False) -> list | None:
    """The spec of ``fn``'s parameters (``drop_first``: an unbound method's ``self``);
    None when the signature cannot be read (some builtins): then nothing is checked."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if drop_first:
        if not params or params[0].kind not in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            if params and params[0].kind == _P.VAR_POSITIONAL:
                pass  # def f(*args): self arrives inside args
            else:
                return None
        else:
            params = params[1:]
    names: list = []
    n_posonly = n_required = 0
    var_pos = var_kw = False
    kwonly: list = []
    kwonly_req: list = []
    for p in params:
        if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
            if p.kind == _P.POSITIONAL_ONLY:
                n_posonly += 1
            if p.default is _P.empty:
                n_required = len(names)  # required ones come before any with a default
        elif p.kind == _P.VAR_POSITIONAL:
            var_pos = True
        elif p.kind == _P.KEYWORD_ONLY:
            kwonly.append(p.name)
            if p.default is _P.empty:
                kwonly_req.append(p.name)
        else:
            var_kw = True
    hi = _MANY if var_pos else len(names)
    lo = hi + 1 if kwonly_req else n_required  # a required keyword-only: always full check
    return [lo, hi, names, n_posonly, n_required, var_pos, kwonly, kwonly_req, var_kw]


def check(spec: list | None, what: str, args: tuple, kwargs: dict) -> None:
    """Raise TypeError if ``what(*args, **kwargs)`` does not fit ``spec``."""
    if spec is None or (not kwargs and spec[0] <= len(args) <= spec[1]):
        return
    _, hi, names, n_posonly, n_required, _var_pos, kwonly, kwonly_req, var_kw = spec
    if len(args) > hi:
        raise TypeError(f"{what}() got too many positional arguments: takes {hi} but "
                        f"{len(args)} were given")
    bound = set(names[:len(args)])
    for k in kwargs:
        if k in bound:
            raise TypeError(f"{what}() got multiple values for argument {k!r}")
        if k in names:
            if names.index(k) < n_posonly and not var_kw:
                raise TypeError(f"{what}() got some positional-only arguments passed as "
                                f"keyword arguments: {k!r}")
        elif k not in kwonly and not var_kw:
            raise TypeError(f"{what}() got an unexpected keyword argument {k!r}")
    for i in range(len(args), n_required):
        n = names[i]
        if i < n_posonly or n not in kwargs:
            raise TypeError(f"{what}() missing a required argument: {n!r}")
    for n in kwonly_req:
        if n not in kwargs:
            raise TypeError(f"{what}() missing a required keyword-only argument: {n!r}")


def _no_init(self: Any) -> None:
    """What Ray gives an actor class without an ``__init__``: it takes no arguments."""


def actor_specs(cls: type) -> dict:
    """Method name -> spec for every method of an actor class, and ``__init__``."""
    specs: dict = {}
    for name, fn in inspect.getmembers(cls, predicate=lambda m: inspect.isfunction(m)
                                       or inspect.ismethod(m)):
        raw = inspect.getattr_static(cls, name, fn)
        # A classmethod comes bound (no cls to drop); a staticmethod has no self.
        drop = not isinstance(raw, (staticmethod, classmethod)) and not inspect.ismethod(fn)
        specs[name] = spec_of(fn, drop_first=drop)
    if "__init__" not in specs:
        specs["__init__"] = spec_of(_no_init, drop_first=True)
    return specs
