"""The cluster secret: reading it from a file, stdin or the environment.

A session keeps its secret as 32 raw bytes in ``<session>/secret`` (mode 0600).
To carry it to another machine it travels as 64 hex digits: in a file
(``--secret-file PATH``, ``-`` for stdin; raw bytes are accepted too) or in the
environment variable ``ZRAY_CLUSTER_SECRET``. It is never put on a command line,
where ``ps`` would show it to every user of the machine.
"""

from __future__ import annotations

import os
import stat
import sys

ENV_VAR = "ZRAY_CLUSTER_SECRET"
SECRET_LEN = 32


class SecretError(ValueError):
    pass


def decode(data: bytes, origin: str) -> bytes:
    """Hex text (64 digits, surrounding whitespace ignored) or the raw bytes of a secret file."""
    text = data.strip()
    if len(text) == 2 * SECRET_LEN:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) == SECRET_LEN:
        return data
    raise SecretError(f"{origin} does not hold a zray cluster secret "
                      f"({2 * SECRET_LEN} hex digits or {SECRET_LEN} raw bytes)")


def encode(secret: bytes) -> str:
    return secret.hex()


def read_file(path: str) -> tuple[bytes, str | None]:
    """(secret, warning or None) from path, or from stdin when path is '-'."""
    if path == "-":
        return decode(sys.stdin.buffer.read(4096), "standard input"), None
    try:
        with open(os.path.expanduser(path), "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(4096)
    except OSError as e:
        raise SecretError(f"cannot read the secret file {path}: {e.strerror}") from None
    warning = None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warning = (f"the secret file {path} is readable by other users "
                   f"(mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    return decode(data, f"the file {path}"), warning


def from_env(pop: bool = True) -> bytes | None:
    """The secret in ZRAY_CLUSTER_SECRET, removed from the environment (children don't need it)."""
    v = os.environ.pop(ENV_VAR, None) if pop else os.environ.get(ENV_VAR)
    if not v:
        return None
    return decode(v.encode(), f"the environment variable {ENV_VAR}")


def read_session(session_dir: str) -> bytes:
    """The secret of a session of this user (PermissionError if the session is not ours)."""
    from zray import session_lookup

    return session_lookup.read_secret(session_dir)
