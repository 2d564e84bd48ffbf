"""Unit tests of the actors' state machines: the GCS actor table and the call order.

No processes or sockets: events in, ``Send`` actions out.
"""

from __future__ import annotations

from zray import protocol
from zray.actor_executor import CallOrder
from zray.gcs import actor_table as at
from zray.gcs.tables import NodeInfo, Send

GCS = "tcp://127.0.0.1:1"
N1, N2 = b"\x01" * 16, b"\x02" * 16
OWNER = [N1, "ipc:///s/w-owner", "tcp://127.0.0.1:5"]
DRIVER = [N1, "ipc:///s/w-driver", "tcp://127.0.0.1:6"]


def node(nid: bytes, port: int, head: bool = False) -> NodeInfo:
    return NodeInfo(nid, [nid, f"ipc:///s/raylet-{port}", f"tcp://127.0.0.1:{port}"],
                    "127.0.0.1", {"CPU": 1.0}, {"CPU": 1.0}, head, "/s", "", 0, 0, "h", "")


def table() -> at.ActorTable:
    return at.ActorTable({N1: node(N1, 101, True), N2: node(N2, 102)}, GCS)


def register(t: at.ActorTable, aid: bytes = b"A" * 16, **kw) -> list:
    h = {"t": protocol.REGISTER_ACTOR, "rid": 1, "ra": "ipc:///s/w-owner", "aid": aid,
         "name": kw.get("name"), "ns": kw.get("ns", "ns"), "detached": kw.get("detached", False),
         "gie": kw.get("gie", False), "owner": kw.get("owner", OWNER), "owner_wid": b"owner",
         "drv": kw.get("drv", DRIVER), "job": b"job1",
         "spec": {"fn": b"f", "cls": "C", "res": {"CPU": 1.0}, "hold": {},
                  "max_restarts": kw.get("max_restarts", 0), "meta": {"cls": "C"}},
         "args": [[0, 1]], "kw": [], "sub": "ipc:///s/w-owner"}
    return t.handle(h, [b"argframe"])


def of_type(acts: list, t: int) -> list:
    return [a for a in acts if isinstance(a, Send) and a.header["t"] == t]


def grant(t: at.ActorTable, acts: list, wid: bytes = b"W1", nid: bytes = N1) -> list:
    lrid = of_type(acts, protocol.REQUEST_LEASE)[-1].header["lrid"]
    return t.handle({"t": protocol.LEASE_GRANTED, "lrid": lrid, "wid": wid,
                     "waddr": [nid, "ipc:///s/w-" + wid.hex(), "tcp://127.0.0.1:77"],
                     "lease": 7, "node": nid, "res": {}, "raylet": [nid, None,
                                                                    "tcp://127.0.0.1:101"]}, [])


def created(t: at.ActorTable, wid: bytes = b"W1", inc: int = 0, ok: bool = True) -> list:
    return t.handle({"t": protocol.ACTOR_CREATED, "aid": b"A" * 16, "wid": wid, "inc": inc,
                     "ok": ok, "pid": 42, "msg": "boom"}, [] if ok else [b"err"])


def test_create_place_and_publish():
    t = table()
    acts = register(t)
    assert of_type(acts, protocol.REGISTER_ACTOR_REPLY)[0].header["ok"] is True
    lease = of_type(acts, protocol.REQUEST_LEASE)
    assert len(lease) == 1
    assert lease[0].dest == "tcp://127.0.0.1:101"  # the owner's node first
    assert lease[0].header["res"] == {"CPU": 1.0} and lease[0].header["hold"] == {}
    acts = grant(t, acts)
    [create] = of_type(acts, protocol.CREATE_ACTOR)
    assert create.payload == [b"argframe"] and create.header["inc"] == 0
    acts = created(t)
    [pub] = of_type(acts, protocol.ACTOR_STATE)
    assert pub.dest == "ipc:///s/w-owner"
    assert pub.header["st"] == at.ALIVE and pub.header["addr"][0] == N1


