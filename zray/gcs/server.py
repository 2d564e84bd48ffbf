"""The GCS's I/O shell: one thread, one event loop around the GcsTables state machine.

Messages and timer ticks become events (gcs/tables.py); their instructions are
carried out once per batch: first every ``Persist`` of the batch in one SQLite
transaction (gcs/store.py), then the messages. A GCS started on a session whose
``gcs.sqlite`` holds rows (one that crashed) restores its tables from them.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time

import zmq

from zray import config, process, protocol
from zray.gcs import store as gstore
from zray.gcs.instructions import DropConn, Persist, Send, Stop
from zray.gcs.tables import GcsTables, Message, Restore, Tick

log = logging.getLogger("zray.gcs")


class GcsServer:
    def __init__(self, session_dir: str, host: str, port: int, secret: bytes,
                 persist: bool | None = None):
        self.session_dir = session_dir
        self.inbound = protocol.Inbound(os.path.join(session_dir, "sockets", "gcs"), host, secret,
                                        tcp_port=port, max_msg=64 << 20)
        self.tables = GcsTables(config.NODE_DEATH_S, self.inbound.tcp_addr[len("tcp://"):],
                                session_dir)
        # Who we are, for raylets watching us: this process (a pidfd where they share our
        # machine) and this incarnation (a restarted GCS on the same address is another).
        self.tables.ident = {"gcs_start": os.urandom(8), "gcs_pid": os.getpid(),
                             "gcs_id": list(process.identity(os.getpid()) or ())}
        self.conns = protocol.Connections(secret)
        self.pending: list = []
        self.running = True
        if persist is None:
            persist = bool(config.GCS_PERSIST)
        self.store = self._open_store(gstore.path_for(session_dir)) if persist else None
        self.restored = 0
        if self.store is not None:
            rows = self.store.load()
            if rows:
                self.restored = len(rows)
                log.warning("restoring the GCS tables of this session from %s (%d rows)",
                            self.store.path, len(rows))
                self.pending += self.tables.handle(Restore(rows, time.monotonic()))
                self.flush()
        with open(os.path.join(session_dir, "gcs_address"), "w") as f:
            f.write(self.tables.gcs_address)

    @staticmethod
    def _open_store(path: str) -> gstore.GcsStore | None:
        """The durable copy; one that cannot be read is set aside (never a GCS that cannot
        start), and without any the GCS serves from memory alone."""
        for attempt in range(2):
            s = None
            try:
                s = gstore.GcsStore(path)
                s.load()
                return s
            except sqlite3.Error as e:
                if s is not None:
                    s.db.close()
                if attempt:
                    log.error("no durable copy of the GCS tables (%s: %s): a crash of this "
                              "GCS will not be recoverable", path, e)
                    return None
                bad = f"{path}.unreadable-{int(time.time())}"
                log.error("cannot read %s (%s); moved to %s, starting empty", path, e, bad)
                for suffix in ("", "-wal", "-shm"):
                    try:
                        os.replace(path + suffix, bad + suffix)
                    except OSError:
                        pass
        return None

    def handle(self, h: dict, payload: list) -> None:
        try:
            self.pending += self.tables.handle(Message(h, payload, time.monotonic()))
        except ValueError as e:
            log.warning("%s", e)

    def flush(self) -> None:
        acts, self.pending = self.pending, []
        if not acts:
            return
        if self.store is not None:
            rows = [a for a in acts if isinstance(a, Persist)]
            if rows:
                try:
                    self.store.write(rows)
                except sqlite3.Error as e:  # a full disk must not stop the cluster
                    log.error("cannot write the GCS tables to %s (%s): from now on they "
                              "live in memory only; a crash of this GCS will not be "
                              "recoverable", self.store.path, e)
                    self.store.close()
                    self.store = None
        for a in acts:
            if isinstance(a, Send):
                self.conns.send(a.dest, a.header, a.payload)
            elif isinstance(a, DropConn):
                self.conns.drop(a.dest)
            elif isinstance(a, Stop):
                self.running = False

    def run(self) -> None:
        poller = zmq.Poller()
        self.inbound.register(poller)
        last = 0.0
        while self.running:
            ready = dict(poller.poll(100))
            if ready:
                self.inbound.drain(ready, self.handle)
            now = time.monotonic()
            if now - last > 0.1:
                last = now
                self.pending += self.tables.handle(Tick(now))
            self.flush()
        self.inbound.close()
        self.conns.close()
        if self.store is not None:
            self.store.close(remove=True)  # a clean stop ends the cluster: nothing to restore
        try:
            os.unlink(os.path.join(self.session_dir, "sockets", "gcs"))
        except OSError:
            pass
