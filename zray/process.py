"""Process helpers the mains share: run a server loop until told to stop, titles, identities."""

from __future__ import annotations

import os
import signal
import sys
import threading


def run_until_stopped(server, embedded: bool) -> None:
    """Run a server's loop until SIGTERM, or (embedded) until our stdin closes.

    A detached server (``zray start``) also stops on SIGINT; an embedded one ignores it, as
    Ray's processes do: it lives in a session of its own, so Ctrl-C at the driver's prompt
    never reaches it, and a stray SIGINT must not take the driver's cluster down either (it
    ends with the driver, by SIGTERM or the EOF on stdin)."""
    def stop(*_):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN if embedded else stop)
    if embedded:
        watch_stdin_then(stop)
    server.run()


def set_title(title: str) -> None:
    """The process title `ps` shows (forked workers would show the raylet's otherwise)."""
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass


def watch_stdin_then(fn) -> None:
    """Embedded heads: the driver holds our stdin; EOF means it is gone."""

    def run():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except Exception:
            pass
        fn()

    threading.Thread(target=run, daemon=True).start()


def identity(pid: int) -> tuple[str, int] | None:
    """(boot id, start time in clock ticks) of a process of this machine, None if gone.

    Together with the pid this names one process for good: a recycled pid has
    another start time, and another machine (or a reboot) another boot id.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # Field 22 (starttime); the command name (field 2) may hold spaces: split after it.
        return boot, int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def watch(pid: int, ident: tuple | list | None) -> int | None:
    """A pidfd on the process ``pid`` if it runs here and is the one ``ident`` names."""
    if not pid or not ident:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if identity(pid) != tuple(ident):  # checked after opening: the fd pins the process
        os.close(fd)
        return None
    return fd
