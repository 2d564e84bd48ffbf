"""The raylet's view of its GCS: up, down or gone for good (a plain state machine).

The raylet pings the GCS every ``ping_s``; the GCS answers PONG with its
incarnation (``gcs_start``, random per GCS process). The GCS is *down* when

- its process exited (the shell watches it with a pidfd when it runs on this
  machine: noticed at once), or
- no PONG came for ``timeout_s`` (a GCS on another machine), or
- a PONG or REGISTER_NODE_REPLY names another incarnation (it restarted
  between two pings).

While down, the raylet tells its drivers and workers (their GCS-bound calls fail
fast with ``RpcError``) and re-registers every ``retry_s``; a REGISTER_NODE_REPLY
brings it *up* again. Down longer than ``reconnect_s`` (Ray's
``gcs_rpc_server_reconnect_timeout_s``) and the raylet stops itself and its workers.

Events go in one way, ``GcsWatch.handle(event)``, which returns a list of the
instructions below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

CONNECTING, UP, DOWN = "connecting", "up", "down"


@dataclass
class Ping:
    """Send PING to the GCS."""


@dataclass
class Register:
    """Send REGISTER_NODE (and SUBSCRIBE) to the GCS again."""


@dataclass
class Down:
    """Tell local clients: GCS-bound calls fail with ``msg`` until Up."""

    msg: str


@dataclass
class Up:
    """The GCS is back (registered again): tell local clients."""


@dataclass
class Stop:
    """Stop this raylet and its workers: the GCS stayed away too long."""

    msg: str


Instruction = Union[Ping, Register, Down, Up, Stop]


# --- events
@dataclass
class Started:
    now: float


@dataclass
class Registered:
    """REGISTER_NODE_REPLY, naming the GCS's incarnation."""

    now: float
    incarnation: bytes | None


@dataclass
class PongReceived:
    now: float
    incarnation: bytes | None


@dataclass
class ProcessExited:
    """The GCS's process (watched with a pidfd on this machine) exited."""

    now: float


@dataclass
class Tick:
    now: float


Event = Union[Started, Registered, PongReceived, ProcessExited, Tick]


class GcsWatch:
    def __init__(self, address: str, ping_s: float, timeout_s: float, reconnect_s: float,
                 retry_s: float = 1.0):
        self.address = address  # for messages: the GCS's host:port (or ipc path)
        self.ping_s, self.timeout_s = ping_s, timeout_s
        self.reconnect_s, self.retry_s = reconnect_s, retry_s
        self.state = CONNECTING
        self.incarnation: bytes | None = None
        self.since = 0.0  # when the current state began
        self.last_pong = 0.0
        self.last_ping = 0.0
        self.last_retry = 0.0
        self.msg = ""

    def handle(self, event: Event) -> list[Instruction]:
        """Take one event; return the instructions it calls for (the only way in)."""
        match event:
            case Started(now):
                self.since = self.last_pong = self.last_ping = now
                return []
            case Registered(now, incarnation):
                return self._registered(now, incarnation)
            case PongReceived(now, incarnation):
                return self._pong(now, incarnation)
            case ProcessExited(now):
                return self._process_exited(now)
            case Tick(now):
                return self._tick(now)
        raise TypeError(f"not a GCS watch event: {event!r}")

    def _registered(self, now: float, incarnation: bytes | None) -> list[Instruction]:
        was = self.state
        self.state, self.since, self.last_pong = UP, now, now
        self.incarnation = incarnation
        self.msg = ""
        return [Up()] if was == DOWN else []

    def _pong(self, now: float, incarnation: bytes | None) -> list[Instruction]:
        if self.state != UP:
            return []
        if incarnation is not None and self.incarnation is not None and \
                incarnation != self.incarnation:
            # A new GCS process on the same address: it only knows what it restored.
            return self._down(now, f"the GCS at {self.address} restarted") + [Register()]
        self.last_pong = now
        return []

    def _process_exited(self, now: float) -> list[Instruction]:
        if self.state == DOWN:
            return []
        return self._down(now, f"the GCS process at {self.address} exited")

    def _tick(self, now: float) -> list[Instruction]:
        if self.state == UP:
            if now - self.last_pong > self.timeout_s:
                return self._down(now, f"the GCS at {self.address} did not answer for "
                                       f"{self.timeout_s:g} s")
            if now - self.last_ping >= self.ping_s:
                self.last_ping = now
                return [Ping()]
            return []
        if now - self.since > self.reconnect_s:
            what = "was unreachable" if self.state == DOWN else "never answered"
            return [Stop(f"the GCS at {self.address} {what} for {self.reconnect_s:g} s "
                         f"(ZRAY_GCS_RECONNECT_TIMEOUT_S); {self.msg or 'giving up'}")]
        if self.state == DOWN and now - self.last_retry >= self.retry_s:
            self.last_retry = now
            return [Register()]
        return []

    def _down(self, now: float, why: str) -> list[Instruction]:
        self.state, self.since, self.last_retry = DOWN, now, now
        self.msg = why
        return [Down(f"The GCS at {self.address} is unreachable: {why}. GCS-bound calls "
                     "fail until it is back (`zray start --head` on the same session "
                     "restores it).")]
