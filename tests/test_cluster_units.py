"""Unit tests of the many-node state machines: placement across nodes, pulls, chunk codec."""

from __future__ import annotations

import os

import numpy as np
import pytest

from zray.objstore import shm
from zray.raylet import chunk_codec as cc
from zray.raylet import pulls as om
from zray.raylet import scheduler as sch
from zray.raylet.peers import PeerView

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


def _chunk(p, *args):
    """ChunkArrived through Pulls.handle: (accepted?, the other actions)."""
    acts = p.handle(om.ChunkArrived(*args))
    accepted = bool(acts) and isinstance(acts[0], om.Accept)
    return accepted, acts[1:] if accepted else acts


def req(lrid, res, strategy=None, ra="ipc://owner", t=0.0, remote=False):
    return sch.LeaseRequest(lrid, ra, res, strategy, t, remote=remote)


def node(total, avail=None):
    return (dict(total), dict(avail if avail is not None else total))


def sched(total, peers, idle=4):
    s = sch.NodeScheduler(total)
    s.node_id = A
    for i in range(idle):
        s.handle(sch.WorkerRegistered(b"w%d" % i))
    s.handle(sch.PeersChanged(peers, set()))
    return s


def where(acts):
    out = []
    for a in acts:
        if isinstance(a, sch.Grant):
            out.append("local")
        elif isinstance(a, sch.Spill):
            out.append(a.node)
        elif isinstance(a, sch.Fail):
            out.append("fail:" + a.kind)
    return out


# ------------------------------------------------------------------ placement
def test_infeasible_here_spills_to_the_node_that_has_the_resource():
    s = sched({"CPU": 1}, {B: node({"CPU": 1}), C: node({"CPU": 1, "gpu_box": 1})})
    assert where(s.handle(sch.LeaseRequested(req(1, {"gpu_box": 1})))) == [C]
    assert not s.queue


def test_hybrid_packs_locally_until_half_busy_then_spreads():
    s = sched({"CPU": 4}, {B: node({"CPU": 4}), C: node({"CPU": 4})})
    assert where(s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))) == ["local"]
    assert where(s.handle(sch.LeaseRequested(req(2, {"CPU": 1})))) == ["local"]  # 25% busy: still local
    third = where(s.handle(sch.LeaseRequested(req(3, {"CPU": 1}))))
    assert third in ([B], [C])  # 50% busy: the least busy node
    fourth = where(s.handle(sch.LeaseRequested(req(4, {"CPU": 1}))))
    assert fourth in ([B], [C]) and fourth != third  # what was sent counts there


def test_waits_locally_when_nobody_has_room_then_spills_when_a_peer_frees_up():
    s = sched({"CPU": 1}, {B: node({"CPU": 1}, {"CPU": 0})})
    assert where(s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))) == ["local"]
    assert where(s.handle(sch.LeaseRequested(req(2, {"CPU": 1})))) == []  # everyone busy: queued here
    acts = s.handle(sch.PeersChanged({B: node({"CPU": 1})}, set()))
    assert where(acts) == [B]


def test_spilled_requests_are_not_forwarded_again():
    s = sched({"CPU": 1}, {B: node({"CPU": 1})})
    s.handle(sch.LeaseRequested(req(1, {"CPU": 1})))
    assert where(s.handle(sch.LeaseRequested(req(2, {"CPU": 1}, ra="tcp://10.0.0.2:1", remote=True)))) == []
    assert len(s.queue) == 1


def test_spread_round_robins_over_the_least_busy_nodes():
    s = sched({"CPU": 2}, {B: node({"CPU": 2}), C: node({"CPU": 2})})
    got = [where(s.handle(sch.LeaseRequested(req(i, {"CPU": 1}, {"kind": "SPREAD"}))))[0] for i in range(3)]
    assert sorted(map(str, got)) == sorted(map(str, ["local", B, C]))


