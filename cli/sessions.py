"""Session directories of this machine: pid files, the session_latest link, lookup.

``zray start`` writes ``<session>/pids/<role>-<node>.json`` for every process
it starts ({"pid", "create_time", "role", "node_id"}), so that ``zray stop``
finds them again and never mistakes a recycled pid for one of ours.
"""

from __future__ import annotations

import json
import os


def root() -> str:
    from zray import session_lookup

    return session_lookup.root()


def latest_link() -> str:
    return os.path.join(root(), "session_latest")


def set_latest(session_dir: str) -> None:
    """Best effort: in a root shared by several users the link may be another user's, and
    lookups fall back to scanning the root for sessions this user can read."""
    link = latest_link()
    tmp = f"{link}.{os.getpid()}.tmp"
    try:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(session_dir, tmp)
        os.replace(tmp, link)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def clear_latest_if(session_dirs: set[str]) -> None:
    link = latest_link()
    if os.path.islink(link) and os.path.realpath(link) in {os.path.realpath(s) for s in session_dirs}:
        try:
            os.unlink(link)
        except OSError:
            pass


def all_sessions() -> list[str]:
    """The session directories of this user under the root (another user's, even one root
    could read, is never touched: zray/session_lookup.py)."""
    from zray.session_lookup import owned_dir

    r = root()
    try:
        names = sorted(os.listdir(r))
    except OSError:
        return []
    return [os.path.join(r, n) for n in names
            if n.startswith("session_") and n != "session_latest"
            and owned_dir(os.path.join(r, n))]


def write_pid_file(session_dir: str, role: str, node_id: bytes, pid: int) -> None:
    import psutil

    d = os.path.join(session_dir, "pids")
    os.makedirs(d, mode=0o700, exist_ok=True)
    try:
        ct = psutil.Process(pid).create_time()
    except psutil.Error:
        ct = 0.0
    rec = {"pid": pid, "create_time": ct, "role": role, "node_id": node_id.hex()}
    path = os.path.join(d, f"{role}-{node_id.hex()[:12]}.json")
    with open(path, "w") as f:
        json.dump(rec, f)


def read_pid_files(session_dir: str) -> list[dict]:
    d = os.path.join(session_dir, "pids")
    out = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            with open(os.path.join(d, n)) as f:
                rec = json.load(f)
            rec["_file"] = os.path.join(d, n)
            out.append(rec)
        except (OSError, ValueError):
            continue
    return out


def read_gcs_address(session_dir: str) -> str | None:
    try:
        with open(os.path.join(session_dir, "gcs_address")) as f:
            return f.read().strip() or None
    except OSError:
        return None


def write_gcs_address(session_dir: str, address: str) -> None:
    with open(os.path.join(session_dir, "gcs_address"), "w") as f:
        f.write(address)


def find(address: str | None) -> str | None:
    """The session of this machine for address ('host:port', 'auto' or None = newest)."""
    from zray import api

    return api._find_local_session(address)


def under_root(path: str) -> bool:
    r = os.path.realpath(root())
    p = os.path.realpath(path)
    return p == r or p.startswith(r.rstrip("/") + "/")