def test_names_clash_get_if_exists_and_freed_at_death():
    t = table()
    register(t, name="x")
    acts = register(t, aid=b"B" * 16, name="x")
    assert of_type(acts, protocol.REGISTER_ACTOR_REPLY)[0].header["err"] == "name"
    acts = register(t, aid=b"C" * 16, name="x", gie=True)
    assert of_type(acts, protocol.REGISTER_ACTOR_REPLY)[0].header["existing"] == b"A" * 16
    assert register(t, aid=b"D" * 16, name="x", ns="other")[0].header["ok"]  # other namespace
    t.handle({"t": protocol.KILL_ACTOR, "aid": b"A" * 16, "no_restart": True}, [])
    acts = register(t, aid=b"E" * 16, name="x")
    assert of_type(acts, protocol.REGISTER_ACTOR_REPLY)[0].header["ok"] is True
    r = t.handle({"t": protocol.GET_ACTOR, "rid": 2, "ra": "r", "name": "x", "ns": "ns"}, [])
    assert r[0].header["aid"] == b"E" * 16


def test_creation_error_is_death_with_cause():
    t = table()
    grant(t, register(t, max_restarts=3))
    acts = created(t, ok=False)
    [pub] = of_type(acts, protocol.ACTOR_STATE)
    assert pub.header["st"] == at.DEAD and pub.header["kind"] == at.CREATION_ERROR
    assert pub.payload == [b"err"]
    assert not of_type(acts, protocol.REQUEST_LEASE)  # no restart for a failed __init__


def test_restart_after_worker_death_then_dead():
    t = table()
    grant(t, register(t, max_restarts=1))
    created(t)
    acts = t.handle({"t": protocol.WORKER_DIED, "wid": b"W1", "lease": 7}, [])
    assert of_type(acts, protocol.ACTOR_STATE)[0].header["st"] == at.RESTARTING
    assert of_type(acts, protocol.REQUEST_LEASE)
    acts = grant(t, acts, wid=b"W2")
    assert of_type(acts, protocol.CREATE_ACTOR)[0].header["inc"] == 1
    assert created(t, wid=b"W1", inc=0) == []  # stale: an earlier incarnation
    acts = created(t, wid=b"W2", inc=1)
    assert of_type(acts, protocol.ACTOR_STATE)[0].header["inc"] == 1
    acts = t.handle({"t": protocol.WORKER_DIED, "wid": b"W2", "lease": 8}, [])
    [pub] = of_type(acts, protocol.ACTOR_STATE)
    assert pub.header["st"] == at.DEAD and pub.header["kind"] == at.WORKER_DIED
    assert [a.dest for a in acts if isinstance(a, at.DropConn)] == ["tcp://127.0.0.1:77"]


def test_kill_without_and_with_restart():
    t = table()
    grant(t, register(t, max_restarts=1))
    created(t)
    acts = t.handle({"t": protocol.KILL_ACTOR, "aid": b"A" * 16, "no_restart": False,
                     "rid": 3, "ra": "r"}, [])
    assert of_type(acts, protocol.KILL_WORKER)[0].header["wid"] == b"W1"
    assert of_type(acts, protocol.ACTOR_ACK)[0].header["state"]["st"] == at.ALIVE
    acts = t.handle({"t": protocol.WORKER_DIED, "wid": b"W1"}, [])
    assert of_type(acts, protocol.ACTOR_STATE)[0].header["st"] == at.RESTARTING
    acts = t.handle({"t": protocol.KILL_ACTOR, "aid": b"A" * 16, "no_restart": True}, [])
    # Killed while its new lease is pending: the request is cancelled.
    assert of_type(acts, protocol.CANCEL_LEASE_REQUEST)
    assert of_type(acts, protocol.ACTOR_STATE)[0].header["kind"] == at.KILLED


def test_owner_and_job_fate_sharing_but_not_detached():
    t = table()
    grant(t, register(t))
    register(t, aid=b"D" * 16, detached=True)
    created(t)
    acts = t.handle({"t": protocol.CLIENT_DIED, "wid": b"owner", "addr": OWNER[1]}, [])
    a = t.actors[b"A" * 16]
    assert a.state == at.DEAD and a.death_kind == at.OWNER_DIED
    assert of_type(acts, protocol.KILL_WORKER)
    assert not of_type(acts, protocol.ACTOR_STATE)  # its subscriber was the dead owner
    assert t.actors[b"D" * 16].state == at.PENDING
    # A job's driver ends: actors created by its tasks end too.
    register(t, aid=b"J" * 16, owner=[N2, "ipc:///s/w-task", None])
    t.handle({"t": protocol.CLIENT_DIED, "wid": b"drv", "addr": DRIVER[1], "driver": True}, [])
    assert t.actors[b"J" * 16].state == at.DEAD
    assert t.actors[b"D" * 16].state == at.PENDING


