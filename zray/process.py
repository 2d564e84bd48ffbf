"""What the GCS and raylet mains share: run a server loop until told to stop."""

from __future__ import annotations

import signal
import sys
import threading


def run_until_stopped(server, embedded: bool) -> None:
    """Run a server's loop until SIGTERM/SIGINT, or (embedded) until our stdin closes."""
    def stop(*_):
        server.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if embedded:
        watch_stdin_then(stop)
    server.run()


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