def test_spread_without_idle_workers_still_spreads():
    # Each request arrives on its own; one placed here that waits for a worker must keep
    # its place (and its resources) instead of being placed again on the next event.
    s = sched({"CPU": 1}, {B: node({"CPU": 1}), C: node({"CPU": 1})}, idle=0)
    placed = {}
    for i in range(3):
        first = [a for a in s.handle(sch.LeaseRequested(req(i, {"CPU": 1}, {"kind": "SPREAD"})))
                 if isinstance(a, sch.Spill)]
        placed.update({a.req.lrid: a.node for a in first})
        if i == 0:
            assert not first  # local: waits for a worker
    grants = [a for a in s.handle(sch.WorkerRegistered(b"w")) if isinstance(a, sch.Grant)]
    assert [g.req.lrid for g in grants] == [0]
    assert sorted(placed) == [1, 2] and set(placed.values()) == {B, C}


def test_hard_affinity_to_a_peer_goes_there_even_when_it_is_busy():
    s = sched({"CPU": 4}, {B: node({"CPU": 1}, {"CPU": 0})})
    strat = {"kind": "NodeAffinitySchedulingStrategy", "node": B.hex(), "soft": False}
    assert where(s.handle(sch.LeaseRequested(req(1, {"CPU": 1}, strat)))) == [B]


def test_hard_affinity_to_a_dead_node_fails_and_soft_falls_back():
    s = sched({"CPU": 1}, {})
    s.handle(sch.PeersChanged({}, {B}))
    hard = {"kind": "NodeAffinitySchedulingStrategy", "node": B.hex(), "soft": False}
    soft = {"kind": "NodeAffinitySchedulingStrategy", "node": B.hex(), "soft": True}
    assert where(s.handle(sch.LeaseRequested(req(1, {"CPU": 1}, hard)))) == ["fail:TaskUnschedulableError"]
    assert where(s.handle(sch.LeaseRequested(req(2, {"CPU": 1}, soft)))) == ["local"]


def test_hard_affinity_to_an_unknown_node_fails_after_a_grace_period():
    s = sched({"CPU": 1}, {})
    hard = {"kind": "NodeAffinitySchedulingStrategy", "node": C.hex(), "soft": False}
    assert where(s.handle(sch.LeaseRequested(req(1, {"CPU": 1}, hard, t=10.0)))) == []
    assert s.handle(sch.Tick(10.5, warn_after=100)) == []
    acts = s.handle(sch.Tick(10.0 + sch.AFFINITY_GRACE_S + 0.1, warn_after=100))
    assert where(acts) == ["fail:TaskUnschedulableError"]


def test_peer_view_tracks_joins_resources_and_deaths():
    v = PeerView(A)
    pub = {"NodeID": B.hex(), "Alive": True, "Resources": {"CPU": 2.0},
           "AvailableResources": {"CPU": 1.0}, "raylet_addr": [B, "ipc://b", "tcp://h:1"],
           "NodeManagerAddress": "10.0.0.2"}
    me = dict(pub, NodeID=A.hex())
    changed, died = v.update({"ev": "snapshot", "nodes": [pub, me]})
    assert changed and not died and v.ready and set(v.res) == {B}
    assert v.tcp(B) == "tcp://h:1" and v.res[B][1] == {"CPU": 1.0}
    changed, died = v.update({"ev": "dead", "node": dict(pub, Alive=False)})
    assert died == [(B, [B, "ipc://b", "tcp://h:1"])] and not v.res and B in v.dead
    v.update({"ev": "resources", "node": pub})  # late report of a dead node: ignored
    assert not v.res


# --------------------------------------------------------------------- pulls
def test_pull_requests_a_window_then_completes(monkeypatch):
    monkeypatch.setattr(om, "INITIAL_WINDOW", 2)
    p = om.Pulls(A, chunk=100, window=3, max_inflight=10)
    acts = p.handle(om.Start(b"o", [B], None, 0.0))
    assert [(a.node, a.off) for a in acts] == [(B, 0), (B, 100)]  # size unknown: small window
    ok, acts = _chunk(p, b"o", B, 0, 100, 450, 30, 0.1)
    assert ok and [a.off for a in acts] == [200, 300]  # window of 3 now that the size is known
    asked = []
    for off in (100, 200, 300):
        ok, acts = _chunk(p, b"o", B, off, 100, 450, 30, 0.2)
        assert ok
        asked += [a.off for a in acts if isinstance(a, om.Request)]
    assert asked == [400]
    ok, acts = _chunk(p, b"o", B, 400, 50, 450, 30, 0.3)
    assert ok and acts == []
    for off in (400, 0, 300, 100):  # writes finish in any order
        assert p.handle(om.ChunkWritten(b"o", off)) == []
    acts = p.handle(om.ChunkWritten(b"o", 200))
    assert isinstance(acts[0], om.Done) and acts[0].ok
    assert not p.pulls


