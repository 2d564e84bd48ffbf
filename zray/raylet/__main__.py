"""python -m zray.raylet: one node's raylet."""

from __future__ import annotations

import argparse
import json
import logging
import os

from zray.node import shm_prefix_for
from zray.objstore import shm
from zray.process import run_until_stopped
from zray.raylet.raylet import Raylet
from zray.util.logs import setup_process_logging
from zray.zygote import Zygote


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="zray-raylet")
    p.add_argument("--session-dir", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--gcs", required=True, help="GCS address (ipc:// or tcp://)")
    p.add_argument("--node-ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--resources", default="{}", help="JSON: total resources")
    p.add_argument("--object-store-memory", type=int, default=0)
    p.add_argument("--head", action="store_true")
    p.add_argument("--embedded", action="store_true", help="exit when stdin closes")
    a = p.parse_args(argv)
    setup_process_logging(logging.DEBUG if os.environ.get("ZRAY_DEBUG") else logging.INFO,
                          "%(asctime)s raylet %(levelname)s %(message)s")
    # Fork the worker zygote before this process creates any ZeroMQ context.
    node_hex = a.node_id
    leftovers = (os.path.join(a.session_dir, "spill", node_hex[:12]),
                 os.path.join(a.session_dir, "sockets", "raylet-" + node_hex[:12]))
    # The node's private segment directory (objstore/shm.py), before the zygote
    # that sweeps it if this process is killed.
    shm_prefix = shm.make_node_dir(shm_prefix_for(a.session_dir, bytes.fromhex(node_hex)))
    zygote = None if os.environ.get("ZRAY_NO_ZYGOTE") else Zygote(shm_prefix, leftovers)
    with open(os.path.join(a.session_dir, "secret"), "rb") as f:
        secret = f.read()
    r = Raylet(session_dir=a.session_dir, node_id=bytes.fromhex(a.node_id), gcs_addr=a.gcs,
               node_ip=a.node_ip, resources=json.loads(a.resources),
               object_store_memory=a.object_store_memory or None, secret=secret,
               is_head=a.head, port=a.port, shm_prefix=shm_prefix)
    r.zygote = zygote
    run_until_stopped(r, a.embedded)


if __name__ == "__main__":
    main()
