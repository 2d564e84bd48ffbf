"""The pull state machine: every object a raylet is fetching from other nodes, in chunks.

Events in (``start``, ``chunk``, ``written``, ``chunk_failed``, ``missing``,
``node_dead``, ``locations``, ``abort``, ``tick``), actions out (``Request``,
``AskOwner``, ``Done``); no I/O and no clock of its own. The shell that turns the
actions into messages is raylet/object_manager.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zray import config


def _env_int(name: str, default: int) -> int:
    return int(config.env_number("ZRAY_" + name, default))


CHUNK_BYTES = _env_int("TRANSFER_CHUNK_BYTES", 4 << 20)
WINDOW = _env_int("TRANSFER_WINDOW", 8)  # chunks in flight per pull
MAX_INFLIGHT = _env_int("TRANSFER_MAX_INFLIGHT", 24)  # chunks in flight in all
INITIAL_WINDOW = 4  # before the size is known
CHUNK_TIMEOUT_S = 10.0
MAX_CHUNK_RETRIES = 2  # per holder, then the next holder
OWNER_TIMEOUT_S = 60.0
MAX_OWNER_ASKS = 3
OWNER_AGAIN_S = 0.5  # an owner that names only dead nodes may not know of the death yet


@dataclass
class Request:
    """Ask ``node``'s raylet for bytes [off, off+n) of the object."""

    node: bytes
    oid: bytes
    off: int
    n: int
    plain: bool = False  # over ZeroMQ only (a bulk fetch of this chunk failed)


@dataclass
class AskOwner:
    """Ask the object's owner where copies are (answered by ``locations``)."""

    oid: bytes
    owner: list[Any]


@dataclass
class Done:
    """The pull ended. ``local``: a copy turned out to be on this node already."""

    oid: bytes
    ok: bool
    local: bool = False
    msg: str = ""
    pull: Pull | None = None


@dataclass
class Accept:
    """Write the chunk that just arrived (then report it with ``ChunkWritten``)."""

    oid: bytes
    off: int


Action = Request | AskOwner | Done | Accept


# -- events (the only way in: ``Pulls.handle``)
@dataclass
class Start:
    """A new pull, in chunks of ``chunk`` bytes, ``window`` of them in flight (defaults:
    the Pulls'); both stay for the pull's life (offsets are multiples of the chunk)."""

    oid: bytes
    sources: list[Any]
    owner: list[Any] | None
    now: float
    chunk: int | None = None
    window: int | None = None


@dataclass
class ChunkArrived:
    oid: bytes
    node: bytes
    off: int
    n: int
    total: int
    sens: int
    now: float


@dataclass
class ChunkWritten:
    oid: bytes
    off: int


@dataclass
class ChunkFailed:
    """An accepted chunk did not land (its bulk fetch failed)."""

    oid: bytes
    off: int
    now: float


@dataclass
class Missing:
    """``node`` has no copy of the object (or cannot be reached)."""

    oid: bytes
    node: bytes
    now: float


@dataclass
class NodeDead:
    node: bytes
    now: float


@dataclass
class Locations:
    """The owner said where copies are (empty: none left, the object is lost).

    ``dead``: how many nodes it named that we know are dead (left out of ``nodes``).
    """

    oid: bytes
    nodes: list[Any]
    now: float
    have_local: bool
    dead: int = 0


@dataclass
class Abort:
    oid: bytes
    msg: str


@dataclass
class Tick:
    now: float


Event = Start | ChunkArrived | ChunkWritten | ChunkFailed | Missing | NodeDead | Locations \
    | Abort | Tick


@dataclass
class Pull:
    oid: bytes
    sources: list[Any]
    owner: list[Any] | None
    started: float
    total: int = -1
    sens: int = -1
    nchunks: int = -1
    pending: dict[Any, Any] = field(default_factory=dict)  # chunk index -> sent at
    got: set[Any] = field(default_factory=set)  # arrived (being written)
    written: set[Any] = field(default_factory=set)  # in the local copy
    next_idx: int = 0
    retries: int = 0
    asks: int = 0
    asked_at: float | None = None
    ask_again_at: float | None = None  # the owner named only dead nodes: ask once more then
    chunk: int = CHUNK_BYTES  # bytes per chunk (fixed for the pull)
    window: int = WINDOW  # chunks in flight at most
    wire: int = 0
    bulk: int = 0  # of which over the bulk plane
    compressed: bool = False
    source_used: bytes | None = None