def test_pull_rejects_inconsistent_chunks():
    p = om.Pulls(A, chunk=100, window=3)
    p.handle(om.Start(b"o", [B], None, 0.0))
    assert _chunk(p, b"o", B, 0, 100, 450, 30, 0.1)[0]
    assert not _chunk(p, b"o", B, 0, 100, 450, 30, 0.1)[0]  # duplicate
    assert not _chunk(p, b"o", B, 100, 100, 999, 30, 0.1)[0]  # another size
    assert not _chunk(p, b"o", B, 100, 70, 450, 30, 0.1)[0]  # wrong length
    assert not _chunk(p, b"o", B, 150, 100, 450, 30, 0.1)[0]  # not on a chunk boundary


def test_pull_moves_to_the_next_holder_then_asks_the_owner():
    p = om.Pulls(A, chunk=100, window=2)
    p.handle(om.Start(b"o", [B, C], [B, "ipc://x", "tcp://x:1"], 0.0))
    acts = p.handle(om.Missing(b"o", B, 0.1))
    assert {a.node for a in acts} == {C}
    acts = p.handle(om.NodeDead(C, 0.2))
    assert [type(a).__name__ for a in acts] == ["AskOwner"]
    acts = p.handle(om.Locations(b"o", [B], 0.3, have_local=False))
    assert {a.node for a in acts} == {B}
    p.handle(om.Missing(b"o", B, 0.4))
    acts = p.handle(om.Locations(b"o", [], 0.5, have_local=False))
    assert isinstance(acts[0], om.Done) and not acts[0].ok


def test_pull_retries_a_lost_chunk_then_gives_up_on_the_holder():
    p = om.Pulls(A, chunk=100, window=2)
    p.handle(om.Start(b"o", [B], None, 0.0))
    acts = p.handle(om.Tick(om.CHUNK_TIMEOUT_S + 1))
    assert {a.off for a in acts} == {0, 100}
    t = om.CHUNK_TIMEOUT_S + 1
    for _ in range(om.MAX_CHUNK_RETRIES):
        t += om.CHUNK_TIMEOUT_S + 1
        acts = p.handle(om.Tick(t))
    assert isinstance(acts[-1], om.Done) and not acts[-1].ok  # no owner to ask


# --------------------------------------------------------------------- codec
@pytest.mark.parametrize("n", [0, 7, 8, 4097, (256 << 10) * 2 + 13, 1 << 20])
def test_shuffle_roundtrip_and_both_implementations_agree(n):
    data = os.urandom(n)
    fast, slow = bytes(cc.shuffle8(data)), bytes(cc.shuffle8(data, use_numpy=False))
    assert fast == slow
    assert bytes(cc.unshuffle8(fast)) == data == bytes(cc.unshuffle8(fast, use_numpy=False))


def test_codec_compresses_numbers_and_leaves_random_bytes_raw():
    ar = np.arange(1 << 19, dtype=np.int64).tobytes()  # 4 MiB
    codec, data = cc.encode_part(memoryview(ar), 125e6)
    assert codec == cc.SHUF8_LZ4 and len(data) < len(ar) // 20
    assert bytes(cc.decode_part(codec, len(ar), data)) == ar
    rnd = os.urandom(4 << 20)
    codec, data = cc.encode_part(memoryview(rnd), 125e6)
    assert codec == cc.RAW
    codec, _ = cc.encode_part(memoryview(ar), None)  # loopback: never compressed
    assert codec == cc.RAW
    with pytest.raises(ValueError):
        cc.decode_part(cc.LZ4, 100, b"garbage")


def test_signed_end_covers_header_and_pickle_stream(tmp_path):
    name = "zray-unittest-" + os.urandom(4).hex()
    frames = [b"p" * 100, np.arange(1000).tobytes()]
    total = shm.create(name, frames)
    try:
        with open(shm.segment_path(name), "rb") as f:
            data = f.read()
        size, sens = cc.segment_signed_end(data)
        assert size == total
        pickle_off = data.index(b"p" * 100)
        assert sens == pickle_off + 100 < total
    finally:
        shm.unlink(name)
