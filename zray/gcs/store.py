"""The GCS's durable copy: one SQLite file in the session directory (stdlib sqlite3).

One table of rows ``(tab, k) -> v``: ``node`` (NodeInfo), ``actor`` (ActorRecord),
``kv`` (``ns\\0key``: exported functions, jobs, user KV), ``meta``. WAL mode with
``synchronous=NORMAL``: a commit is a write to the WAL without fsync, so it survives
the GCS process crashing (what we guard against) but not the machine losing power.
Ray keeps this in an external Redis; we keep it embedded.
"""

from __future__ import annotations

import os
import sqlite3

FILE = "gcs.sqlite"


def path_for(session_dir: str) -> str:
    return os.path.join(session_dir, FILE)


class GcsStore:
    def __init__(self, path: str):
        self.path = path
        # Owner-only: the KV holds pickled functions (code that workers run).
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS rows (tab TEXT NOT NULL, k BLOB NOT NULL, "
                        "v BLOB NOT NULL, PRIMARY KEY (tab, k)) WITHOUT ROWID")

    def load(self) -> list[tuple[str, bytes, bytes]]:
        return [(t, bytes(k), bytes(v)) for t, k, v in
                self.db.execute("SELECT tab, k, v FROM rows")]

    def write(self, persists: list) -> None:
        """Apply Persist instructions (gcs/tables.py) in one transaction, in order."""
        db = self.db
        db.execute("BEGIN")
        try:
            for p in persists:
                if p.value is None:
                    db.execute("DELETE FROM rows WHERE tab=? AND k=?", (p.table, p.key))
                else:
                    db.execute("INSERT OR REPLACE INTO rows VALUES (?, ?, ?)",
                               (p.table, p.key, p.value))
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # no transaction left to roll back
            raise

    def close(self, remove: bool = False) -> None:
        self.db.close()
        if remove:  # a clean stop: nothing to restore
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(self.path + suffix)
                except OSError:
                    pass
