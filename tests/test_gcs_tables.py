"""The GCS's tables as a pure state machine (zray/gcs/tables.py): events in, instructions
out. No sockets, clock or disk: the "disk" here is a dict the Persist instructions write."""

from __future__ import annotations

import pytest

from zray import protocol
from zray.gcs import actor_table as at
from zray.gcs.tables import DropConn, GcsTables, Message, Persist, Restore, Send, Stop, Tick

GCS = "127.0.0.1:6379"
N1 = b"\x01" * 16
RAYLET = "ipc:///s/raylet-1"
OWNER = [N1, "ipc:///s/w-owner", "tcp://127.0.0.1:5"]


def new() -> tuple[GcsTables, dict]:
    t = GcsTables(5.0, GCS, "/s")
    t.ident = {"gcs_start": b"inc", "gcs_pid": 1, "gcs_id": []}
    return t, {}


def run(t: GcsTables, disk: dict, ev) -> list:
    acts = t.handle(ev)
    for a in acts:
        if isinstance(a, Persist):
            if a.value is None:
                disk.pop((a.table, a.key), None)
            else:
                disk[(a.table, a.key)] = a.value
    return acts


def msg(t: int, now: float = 0.0, payload=None, **h) -> Message:
    return Message({"t": t, **h}, payload or [], now)


def sends(acts: list, t: int) -> list:
    return [a for a in acts if isinstance(a, Send) and a.header["t"] == t]


def register_node(t, disk, now=0.0, workers=None):
    h = {"node": N1, "addr": [N1, RAYLET, "tcp://127.0.0.1:101"], "ra": RAYLET,
         "ip": "127.0.0.1", "res": {"CPU": 2.0}, "head": True}
    if workers is not None:
        h["workers"] = workers
    return run(t, disk, msg(protocol.REGISTER_NODE, now, **h))


def create_actor(t, disk, name="keeper", detached=True, max_restarts=0):
    acts = run(t, disk, msg(protocol.REGISTER_ACTOR, rid=1, ra="ipc:///s/w-owner",
                            aid=b"A" * 16, name=name, ns="ns", detached=detached,
                            owner=OWNER, owner_wid=b"owner", drv=OWNER, job=b"j",
                            spec={"cls": "C", "res": {}, "hold": {"CPU": 1.0},
                                  "max_restarts": max_restarts, "meta": {"cls": "C"}},
                            args=[[0, 1]], kw=[], sub="ipc:///s/w-owner",
                            payload=[b"arg"]))
    lrid = sends(acts, protocol.REQUEST_LEASE)[-1].header["lrid"]
    run(t, disk, msg(protocol.LEASE_GRANTED, lrid=lrid, wid=b"W1",
                     waddr=[N1, "ipc:///s/w-W1", "tcp://127.0.0.1:77"], lease=7, node=N1,
                     res={}, raylet=[N1, RAYLET, "tcp://127.0.0.1:101"]))
    return run(t, disk, msg(protocol.ACTOR_CREATED, aid=b"A" * 16, wid=b"W1", inc=0, ok=True,
                            pid=42))


def test_register_node_persists_and_replies_with_the_incarnation():
    t, disk = new()
    acts = register_node(t, disk)
    reply = sends(acts, protocol.REGISTER_NODE_REPLY)[0].header
    assert reply["gcs_address"] == GCS and reply["gcs_start"] == b"inc"
    assert ("node", N1) in disk
    # Heartbeats change nothing durable.
    acts = run(t, disk, msg(protocol.HEARTBEAT, 1.0, node=N1, avail={"CPU": 1.0}))
    assert not [a for a in acts if isinstance(a, Persist)]


def test_kv_put_persists_and_honours_overwrite():
    t, disk = new()
    acts = run(t, disk, msg(protocol.KV_PUT, ns="fn", k=b"f1", rid=1, ra="r", payload=[b"v1"]))
    assert sends(acts, protocol.KV_REPLY)[0].header["ok"] is True
    acts = run(t, disk, msg(protocol.KV_PUT, ns="fn", k=b"f1", overwrite=False, rid=2, ra="r",
                            payload=[b"v2"]))
    assert sends(acts, protocol.KV_REPLY)[0].header["ok"] is False
    assert not [a for a in acts if isinstance(a, Persist)]
    got = sends(run(t, disk, msg(protocol.KV_GET, ns="fn", k=b"f1", rid=3, ra="r")),
                protocol.KV_REPLY)[0]
    assert got.header["found"] and got.payload == [b"v1"]


def test_silent_node_dies_on_tick_and_that_is_persisted():
    t, disk = new()
    register_node(t, disk, now=0.0)
    run(t, disk, msg(protocol.SUBSCRIBE, ra="ipc:///s/w-sub", ch="node"))
    assert run(t, disk, Tick(4.0)) == []
    acts = run(t, disk, Tick(5.5))
    assert [a.header["ev"] for a in sends(acts, protocol.PUBLISH)] == ["dead"]
    restored, _ = new()
    restored.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 0.0))
    assert restored.nodes[N1].alive is False


