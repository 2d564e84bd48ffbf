"""Bounded logs: rate-limited lines for refused input, and size-rotated log files.

A GCS, raylet or worker writes its log to stdout/stderr, which its parent pointed at a
file in the session's ``logs/`` directory. ``RotatingStdHandler`` rotates that file in
place (``x.log`` -> ``x.log.1`` -> ... ``x.log.N``, then a fresh ``x.log`` dup'ed onto
fds 1 and 2) once it passes ``ZRAY_ROTATION_MAX_BYTES`` (Ray's ``RAY_ROTATION_*``
knobs, same defaults), so a process's logs never take more than
``max_bytes * (backup_count + 1)`` (plus one line).

``RateLimited`` guards lines that a peer can cause (dropped messages): at most
``burst`` lines per ``period`` seconds, then one "suppressed N" line per period.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time

from zray.config import ROTATION_BACKUP_COUNT as BACKUP_COUNT
from zray.config import ROTATION_MAX_BYTES as MAX_BYTES

_rotate_lock = threading.Lock()


def rotate_if_large(max_bytes: int = 0, backups: int = -1) -> bool:
    """Rotate the regular file behind fd 2 (and fd 1 if it is the same) once it is too big.

    Nothing happens if fd 2 is a terminal or a pipe. True if it rotated.
    """
    max_bytes = max_bytes or MAX_BYTES
    backups = BACKUP_COUNT if backups < 0 else backups
    try:
        st = os.fstat(2)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size < max_bytes:
        return False
    with _rotate_lock:
        try:
            st = os.fstat(2)
            if st.st_size < max_bytes:
                return False  # another thread rotated it
            path = os.readlink("/proc/self/fd/2")
            if not os.path.isabs(path) or path.endswith(" (deleted)"):
                return False
            try:
                same_out = os.path.samestat(os.fstat(1), st)
            except OSError:
                same_out = False
            for i in range(backups, 0, -1):
                src = path if i == 1 else f"{path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{path}.{i}")
            if backups == 0:
                os.unlink(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         stat.S_IMODE(st.st_mode) or 0o644)
        except OSError:
            return False
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:
                pass
        os.dup2(fd, 2)
        if same_out:
            os.dup2(fd, 1)
        os.close(fd)
        return True


class RotatingStdHandler(logging.StreamHandler):
    """A StreamHandler on stderr that rotates the file behind stderr (see above)."""

    def __init__(self, stream=None, max_bytes: int = 0, backups: int = -1):
        super().__init__(stream if stream is not None else sys.stderr)
        self.max_bytes = max_bytes
        self.backups = backups

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        rotate_if_large(self.max_bytes, self.backups)


def setup_process_logging(level: int, fmt: str, stream=None) -> None:
    """The logging of a GCS, raylet or worker process: to stderr, rotated."""
    logging.basicConfig(level=level, format=fmt, handlers=[RotatingStdHandler(stream)],
                        force=True)


class RateLimited:
    """Log lines a peer can cause, at most ``burst`` per ``period`` seconds.

    Lines beyond that are counted; the first line of the next period (or ``tick``)
    reports how many were suppressed.
    """

    def __init__(self, logger: logging.Logger, what: str, burst: int = 10,
                 period: float = 10.0):
        self.log = logger
        self.what = what
        self.burst = burst
        self.period = period
        self.start = time.monotonic()
        self.count = 0
        self.suppressed = 0
        self.lock = threading.Lock()

    def _roll(self, now: float) -> None:
        if self.suppressed:
            self.log.warning("suppressed %d more %s in the last %.0f s", self.suppressed,
                             self.what, now - self.start)
        self.start, self.count, self.suppressed = now, 0, 0

    def warning(self, msg: str, *args) -> None:
        self.emit(logging.WARNING, msg, *args)

    def info(self, msg: str, *args) -> None:
        self.emit(logging.INFO, msg, *args)

    def emit(self, level: int, msg: str, *args) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.start >= self.period:
                self._roll(now)
            if self.count >= self.burst:
                self.suppressed += 1
                return
            self.count += 1
        self.log.log(level, msg, *args)

    def tick(self, now: float | None = None) -> None:
        """Report suppressed lines once their period is over (cheap to call often)."""
        if not self.suppressed:
            return
        now = time.monotonic() if now is None else now
        with self.lock:
            if now - self.start >= self.period:
                self._roll(now)
