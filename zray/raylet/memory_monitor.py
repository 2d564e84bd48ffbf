"""The raylet's memory monitor, as Ray's: kill a task's worker before the node runs out.

Every ``MEMORY_MONITOR_REFRESH_MS`` (Ray's ``memory_monitor_refresh_ms``, 250; 0 turns
it off) the raylet reads the memory in use (``read_usage``) and hands it to
``MemoryPolicy.handle(Sample(...))`` with the workers that hold leases. Above ``MEMORY_USAGE_THRESHOLD``
(Ray's ``memory_usage_threshold``, 0.95) of the limit the policy picks one worker to kill,
Ray's way: retriable work first (a task that has retries left, an actor that may restart),
newest first; then, only if there is no retriable one, the newest of the rest. One kill at
a time: the next waits until that worker has exited (or KILL_TIMEOUT_S has passed).

The owner retries a task whose worker was killed, or fails it with ``OutOfMemoryError``
carrying the message built here (threshold and usage) when it has no retries left.

Where the memory is read (``read_usage``), as Ray does: the raylet's memory cgroup if it
has a limit (cgroup v2 ``memory.current``/``memory.max``, or v1 ``memory.usage_in_bytes``/
``memory.limit_in_bytes``, of the raylet's cgroup or of the ancestor nearest its limit;
reclaimable page cache, ``inactive_file``, is not counted), else the host's
(``total - available``).

The policy is a plain state machine (no clocks, files or processes), like
``raylet/scheduler.py``; the readers take the file system root so that tests can give them
a tree of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

KILL_TIMEOUT_S = 10.0  # a kill that has not ended its worker by then: pick again
WARN_EVERY_S = 10.0  # "above the threshold but nothing to kill" at most this often
GB = 1 << 30


@dataclass
class Usage:
    used: int
    total: int
    source: str = "host"  # "host", or "cgroup v2 <dir>" / "cgroup v1 <dir>"

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total > 0 else 0.0


@dataclass
class Running:
    """A worker that holds a lease: what the policy needs to rank it."""

    wid: bytes
    lease_id: int  # grows with every grant: the highest is the newest
    retriable: bool
    pid: int | None = None
    rss: int | None = None


@dataclass
class Kill:
    wid: bytes
    message: str  # for the owner's OutOfMemoryError


@dataclass
class Warn:
    message: str


Action = Union[Kill, Warn]


# --- events
@dataclass
class Sample:
    """The memory in use now, and the workers that hold leases."""

    now: float
    usage: Usage
    running: list[Running]


@dataclass
class WorkerExited:
    wid: bytes


Event = Union[Sample, WorkerExited]


class MemoryPolicy:
    """Decides which worker, if any, to kill for the memory usage it is shown."""

    def __init__(self, threshold: float, node_ip: str = "", node_id: bytes = b""):
        self.threshold = threshold
        self.node_ip = node_ip
        self.node_id = node_id
        self.pending: tuple[bytes, float] | None = None  # (worker killed, when)
        self._warned = -1e18
        self.kills = 0

    def handle(self, event: Event) -> list[Action]:
        """Take one event; return the actions it calls for (the only way in)."""
        match event:
            case Sample(now, usage, running):
                return self._check(now, usage, running)
            case WorkerExited(wid):
                if self.pending is not None and self.pending[0] == wid:
                    self.pending = None
                return []
        raise TypeError(f"not a memory policy event: {event!r}")

    def _check(self, now: float, usage: Usage, running: list[Running]) -> list[Action]:
        if usage.total <= 0 or usage.fraction < self.threshold:
            return []
        if self.pending is not None:
            wid, since = self.pending
            if now - since < KILL_TIMEOUT_S and any(r.wid == wid for r in running):
                return []  # one at a time: wait for that worker to go
            self.pending = None
        victim = pick(running)
        if victim is None:
            if now - self._warned < WARN_EVERY_S:
                return []
            self._warned = now
            return [Warn(f"Memory on this node is {_amount(usage)}, over the memory usage "
                         f"threshold of {self.threshold:g}, but no task or actor runs here "
                         "to free it.")]
        self.pending = (victim.wid, now)
        self.kills += 1
        return [Kill(victim.wid, self.message(usage, victim))]

    def message(self, usage: Usage, victim: Running) -> str:
        where = f"IP: {self.node_ip}, ID: {self.node_id.hex()[:16]}"
        if usage.source != "host":
            where += f", {usage.source}"
        worker = f"ID: {victim.wid.hex()[:12]}"
        if victim.pid is not None:
            worker += f", pid={victim.pid}"
        if victim.rss is not None:
            worker += f", memory used={victim.rss / GB:.2f}GB"
        why = ("the most recently scheduled retriable task" if victim.retriable
               else "the most recently scheduled task (none that can be retried runs here)")
        return (f"Task was killed due to the node running low on memory. Memory on the node "
                f"({where}) where the task's worker ({worker}) was running was "
                f"{_amount(usage)}, which exceeds the memory usage threshold of "
                f"{self.threshold:g}. zray killed this worker because it was {why}. Consider "
                "provisioning more memory on this node or reducing task parallelism by "
                "requesting more CPUs per task. Set max_retries to enable retry when the task "
                "crashes due to OOM. To adjust the kill threshold, set the environment variable "
                "ZRAY_MEMORY_USAGE_THRESHOLD when starting zray; to disable worker killing, set "
                "ZRAY_MEMORY_MONITOR_REFRESH_MS to zero.")


def pick(running: list[Running]) -> Running | None:
    """Ray's order: retriable before not, then the newest lease."""
    if not running:
        return None
    return max(running, key=lambda r: (r.retriable, r.lease_id))


