"""Finding this user's sessions on this machine (address="auto", or a host:port of ours).

The session root is shared by every user (mode 1777, like /tmp), so anything in it may
have been planted by someone else: a ``session_latest`` link to their session, a session
directory whose secret they made readable. Connecting to another user's cluster hands
them our tasks' arguments and has us unpickle their results: code execution as us. So a
session counts only if it is ours: the directory (not a symlink) is owned by our
effective uid with no group/other access, and its ``secret`` (mode 0600) and
``gcs_address`` are regular files of ours. Checked with
lstat / O_NOFOLLOW + fstat, so a symlink swapped in cannot point us elsewhere.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from zray import config

LATEST = "session_latest"


@dataclass
class Lookup:
    """The outcome of a search: the session found, and what was passed over and why."""

    session: str | None = None
    root: str = ""
    foreign: list[str] = field(default_factory=list)  # other users' (or unsafe) sessions


class SessionDirError(ValueError):
    """A session directory or root we cannot use (unsafe, or socket paths too long)."""


def _trusted_uid(uid: int) -> bool:
    return uid in (os.geteuid(), 0)


def _foreign_owner(path: str) -> int | None:
    """The uid of another user who controls path (owns it, or a symlink that is it)."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if not _trusted_uid(st.st_uid):
                return st.st_uid
            st = os.stat(path)
    except OSError:
        return None
    return None if _trusted_uid(st.st_uid) else st.st_uid


def root() -> str:
    """The session root: ZRAY_SESSION_ROOT (or /tmp/zray-sessions), shared by every user like
    /tmp. The owner of a directory may rename anything in it, even with the sticky bit, so
    a root that another (non-root) user owns is not used: this user's sessions go to
    ``<root>-<uid>`` instead (the same rule for making and for finding sessions)."""
    configured = os.environ.get("ZRAY_SESSION_ROOT") or config.SESSION_ROOT
    if _foreign_owner(configured) is None:
        return configured
    return f"{configured.rstrip('/')}-{os.geteuid()}"


def check_root(r: str) -> None:
    """Raise SessionDirError if r (existing) could let another user swap our sessions."""
    other = _foreign_owner(r)
    if other is None:
        try:
            st = os.stat(r)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise SessionDirError(f"The session root {r} is not a directory.")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX \
                and st.st_uid != os.geteuid():
            raise SessionDirError(
                f"The session root {r} is writable by other users without the sticky bit "
                "(anyone could rename our sessions). Make it mode 1777 or set "
                "ZRAY_SESSION_ROOT to a directory of your own.")
        return
    raise SessionDirError(
        f"The session root {r} belongs to another user ({_name(other)}, uid {other}), who "
        "could swap our session directories for their own. Remove it or set "
        "ZRAY_SESSION_ROOT to a directory of your own.")


def _name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def owned_dir(path: str) -> bool:
    """path is a real directory of ours that no other user can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            and not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def _read_owned(path: str, private: bool, limit: int = 4096) -> bytes | None:
    """The bytes of a regular file of ours (private: mode 0600 or less), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # Inside a 0700 directory of ours only the owner matters; the secret is 0600 anyway.
        bad = stat.S_IRWXG | stat.S_IRWXO if private else 0
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & bad:
            return None
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_secret(session_dir: str) -> bytes:
    """The secret of a session of ours; PermissionError naming the path if it is not ours.

    session_dir may be a link of ours to it (session_latest)."""
    try:
        if os.path.islink(session_dir) and os.lstat(session_dir).st_uid == os.geteuid():
            session_dir = os.path.realpath(session_dir)
    except OSError:
        pass
    data = _read_owned(os.path.join(session_dir, "secret"), private=True)
    if data is None or not owned_dir(session_dir):
        raise PermissionError(
            f"{session_dir} is not a zray session of this user (uid {os.geteuid()}): its "
            "directory must be ours with mode 0700 and its secret ours with mode 0600.")
    return data


def session_gcs_address(session_dir: str) -> str | None:
    """The GCS address of a session of ours that has one, else None."""
    if not owned_dir(session_dir):
        return None
    if _read_owned(os.path.join(session_dir, "secret"), private=True) is None:
        return None
    data = _read_owned(os.path.join(session_dir, "gcs_address"), private=False)
    if data is None:
        return None
    return data.decode(errors="replace").strip() or None


def latest(r: str) -> str | None:
    """The target of r/session_latest if the link is ours, else None (another user's
    link is never followed: a sticky root does not let us replace it, so we pass it by)."""
    link = os.path.join(r, LATEST)
    try:
        st = os.lstat(link)
    except OSError:
        return None
    if st.st_uid != os.geteuid():
        return None
    if stat.S_ISLNK(st.st_mode):
        return os.path.realpath(link)
    return link if stat.S_ISDIR(st.st_mode) else None


def find(address: str | None, same_address=None) -> Lookup:
    """The newest session of ours (for address None/'auto'), or the one whose GCS listens
    at address (same_address(gcs_address, address) decides)."""
    r = root()
    out = Lookup(root=r)
    try:
        check_root(r)
    except SessionDirError:
        out.foreign.append(r)
        return out
    candidates = []
    link = os.path.join(r, LATEST)
    target = latest(r)
    if target is not None:
        candidates.append(target)
    elif os.path.lexists(link):
        out.foreign.append(link)
    try:
        names = sorted(os.listdir(r), reverse=True)
    except OSError:
        names = []
    candidates += [os.path.join(r, n) for n in names if n.startswith("session_2")]
    seen = set()
    for c in candidates:
        if c in seen:
            continue
        seen.add(c)
        if not owned_dir(c):
            if os.path.lexists(c):
                out.foreign.append(c)
            continue
        gaddr = session_gcs_address(c)
        if gaddr is None:
            continue
        if address in (None, "auto") or (same_address is not None and same_address(gaddr, address)):
            out.session = c
            return out
    return out


def none_found_message(lk: Lookup, address: str) -> str:
    """Why address='auto' (or host:port) found no session (after Ray's ConnectionError)."""
    who = f"user {_user_name()} (uid {os.geteuid()})"
    if address == "auto":
        msg = (f"Could not find any running zray instance of {who} on this machine (sessions "
               f"under {lk.root}). Start one with 'zray start --head', or pass the address of "
               "a cluster (address='host:port' or ZRAY_ADDRESS).")
    else:
        msg = (f"Could not connect to a zray cluster at {address}: no session of {who} on this "
               f"machine has that GCS address (sessions under {lk.root}).")
    if lk.foreign:
        msg += (f" Passed over {len(lk.foreign)} session(s) not owned by this user or not "
                f"private to it (e.g. {lk.foreign[0]}): zray connects only to sessions of its "
                "own user.")
    return msg


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return str(os.geteuid())
