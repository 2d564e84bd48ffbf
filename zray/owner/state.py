"""The owner's tables: objects it owns or borrows, tasks, scheduling keys, leased workers.

Plain records (``__slots__``), touched only by the owner's handlers (and read
by the CoreWorker shell under its lock). Nothing here does I/O.
"""

from __future__ import annotations

import collections
from typing import Any

from zray import config
from zray.ids import object_id_for

PENDING, READY, FAILED = 0, 1, 2
# Return/arg descriptor kinds on the wire (REF: the actor resolves it itself).
INLINE, STORED, REF = 0, 1, 2


class Entry:
    """One object this process owns or borrows."""

    __slots__ = ("state", "frames", "node", "size", "local", "pins", "borrowers", "owned",
                 "owner", "contained", "waiters", "callbacks", "fetching", "task_id",
                 "is_error", "locs", "dependents", "loc_waiters")

    def __init__(self, owned: bool, owner: list[Any] | None = None):
        self.state = PENDING
        self.frames: list[Any] | None = None  # inline value or error
        self.node: bytes | None = None  # node holding the stored value
        self.size = 0
        self.local = 0  # ObjectRef instances in this process
        self.pins = 0  # task args, containing objects, generators
        self.borrowers: set[str] | None = None  # made on first borrower: most never get one
        self.owned = owned
        self.owner = owner
        self.contained: list[Any] | None = None  # (oid, owner) nested in the value
        self.waiters: list[Any] | None = None  # borrowers' GET_OBJECT reply addresses
        self.callbacks: list[Any] | None = None  # the shell's waiters (get, wait, run_when_ready)
        self.fetching = False
        self.task_id: bytes | None = None
        self.is_error = False
        self.locs: set[Any] | None = None  # other nodes with a copy (owner/lineage.py)
        self.dependents: list[Any] | None = None  # tasks waiting for this value as an argument
        self.loc_waiters: list[Any] | None = None  # GET_OBJECT_LOCATIONS asked while pending

    def add_borrower(self, addr: str) -> None:
        if self.borrowers is None:
            self.borrowers = set()
        self.borrowers.add(addr)


class Task:
    """A task (or actor call) this process submitted and still owns.

    ``args`` holds, per argument, an ObjectRef-like object (``_id``, ``_owner``)
    or a list of inline frames; the shell's codec makes both (zray/task_codec.py).
    """

    __slots__ = ("tid", "fn_id", "fname", "args", "kwnames", "deps", "key", "res", "retries",
                 "retry_exc", "nret", "oids", "state", "worker", "cancelled", "parent",
                 "max_calls", "gen", "strategy", "gen_count", "gen_done", "arg_pins",
                 "attempt", "warned", "env", "actor", "nested", "user_nret")

    def __init__(self, tid: bytes, fname: str, nret: Any, args: list[Any], kwnames: list[Any], *,
                 fn_id: bytes | None = None, retries: int = 0, retry_exc: Any = False,
                 max_calls: int = 0, res: dict[Any, Any] | None = None, strategy: Any = None,
                 env: dict[Any, Any] | None = None, parent: bytes | None = None, actor: Any = None,
                 nested: list[Any] | None = None):
        self.tid = tid
        self.fn_id = fn_id
        self.fname = fname
        self.user_nret = nret  # as given: an int or "streaming"
        self.gen = nret == "streaming"
        self.nret = -1 if self.gen else nret
        self.args = args
        self.kwnames = kwnames
        self.nested = nested  # refs inside inline arguments (pinned with the task)
        self.retries = retries
        self.retry_exc = retry_exc
        self.max_calls = max_calls
        self.res = res if res is not None else {}
        self.strategy = strategy
        self.env = env
        self.parent = parent
        self.actor = actor  # an actor call: its owner.actors.Call
        self.key: Any = None
        self.deps = 0
        self.state = "waiting"  # waiting -> queued -> running -> done
        self.worker: LeasedWorker | None = None
        self.cancelled = False
        self.gen_count = 0
        self.gen_done = False
        self.attempt = 0
        self.warned = False
        self.arg_pins: list[Any] = []
        n = self.nret if self.nret > 0 else (1 if self.nret == 0 else 0)
        self.oids = [tid + _SUFFIX[i] if i < 4 else object_id_for(tid, i + 1) for i in range(n)]


# object_id_for(tid, i) for the first returns: tid + a constant suffix.
_SUFFIX = [object_id_for(b"", i + 1) for i in range(4)]


class LeasedWorker:
    __slots__ = ("wid", "addr", "lease", "node", "inflight", "idle_since", "res", "raylet",
                 "dead", "long")

    def __init__(self, wid: bytes, addr: str, lease: int, node: bytes, res: dict[Any, Any],
                 raylet: list[Any] | str):
        self.wid = wid
        self.addr = addr
        self.lease = lease
        self.node = node
        self.inflight: dict[bytes, Task] = {}
        self.idle_since: float | None = None  # set by the next Tick once idle
        self.res = res
        self.raylet = raylet
        self.dead = False
        self.long = False  # handed tasks back: its running task is long or blocked


class KeyState:
    """One scheduling key (resources, strategy): its queue, workers and lease requests."""

    __slots__ = ("queue", "workers", "pending_leases", "res", "strategy", "task_s", "no_pipe")

    def __init__(self, res: dict[Any, Any], strategy: Any):
        self.queue: collections.deque[Task] = collections.deque()
        self.workers: dict[bytes, LeasedWorker] = {}
        self.pending_leases: set[int] = set()
        self.res = res
        self.strategy = strategy
        # Recent run time of this key's tasks (workers report it): pipelining is
        # only for keys whose tasks are known to be short.
        self.task_s: float | None = None
        self.no_pipe = False  # a max_calls task was seen: its worker may exit after it

    def ran(self, dt: float) -> None:
        if dt > config.PIPELINE_MAX_TASK_S or self.task_s is None:
            self.task_s = dt  # one long task stops pipelining at once
        else:
            self.task_s = 0.7 * self.task_s + 0.3 * dt

    def depth(self) -> int:
        if self.no_pipe or self.task_s is None or self.task_s > config.PIPELINE_MAX_TASK_S:
            return 1
        return config.MAX_TASKS_IN_FLIGHT


def strategy_key(s: Any) -> Any:
    if s is None or isinstance(s, str):
        return s
    return (type(s).__name__, getattr(s, "node_id", None), getattr(s, "soft", None))