class Pulls:
    """Every pull a raylet has in progress. Events in, actions out; no I/O, no clock."""

    def __init__(self, node_id: bytes, chunk: int = CHUNK_BYTES, window: int = WINDOW,
                 max_inflight: int = MAX_INFLIGHT):
        self.node_id = node_id
        self.chunk_bytes = chunk
        self.window = window
        self.max_inflight_bytes = max_inflight * chunk  # requested, not arrived, in all
        self.pulls: dict[bytes, Pull] = {}

    def _inflight(self) -> int:
        return sum(len(p.pending) * p.chunk for p in self.pulls.values())

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return the actions it calls for (the only way in)."""
        match event:
            case Start(oid, sources, owner, now, chunk, window):
                return self._start(oid, sources, owner, now, chunk, window)
            case ChunkArrived(oid, node, off, n, total, sens, now):
                accept, acts = self._chunk(oid, node, off, n, total, sens, now)
                return [Accept(oid, off), *acts] if accept else acts
            case ChunkWritten(oid, off):
                return self._written(oid, off)
            case ChunkFailed(oid, off, now):
                return self._chunk_failed(oid, off, now)
            case Missing(oid, node, now):
                return self._missing(oid, node, now)
            case NodeDead(node, now):
                return self._node_dead(node, now)
            case Locations(oid, nodes, now, have_local, dead):
                return self._locations(oid, nodes, now, have_local, dead)
            case Abort(oid, msg):
                return self._abort(oid, msg)
            case Tick(now):
                return self._tick(now)
        raise TypeError(f"not a Pulls event: {event!r}")

    # -- what each event does
    def _start(self, oid: bytes, sources: list[Any], owner: list[Any] | None, now: float,
              chunk: int | None = None, window: int | None = None) -> list[Action]:
        """A new pull, in chunks of ``chunk`` bytes, ``window`` of them in flight (defaults:
        the Pulls'); both stay for the pull's life (offsets are multiples of the chunk)."""
        if oid in self.pulls:
            return []
        srcs = [s for s in dict.fromkeys(sources) if s and s != self.node_id]
        p = Pull(oid, srcs, owner, now, chunk=chunk or self.chunk_bytes,
                  window=window or self.window)
        self.pulls[oid] = p
        return self._begin(p, now)

    def _chunk(self, oid: bytes, node: bytes, off: int, n: int, total: int, sens: int,
              now: float) -> tuple[bool, list[Any]]:
        """A chunk arrived; (write it?, actions). Report the write with ``written``."""
        p = self.pulls.get(oid)
        if p is None or total <= 0 or not 0 <= sens <= total or off < 0 or off % p.chunk:
            return False, []
        if p.total < 0:
            p.total, p.sens = total, sens
            p.nchunks = -(-total // p.chunk)
            for i in [i for i in p.pending if i >= p.nchunks]:
                del p.pending[i]
        elif (p.total, p.sens) != (total, sens):
            return False, []
        i = off // p.chunk
        if off >= total:
            p.pending.pop(i, None)  # a speculative request past the end
            return False, self._fill_all(now)
        if n != min(p.chunk, total - off) or i in p.got:
            return False, []
        p.pending.pop(i, None)
        p.got.add(i)
        p.source_used = node
        return True, self._fill_all(now)

    def _written(self, oid: bytes, off: int) -> list[Action]:
        """The chunk at ``off`` is in the local copy; the pull is done with the last one."""
        p = self.pulls.get(oid)
        if p is None:
            return []
        p.written.add(off // p.chunk)
        if len(p.written) == p.nchunks:
            return self._finish(p, True)
        return []

    def _chunk_failed(self, oid: bytes, off: int, now: float) -> list[Action]:
        """An accepted chunk did not land (its bulk fetch failed): ask for it again, plainly."""
        p = self.pulls.get(oid)
        if p is None or off // p.chunk not in p.got or off // p.chunk in p.written:
            return []
        i = off // p.chunk
        p.got.discard(i)
        if not p.sources or p.asked_at is not None:
            return []  # asked again when the pull (re)starts from a holder
        p.pending[i] = now
        return [Request(p.sources[0], oid, i * p.chunk, p.chunk, plain=True)]

    def _missing(self, oid: bytes, node: bytes, now: float) -> list[Action]:
        """``node`` has no copy (or cannot be reached): go on with the next holder."""
        p = self.pulls.get(oid)
        if p is None or not p.sources or p.sources[0] != node:
            return []
        p.sources.pop(0)
        return self._begin(p, now)

    def _node_dead(self, node: bytes, now: float) -> list[Action]:
        acts: list[Any] = []
        for p in list(self.pulls.values()):
            if p.owner and p.owner[0] == node and (p.asked_at is not None or not p.sources):
                acts += self._finish(p, False, "the object's owner died with its node")
            elif p.sources and p.sources[0] == node:
                acts += self._missing(p.oid, node, now)
            else:
                p.sources = [s for s in p.sources if s != node]
        return acts

    def _locations(self, oid: bytes, nodes: list[Any], now: float, have_local: bool,
                  dead: int = 0) -> list[Action]:
        """The owner said where copies are (empty: none left, the object is lost).

        ``dead``: how many nodes it named that we know are dead (left out of ``nodes``).
        Naming only dead ones, it may not have heard of the death yet: ask it again
        a little later (it answers for an object it rebuilds once that is done).
        """
        p = self.pulls.get(oid)
        if p is None or p.asked_at is None:
            return []
        p.asked_at = None
        if self.node_id in nodes and have_local:
            return self._finish(p, True, local=True)
        p.sources = [s for s in dict.fromkeys(nodes) if s and s != self.node_id]
        if not p.sources:
            if dead and p.asks < MAX_OWNER_ASKS:
                p.ask_again_at = now + OWNER_AGAIN_S
                return []
            return self._finish(p, False, "the owner knows no copy of the object")
        return self._begin(p, now)

    def _abort(self, oid: bytes, msg: str) -> list[Action]:
        p = self.pulls.get(oid)
        return self._finish(p, False, msg) if p is not None else []

    def _tick(self, now: float) -> list[Action]:
        acts: list[Any] = []
        for p in list(self.pulls.values()):
            if p.asked_at is not None:
                if now - p.asked_at > OWNER_TIMEOUT_S:
                    acts += self._finish(p, False, "the owner did not answer")
                continue
            if p.ask_again_at is not None:
                if now >= p.ask_again_at and not p.sources:
                    p.ask_again_at = None
                    acts += self._ask_owner(p, now)
                continue
            stale = [i for i, t in p.pending.items() if now - t > CHUNK_TIMEOUT_S]
            if not stale:
                continue
            p.retries += 1
            if p.retries > MAX_CHUNK_RETRIES:
                acts += self._missing(p.oid, p.sources[0], now)
                continue
            for i in stale:
                p.pending[i] = now
                acts.append(Request(p.sources[0], p.oid, i * p.chunk, p.chunk))
        return acts

    # -- decisions
    def _begin(self, p: Pull, now: float) -> list[Action]:
        """(Re)start from the current holder: everything not received yet."""
        p.pending.clear()
        if not p.sources:
            return self._ask_owner(p, now)
        p.retries = 0
        p.next_idx = 0
        return list(self._fill(p, now, self.max_inflight_bytes - self._inflight()))

    def _fill(self, p: Pull, now: float, budget: int) -> list[Request]:
        """Requests for the pull's next chunks, within ``budget`` bytes (in all) and its window."""
        acts: list[Request] = []
        limit = p.nchunks if p.nchunks >= 0 else INITIAL_WINDOW
        while budget > 0 and len(p.pending) < p.window and p.next_idx < limit:
            i = p.next_idx
            p.next_idx += 1
            if i in p.got or i in p.pending:
                continue
            p.pending[i] = now
            budget -= p.chunk
            acts.append(Request(p.sources[0], p.oid, i * p.chunk, p.chunk))
        return acts

    def _fill_all(self, now: float) -> list[Action]:
        acts: list[Any] = []
        budget = self.max_inflight_bytes - self._inflight()
        for p in self.pulls.values():
            if budget <= 0:
                break
            if p.sources and p.asked_at is None:
                new = self._fill(p, now, budget)
                budget -= sum(r.n for r in new)
                acts += new
        return acts

    def _ask_owner(self, p: Pull, now: float) -> list[Action]:
        if p.owner is None or p.asks >= MAX_OWNER_ASKS:
            return self._finish(p, False, "no reachable node holds a copy")
        p.asks += 1
        p.asked_at = now
        return [AskOwner(p.oid, p.owner)]

    def _finish(self, p: Pull, ok: bool, msg: str = "", local: bool = False) -> list[Action]:
        self.pulls.pop(p.oid, None)
        return [Done(p.oid, ok, local, msg, p)]
