"""One argument codec for tasks and actor calls, both ways.

Submitting (the caller): ``encode_args`` serialises the arguments at
``.remote()`` (a bad value fails there, as in Ray) into ``argv``: per argument
its ObjectRef (passed by reference, or a large value put in the store) or its
list of inline frames. ``describe_args`` turns ``argv`` into the wire form of
PUSH_TASK / REGISTER_ACTOR ``args`` (a descriptor per argument) and the frames
that follow the header:

- ``[INLINE, n]``: the next ``n`` payload frames are the value;
- ``[STORED, oid, node, owner]``: read it from the object store (pulled from
  ``node`` if not local);
- ``[REF, oid, owner]``: not ready when sent (an actor call does not wait for its
  arguments): the callee resolves it with ``get``.

Running (the callee): ``decode_args`` makes (args, kwargs) again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zray import config, serialization
from zray import exceptions as exc
from zray.object_ref import ObjectRef
from zray.owner.state import INLINE, READY, REF, STORED

if TYPE_CHECKING:
    from zray.core_worker import CoreWorker


def encode_args(cw: CoreWorker, args: tuple, kwargs: dict, what: str) -> tuple[list, list]:
    """``argv`` (ObjectRef or inline frames per argument) and the refs nested in values."""
    argv: list = []
    nested: list = []
    nargs = len(args)
    for i, a in enumerate((*args, *kwargs.values())):
        if isinstance(a, ObjectRef):
            argv.append(a)
            continue
        frames, refs = serialization.serialize(
            a, f"argument {i} of {what}" if i < nargs else
            f"argument {list(kwargs)[i - nargs]!r} of {what}")
        if refs:
            nested.extend(refs)
        size = serialization.frames_size(frames)
        if size > config.INLINE_MAX:
            argv.append(cw.put_frames(frames, size, refs))
        else:
            argv.append(frames)
    return argv, nested


def describe_args(objects: dict, argv: list, me: list) -> tuple[list, list]:
    """The wire descriptors of ``argv`` and their payload frames (caller's lock held)."""
    argd: list = []
    payload: list = []
    for a in argv:
        if type(a) is list:
            argd.append((INLINE, len(a)))
            payload.extend(a)
            continue
        e = objects.get(a._id)
        if e is not None and e.state == READY:
            if e.frames is not None:
                argd.append((INLINE, len(e.frames)))
                payload.extend(e.frames)
                continue
            if e.node is not None:
                argd.append((STORED, a._id, e.node, a._owner or me))
                continue
        argd.append((REF, a._id, a._owner or me))  # pending or failed: the callee gets it
    return argd, payload


def decode_args(cw: CoreWorker, h: dict, payload: list) -> tuple[list, dict]:
    """(args, kwargs) of a PUSH_TASK or CREATE_ACTOR; may block (stored values, refs)."""
    descs = h["args"]
    if not descs:
        return [], {}
    vals: list[Any] = []
    pos = 0
    for d in descs:
        kind = d[0]
        if kind == INLINE:
            n = d[1]
            vals.append(serialization.deserialize(payload[pos: pos + n]))
            pos += n
        elif kind == STORED:
            _, oid, node, owner = d
            vals.append(serialization.deserialize(cw._read_stored(oid, node, owner)))
        elif kind == REF:
            _, oid, owner = d
            vals.append(cw.get([ObjectRef(oid, owner)], None)[0])
        else:
            raise exc.RaySystemError(f"unknown argument descriptor {kind!r}")
    kw = h.get("kw") or []
    if kw:
        k = len(kw)
        return vals[:-k], dict(zip(kw, vals[-k:]))
    return vals, {}
