"""What the GCS's state machines (gcs/tables.py, gcs/actor_table.py) return for the
shell (gcs/server.py) to carry out, and the row codec of the durable copy.

A module of its own so that both tables import it and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack


# --------------------------------------------------------- instructions
@dataclass
class Send:
    dest: str
    header: dict[Any, Any]
    payload: list[Any] = field(default_factory=list)


@dataclass
class DropConn:
    """Close the GCS's connection to a process that is gone (a dead actor's worker, a
    dead subscriber), so that connections do not pile up."""

    dest: str


@dataclass
class Persist:
    """Write ``value`` (None: delete) under (table, key) in the durable copy."""

    table: str
    key: bytes
    value: bytes | None


@dataclass
class Stop:
    """SHUTDOWN: the GCS ends (a clean stop: the durable copy is no longer wanted)."""


def pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, use_bin_type=True)
    return out


def unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)