def test_node_death_restarts_elsewhere_and_replaces_pending_leases():
    t = table()
    acts = grant(t, register(t, max_restarts=1, owner=[N2, "ipc:///x", None],
                             drv=[N2, "ipc:///d", None]), nid=N1)
    created(t)
    t.nodes[N1].alive = False
    acts = t.node_dead(N1)
    assert of_type(acts, protocol.ACTOR_STATE)[0].header["st"] == at.RESTARTING
    [req] = of_type(acts, protocol.REQUEST_LEASE)
    assert req.dest == "tcp://127.0.0.1:102"  # the live node
    # A lease request pending at a node that dies is made again elsewhere.
    t.nodes[N1].alive = True
    acts = register(t, aid=b"P" * 16, owner=[N1, "ipc:///y", None], drv=[N2, "ipc:///d", None],
                    detached=True)
    t.nodes[N1].alive = False
    acts = t.node_dead(N1)
    assert [a.dest for a in of_type(acts, protocol.REQUEST_LEASE)] == ["tcp://127.0.0.1:102"]


def test_owner_on_dead_node_kills_non_detached():
    t = table()
    grant(t, register(t, owner=[N2, "ipc:///o", None], drv=[N2, "ipc:///d", None]), nid=N1)
    created(t)
    t.nodes[N2].alive = False
    acts = t.node_dead(N2)
    assert t.actors[b"A" * 16].death_kind == at.OWNER_DIED
    assert of_type(acts, protocol.KILL_WORKER)  # its worker lives on the other node


def test_unplaced_until_a_node_joins_and_spillback():
    t = at.ActorTable({}, GCS)
    acts = register(t)
    assert not of_type(acts, protocol.REQUEST_LEASE)
    assert t.tick(0.0) == []
    t.nodes[N2] = node(N2, 102)
    acts = t.node_added(N2)
    [req] = of_type(acts, protocol.REQUEST_LEASE)
    t.nodes[N1] = node(N1, 101)
    acts = t.handle({"t": protocol.LEASE_SPILLBACK, "lrid": req.header["lrid"],
                     "raylet": [N1, None, "tcp://127.0.0.1:101"]}, [])
    [req2] = of_type(acts, protocol.REQUEST_LEASE)
    assert req2.dest == "tcp://127.0.0.1:101" and req2.header["spilled"] is True
    # A grant for a request that is no longer wanted is returned.
    acts = t.handle({"t": protocol.LEASE_GRANTED, "lrid": req.header["lrid"], "wid": b"w",
                     "waddr": [N2, None, "tcp://x"], "lease": 3, "node": N2, "res": {},
                     "raylet": [N2, None, "tcp://127.0.0.1:102"]}, [])
    assert of_type(acts, protocol.RETURN_LEASE)[0].header["lease"] == 3


def test_subscribe_gets_current_state_and_intended_exit():
    t = table()
    grant(t, register(t))
    created(t)
    acts = t.handle({"t": protocol.SUBSCRIBE_ACTOR, "aid": b"A" * 16, "ra": "ipc:///s/w-2"}, [])
    assert acts[0].header["st"] == at.ALIVE
    acts = t.handle({"t": protocol.ACTOR_EXITING, "aid": b"A" * 16, "wid": b"W1", "rid": 9,
                     "ra": "r"}, [])
    pubs = of_type(acts, protocol.ACTOR_STATE)
    assert {p.dest for p in pubs} == {"ipc:///s/w-owner", "ipc:///s/w-2"}
    assert pubs[0].header["kind"] == at.EXITED
    assert not of_type(acts, protocol.KILL_WORKER)  # it exits by itself
    acts = t.handle({"t": protocol.SUBSCRIBE_ACTOR, "aid": b"?" * 16, "ra": "x"}, [])
    assert acts[0].header["st"] == at.DEAD


def test_call_order_holds_early_calls_and_drops_duplicates():
    o = CallOrder()
    assert o.push(b"c", 1, "b") == []
    assert o.push(b"c", 2, "c") == []
    assert o.push(b"c", 0, "a") == ["a", "b", "c"]
    assert o.push(b"c", 1, "b again") == []
    assert o.push(b"d", 0, "x") == ["x"]  # callers are independent
    assert o.push(b"c", 3, "d") == ["d"]
    assert o.push(None, None, "unordered") == ["unordered"]
    assert o.held == {}
