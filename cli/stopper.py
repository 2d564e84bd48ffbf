"""`zray stop`: find this user's zray processes on this machine, stop them, clean up.

A process is ours when it is owned by this uid, runs ``python -m zray.<module>``
and its ``--session-dir`` lies under the session root (ZRAY_SESSION_ROOT,
default /tmp/zray-sessions). They are found by the pid files ``zray start``
writes (checked against the process's start time, so a recycled pid is never
hit) and by a scan of the process table (which also finds workers and the
GCS/raylet of drivers' embedded clusters, as ``ray stop`` does). Raylets get
SIGTERM first (they stop their workers and free their shared memory), then the
rest; whatever is still alive after the grace period gets SIGKILL. Finally the
stopped sessions' /dev/shm/zray-<session>-* segments, socket files, spilled
objects, secret and pid files are removed; logs stay.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import time
from dataclasses import dataclass, field

import psutil
from zray_cli import sessions

ROLE_ORDER = {"raylet": 0, "worker": 1, "other": 1, "gcs": 2}


@dataclass
class Found:
    proc: psutil.Process
    role: str
    session_dir: str


@dataclass
class StopReport:
    stopped: list = field(default_factory=list)  # (role, pid, session basename)
    killed: list = field(default_factory=list)  # pids that needed SIGKILL
    sessions: list = field(default_factory=list)
    segments: int = 0
    failed: list = field(default_factory=list)


def _role(module: str) -> str:
    if module == "zray.gcs":
        return "gcs"
    if module.startswith("zray.raylet"):
        return "raylet"
    if module == "zray.worker_main":
        return "worker"
    return "other"


def parse_cmdline(cmdline: list[str]) -> tuple[str, str] | None:
    """(role, session_dir) of a `python -m zray.* --session-dir DIR` command line, else None."""
    try:
        i = cmdline.index("-m")
    except ValueError:
        return None
    if i + 1 >= len(cmdline) or not cmdline[i + 1].startswith("zray."):
        return None
    module = cmdline[i + 1]
    if module.startswith("zray_cli"):
        return None
    session = None
    for j, a in enumerate(cmdline):
        if a == "--session-dir" and j + 1 < len(cmdline):
            session = cmdline[j + 1]
        elif a.startswith("--session-dir="):
            session = a.split("=", 1)[1]
    if not session:
        return None
    return _role(module), session


def _owned(p: psutil.Process) -> bool:
    try:
        return p.uids().real == os.getuid()
    except psutil.Error:
        return False


def find_processes() -> list[Found]:
    me = os.getpid()
    found: dict[int, Found] = {}
    for s in sessions.all_sessions():
        for rec in sessions.read_pid_files(s):
            try:
                p = psutil.Process(int(rec["pid"]))
                if abs(p.create_time() - float(rec.get("create_time", 0))) > 1.0:
                    continue  # the pid was recycled
                if not _owned(p) or parse_cmdline(p.cmdline()) is None:
                    continue
            except (psutil.Error, ValueError, KeyError):
                continue
            found[p.pid] = Found(p, rec.get("role", "other"), s)
    for p in psutil.process_iter(["pid", "cmdline", "uids"]):
        if p.pid == me or p.pid in found:
            continue
        try:
            if p.info["uids"] is None or p.info["uids"].real != os.getuid():
                continue
            parsed = parse_cmdline(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if parsed and sessions.under_root(parsed[1]):
            found[p.pid] = Found(p, parsed[0], os.path.realpath(parsed[1]))
    # Workers forked by a raylet's zygote carry the raylet's command line: a "raylet" whose
    # parent is a zray process too is the zygote or one of its workers.
    for f in found.values():
        try:
            if f.role == "raylet" and f.proc.ppid() in found:
                f.role = "worker"
        except psutil.Error:
            pass
    return sorted(found.values(), key=lambda f: ROLE_ORDER.get(f.role, 1))


def _signal(f: Found, sig: int) -> None:
    try:
        f.proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
    except psutil.Error:
        pass


def _gone(p: psutil.Process) -> bool:
    # A zombie has exited; its parent (often init, for detached processes) reaps it later.
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _wait(procs: list[Found], timeout: float) -> list[Found]:
    """Wait until procs have exited (or timeout); return those still running."""
    deadline = time.monotonic() + max(timeout, 0)
    left = [f for f in procs if not _gone(f.proc)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [f for f in left if not _gone(f.proc)]
    return left


def session_port(session_dir: str) -> int | None:
    """The GCS port of the cluster a session belongs to (head or joined node), if recorded."""
    addr = sessions.read_gcs_address(session_dir)
    try:
        return int(addr.rsplit(":", 1)[1]) if addr else None
    except ValueError:
        return None


def stop_all(force: bool = False, grace_period: float = 10.0,
             port: int | None = None) -> StopReport:
    """Stop this user's zray processes here; with ``port``, only the cluster whose GCS has it."""
    rep = StopReport()
    procs = find_processes()
    if port is not None:
        procs = [f for f in procs if session_port(f.session_dir) == port]
    touched = {os.path.realpath(f.session_dir) for f in procs}
    # Sessions `zray start` made whose processes are all gone (crashed, SIGKILLed).
    for s in sessions.all_sessions():
        if sessions.read_pid_files(s) and (port is None or session_port(s) == port):
            touched.add(os.path.realpath(s))
    for f in procs:
        rep.stopped.append((f.role, f.proc.pid, os.path.basename(f.session_dir)))
    if force:
        for f in procs:
            _signal(f, signal.SIGKILL)
        left = _wait(procs, 5)
    else:
        deadline = time.monotonic() + grace_period
        raylets = [f for f in procs if f.role == "raylet"]
        rest = [f for f in procs if f.role != "raylet"]
        for f in raylets:
            _signal(f, signal.SIGTERM)
        # Raylets stop their own workers; give them most of the grace period.
        left = _wait(raylets, min(grace_period, max(grace_period - 1, grace_period * 0.7)))
        for f in rest:
            _signal(f, signal.SIGTERM)
        left += _wait(rest, deadline - time.monotonic())
        for f in left:
            rep.killed.append(f.proc.pid)
            _signal(f, signal.SIGKILL)
        left = _wait(left, 5)
    rep.failed = [f.proc.pid for f in left]
    for s in sorted(touched):
        rep.segments += cleanup_session(s)
        rep.sessions.append(s)
    sessions.clear_latest_if(touched)
    return rep


def session_segments(session_dir: str) -> list[str]:
    """/dev/shm entries of a session: node directories and files (see zray.node.shm_prefix_for)."""
    token = os.path.basename(session_dir.rstrip("/"))[-8:]
    return glob.glob(f"/dev/shm/zray-{token}-*")


def cleanup_session(session_dir: str) -> int:
    """Remove what a stopped session leaves behind but its logs; returns segments removed.

    Only what is ours goes: another user's file that matches the name is left (and logged).
    """
    from zray.objstore import shm

    token = os.path.basename(session_dir.rstrip("/"))[-8:]
    n = shm.remove_all(f"zray-{token}-")
    for sub in ("sockets", "pids", "spill"):  # spilled objects of a dead session are garbage
        shutil.rmtree(os.path.join(session_dir, sub), ignore_errors=True)
    for name in ("secret", "gcs_address", "gcs.sqlite", "gcs.sqlite-wal", "gcs.sqlite-shm"):
        try:
            os.unlink(os.path.join(session_dir, name))
        except OSError:
            pass
    return n
