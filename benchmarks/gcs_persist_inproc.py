"""In-process cost of persistence per GCS event: the tables state machine alone vs with
its gcs.sqlite writes (one transaction per event, the worst case: the server batches).

    python3 benchmarks/gcs_persist_inproc.py   (from the repository root)
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import test_gcs_tables as T  # noqa: E402

from zray import protocol
from zray.gcs.store import GcsStore
from zray.gcs.tables import Persist


def bench(store):
    t, disk = T.new()
    T.register_node(t, disk)
    n = 3000
    t0 = time.perf_counter()
    for i in range(n):
        acts = t.handle(T.msg(protocol.KV_PUT, ns="fn", k=b"k%d" % i, rid=1, ra="r", payload=[b"x" * 200]))
        if store:
            store.write([a for a in acts if isinstance(a, Persist)])
    kv = (time.perf_counter() - t0) / n * 1e6
    n = 1000
    t0 = time.perf_counter()
    for i in range(n):
        aid = b"%016d" % i
        acts = t.handle(T.msg(protocol.REGISTER_ACTOR, rid=1, ra="r", aid=aid, name=None, ns="ns", detached=False,
            owner=T.OWNER, owner_wid=b"o", drv=T.OWNER, job=b"j",
            spec={"cls": "C", "res": {}, "hold": {"CPU": 0.0}, "max_restarts": 0, "meta": {"cls": "C"}},
            args=[[0, 1]], kw=[], sub="r", payload=[b"arg" * 30]))
        if store:
            store.write([a for a in acts if isinstance(a, Persist)])
        lrid = T.sends(acts, protocol.REQUEST_LEASE)[-1].header["lrid"]
        acts = t.handle(T.msg(protocol.LEASE_GRANTED, lrid=lrid, wid=aid, waddr=[T.N1, "ipc:///s/w", "tcp://x:1"],
            lease=i, node=T.N1, res={}, raylet=[T.N1, T.RAYLET, "tcp://x:2"]))
        if store:
            store.write([a for a in acts if isinstance(a, Persist)])
        acts = t.handle(T.msg(protocol.ACTOR_CREATED, aid=aid, wid=aid, inc=0, ok=True, pid=1))
        if store:
            store.write([a for a in acts if isinstance(a, Persist)])
    act = (time.perf_counter() - t0) / n * 1e6
    return kv, act

d = tempfile.mkdtemp()
for r in range(3):
    a = bench(None)
    s = GcsStore(os.path.join(d, f"g{r}.sqlite"))
    b = bench(s)
    print(f"no store: kv_put {a[0]:.1f} us, actor (3 events) {a[1]:.1f} us | sqlite: kv_put {b[0]:.1f} us, actor {b[1]:.1f} us")