def test_restore_brings_back_kv_nodes_and_a_named_detached_actor():
    t, disk = new()
    register_node(t, disk)
    run(t, disk, msg(protocol.KV_PUT, ns="fn", k=b"f1", payload=[b"code"]))
    create_actor(t, disk)
    assert t.actors.actors[b"A" * 16].state == at.ALIVE

    # A new GCS process on the same session: only the rows survive.
    t2, disk2 = new()
    t2.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 100.0))
    got = sends(t2.handle(msg(protocol.KV_GET, ns="fn", k=b"f1", rid=1, ra="r")),
                protocol.KV_REPLY)[0]
    assert got.payload == [b"code"]
    info = sends(t2.handle(msg(protocol.GET_ACTOR, rid=2, ra="r", name="keeper", ns="ns")),
                 protocol.ACTOR_INFO)[0].header
    assert info["found"] and info["st"] == at.ALIVE and info["detached"]
    # The restored node gets node_death_s from the restore to register again.
    assert t2.handle(Tick(104.0)) == []
    acts = register_node(t2, disk2, now=101.0, workers=[b"W1"])
    assert sends(acts, protocol.REGISTER_NODE_REPLY)
    assert t2.actors.actors[b"A" * 16].state == at.ALIVE  # its worker still runs
    # Subscribers were restored too: a state change reaches the owner.
    acts = t2.handle(msg(protocol.KILL_ACTOR, aid=b"A" * 16, no_restart=True))
    assert any(a.dest == "ipc:///s/w-owner" for a in sends(acts, protocol.ACTOR_STATE))


def test_reregistration_without_the_actors_worker_restarts_it():
    t, disk = new()
    register_node(t, disk)
    create_actor(t, disk, max_restarts=1)
    t2, disk2 = new()
    t2.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 0.0))
    acts = register_node(t2, disk2, now=1.0, workers=[])  # W1 died while the GCS was down
    rec = t2.actors.actors[b"A" * 16]
    assert rec.state == at.RESTARTING and rec.num_restarts == 1
    assert sends(acts, protocol.REQUEST_LEASE)
    assert any(isinstance(a, DropConn) for a in acts)
    # A lease request id of the restored GCS is never one the old one used.
    old = max(r.lrid or 0 for r in t.actors.actors.values())
    assert sends(acts, protocol.REQUEST_LEASE)[0].header["lrid"] > old


def test_restored_pending_actor_is_placed_when_a_node_registers():
    t, disk = new()
    run(t, disk, msg(protocol.REGISTER_ACTOR, rid=1, ra="r", aid=b"B" * 16, name=None,
                     ns="ns", detached=True, owner=OWNER, owner_wid=b"o", drv=OWNER, job=b"j",
                     spec={"cls": "C", "res": {}, "hold": {}, "max_restarts": 0}, args=[],
                     kw=[]))
    assert t.actors.actors[b"B" * 16].unplaced  # no node yet
    t2, disk2 = new()
    t2.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 0.0))
    acts = register_node(t2, disk2)
    assert sends(acts, protocol.REQUEST_LEASE)


def test_every_actor_change_is_persisted_and_eviction_deletes():
    t, disk = new()
    register_node(t, disk)
    create_actor(t, disk, name=None, detached=False)
    run(t, disk, msg(protocol.KILL_ACTOR, aid=b"A" * 16, no_restart=True))
    restored, _ = new()
    restored.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 0.0))
    assert restored.actors.actors[b"A" * 16].state == at.DEAD
    old = at.MAX_DEAD
    at.MAX_DEAD = 0
    try:
        t.actors._set_dead(t.actors.actors[b"A" * 16], at.KILLED, "again")
        assert [a for a in t.actors._rows() if a.value is None]
    finally:
        at.MAX_DEAD = old


def test_shutdown_is_stop_and_unknown_messages_are_refused():
    t, _ = new()
    assert [type(a) for a in t.handle(msg(protocol.SHUTDOWN))] == [Stop]
    with pytest.raises(ValueError, match="unexpected message"):
        t.handle(msg(protocol.PUSH_TASK))


def test_reregistration_without_the_owner_ends_its_non_detached_actors():
    """A driver (OWNER, on N1) that died while the GCS was down: the raylet's new
    registration does not name it, so its non-detached actor ends; a detached one stays."""
    t, disk = new()
    register_node(t, disk)
    create_actor(t, disk, name=None, detached=False)
    t2, disk2 = new()
    t2.handle(Restore([(k[0], k[1], v) for k, v in disk.items()], 0.0))
    register_node(t2, disk2, now=1.0, workers=[b"W1", b"owner"])
    assert t2.actors.actors[b"A" * 16].state == at.ALIVE  # owner and worker both alive
    register_node(t2, disk2, now=2.0, workers=[b"W1"])
    rec = t2.actors.actors[b"A" * 16]
    assert rec.state == at.DEAD and rec.death_kind == at.OWNER_DIED

    t3, disk3 = new()
    register_node(t3, disk3)
    create_actor(t3, disk3, detached=True)
    register_node(t3, disk3, now=1.0, workers=[b"W1"])
    assert t3.actors.actors[b"A" * 16].state == at.ALIVE


def test_an_unreadable_durable_copy_is_set_aside(tmp_path):
    """The shell's side (gcs/server.py): a gcs.sqlite that is not a database never keeps
    the GCS from starting; it is moved aside and an empty one is used."""
    from zray.gcs.server import GcsServer
    from zray.gcs.store import GcsStore

    path = str(tmp_path / "gcs.sqlite")
    with open(path, "wb") as f:
        f.write(b"this is not a database" * 100)
    store = GcsServer._open_store(path)
    assert isinstance(store, GcsStore) and store.load() == []
    store.write([Persist("kv", b"fn\0k", b"v")])
    assert store.load() == [("kv", b"fn\0k", b"v")]
    store.close()
    assert [p.name for p in tmp_path.iterdir() if "unreadable" in p.name]