def _amount(u: Usage) -> str:
    return f"{u.used / GB:.2f}GB / {u.total / GB:.2f}GB ({u.fraction:.4f})"


# ------------------------------------------------------------------ readers
def read_usage(root: str = "/", pid: int | str = "self") -> Usage:
    """The memory that counts for the process pid: its cgroup's if limited, else the host's."""
    best = None
    for u in _cgroup_usages(root, pid):
        if best is None or u.fraction > best.fraction:
            best = u  # the limit we are closest to
    return best if best is not None else host_usage()


def host_usage() -> Usage:
    import psutil

    vm = psutil.virtual_memory()
    return Usage(int(vm.total - vm.available), int(vm.total), "host")


def _cgroup_usages(root: str, pid: int | str) -> list[Usage]:
    try:
        with open(os.path.join(root, f"proc/{pid}/cgroup")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    mounts = _cgroup_mounts(root, pid)
    out: list[Usage] = []
    for line in lines:
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "" and "cgroup2" in mounts:
            out += _walk(mounts["cgroup2"], path, _v2)
        elif "memory" in controllers.split(",") and "memory" in mounts:
            out += _walk(mounts["memory"], path, _v1)
    return out


def _cgroup_mounts(root: str, pid: int | str) -> dict[str, tuple[str, str]]:
    """{"cgroup2": (mount point, sub-tree), "memory": (v1 memory mount point, sub-tree)},
    as mapped under root."""
    out: dict[str, tuple[str, str]] = {}
    try:
        with open(os.path.join(root, f"proc/{pid}/mountinfo")) as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mnt, fstype, opts = fields[4], rfields[0], rfields[2].split(",")
        # A mount of a sub-tree (fields[3] != "/") maps that sub-tree's paths.
        entry = (os.path.join(root, mnt.lstrip("/")), fields[3])
        if fstype == "cgroup2":
            out.setdefault("cgroup2", entry)
        elif fstype == "cgroup" and "memory" in opts:
            out.setdefault("memory", entry)
    return out


def _walk(mount: tuple[str, str], path: str, read) -> list[Usage]:
    """Usages of the cgroup at path and its ancestors that have a limit."""
    base, mroot = mount
    rel = os.path.relpath(path, mroot) if mroot != "/" else path.lstrip("/")
    if rel.startswith(".."):
        return []
    rel = "" if rel == "." else rel
    out = []
    while True:
        u = read(os.path.join(base, rel) if rel else base)
        if u is not None:
            out.append(u)
        if not rel:
            return out
        rel = os.path.dirname(rel)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            v = f.read().strip()
    except OSError:
        return None
    return int(v) if v.isdigit() else None  # "max" (v2): no limit


def _stat(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _host_total() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 62


def _v2(d: str) -> Usage | None:
    limit = _read_int(os.path.join(d, "memory.max"))
    if limit is None or limit >= _host_total():
        return None
    cur = _read_int(os.path.join(d, "memory.current"))
    if cur is None:
        return None
    used = max(0, cur - _stat(os.path.join(d, "memory.stat"), "inactive_file"))
    return Usage(used, limit, f"cgroup v2 {d}")


def _v1(d: str) -> Usage | None:
    limit = _read_int(os.path.join(d, "memory.limit_in_bytes"))
    if limit is None or limit >= _host_total():
        return None  # v1 says "no limit" with a huge number
    cur = _read_int(os.path.join(d, "memory.usage_in_bytes"))
    if cur is None:
        return None
    stat = os.path.join(d, "memory.stat")
    inactive = _stat(stat, "total_inactive_file") or _stat(stat, "inactive_file")
    return Usage(max(0, cur - inactive), limit, f"cgroup v1 {d}")
