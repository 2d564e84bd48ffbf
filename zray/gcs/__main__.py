"""python -m zray.gcs: the cluster's GCS."""

from __future__ import annotations

import argparse
import logging
import os

from zray.gcs.server import GcsServer
from zray.process import run_until_stopped
from zray.util.logs import setup_process_logging


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="zray-gcs")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--embedded", action="store_true", help="exit when stdin closes")
    a = p.parse_args(argv)
    setup_process_logging(logging.INFO, "%(asctime)s gcs %(levelname)s %(message)s")
    with open(os.path.join(a.session_dir, "secret"), "rb") as f:
        secret = f.read()
    s = GcsServer(a.session_dir, a.host, a.port, secret)
    run_until_stopped(s, a.embedded)
    if a.embedded:
        # The session belonged to the driver that started us: leave no socket or secret.
        import shutil

        shutil.rmtree(os.path.join(a.session_dir, "sockets"), ignore_errors=True)
        try:
            os.unlink(os.path.join(a.session_dir, "secret"))
        except OSError:
            pass


if __name__ == "__main__":
    main()
